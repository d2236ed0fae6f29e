"""What 'vmip spd list', 'vmip locators', 'vmip ike list' and the dashboard print for people."""

from __future__ import annotations

import io
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from vmip.cli import ike as ike_cli
from vmip.cli import node as node_cli
from vmip.cli.main import main
from vmip.cli.render import column_widths, format_sa_bundle, format_selector, print_rows
from vmip.demo.dashboard import _event_line
from vmip.links.locators import LocatorTable

# What a node sends for 'spd.list' (vmip.node.control.selector_record of a Selector).
_NONE = dict.fromkeys(("local", "remote", "proto", "local_ports", "remote_ports", "icmp_type",
                       "icmp_code", "mh_type"))
ECHO = {**_NONE, "local": "2001:db8:100::10/128", "remote": "2001:db8:20::2/128", "proto": 17,
        "remote_ports": [7, 7]}
MH = {**_NONE, "local": "2001:db8:100::10/128", "remote": "2001:db8:100::1/128", "proto": 135,
      "mh_type": 5}
IKE = {**_NONE, "local": "2001:db8:100::10/128", "proto": 17, "local_ports": [500, 500],
       "remote_ports": "opaque"}
ANY = dict(_NONE)
POLICIES = [
    {"name": "echo-to-cn", "direction": "out", "selector": ECHO, "action": "protect",
     "sa": ["mn-ha-tunnel-out"], "priority": 15},
    {"name": "ike-ha-1-in", "direction": "in", "selector": MH, "action": "protect",
     "sa": ["4353"], "priority": 50},
    {"name": "ike-bypass-500", "direction": "out", "selector": IKE, "action": "bypass",
     "sa": [], "priority": 0},
]
LOCATORS = [
    {"address": "2001:db8:100::1", "endpoint": "[2001:db8:10::2]:6275", "link": "wifi0",
     "framing": "udp", "source": "static", "peer": "ha", "last_confirmed": 81234.567891234,
     "confirmed_ago": 2.345678912345, "default": True},
    {"address": "2001:db8:31::2", "endpoint": "203.0.113.1:40123", "link": "lte0",
     "framing": "udp", "source": "learned", "peer": "-", "last_confirmed": 80931.12,
     "confirmed_ago": 305.1, "default": False},
]


class FakeClient:
    def __init__(self, answers):
        self.answers = answers

    def call(self, command, **args):
        return json.loads(json.dumps(self.answers[command]))


def test_selectors_read_as_people_write_them():
    assert format_selector(ECHO, "out") == \
        "2001:db8:100::10/128 → 2001:db8:20::2/128 proto udp dport 7"
    # Inbound: the arrow follows the packets, and so do sport/dport.
    assert format_selector(ECHO, "in") == \
        "2001:db8:20::2/128 → 2001:db8:100::10/128 proto udp sport 7"
    assert format_selector(MH, "out") == \
        "2001:db8:100::10/128 → 2001:db8:100::1/128 proto mh mh type 5"
    assert format_selector(IKE, "out") == \
        "2001:db8:100::10/128 → any proto udp sport 500 dport opaque"
    assert format_selector(ANY) == "any → any"
    assert format_selector({"local": "::/0", "remote": "::/0", "proto": 6,
                            "remote_ports": [1024, 65535]}) == \
        "::/0 → ::/0 proto tcp dport 1024-65535"


def test_a_selector_text_that_is_not_a_selector_is_shown_as_it_is():
    console, out = _console(120)
    print_rows([{"selector": "__import__('os').system('false')", "direction": "out"}],
               ["selector"], console=console)
    assert "__import__('os').system('false')" in out.getvalue()


def test_sa_bundles_show_spis_in_hex_and_names_as_they_are():
    assert format_sa_bundle(["4353", "mn-ha-mh-out"]) == "0x00001101, mn-ha-mh-out"
    assert format_sa_bundle("4353, 4354") == "0x00001101, 0x00001102"
    assert format_sa_bundle([]) == "-"


def _console(width):
    out = io.StringIO()
    return Console(file=out, width=width, color_system=None), out


def _run(monkeypatch, capsys, module, answers, argv, columns=80):
    monkeypatch.setattr(module, "_client", lambda args: FakeClient(answers))
    # A pipe: rich uses 80 columns, as 'vmip spd list | less' gets.
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(argv) == 0
    return capsys.readouterr().out


def test_vmip_spd_list_in_80_columns(monkeypatch, capsys):
    out = _run(monkeypatch, capsys, node_cli, {"spd.list": POLICIES}, ["spd", "list"])
    assert "Selector(" not in out and "IPv6Network" not in out
    assert "…" not in out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    words = out.split()
    for word in ("2001:db8:100::10/128", "2001:db8:20::2/128", "0x00001101",
                 "mn-ha-tunnel-out", "ike-bypass-500", "opaque"):
        assert word in words, word  # whole, never folded or cut
    assert re.search(r"echo-to-cn\s+out\s+2001:db8:100::10/128 →", out)


def test_vmip_locators_shows_ages_not_clock_readings(monkeypatch, capsys):
    out = _run(monkeypatch, capsys, node_cli, {"locators": LOCATORS}, ["locators"])
    assert "2.3 s ago" in out and "5m 05s ago" in out
    assert "81234" not in out and "2.345678" not in out
    assert "…" not in out
    for word in ("[2001:db8:10::2]:6275", "203.0.113.1:40123", "2001:db8:31::2"):
        assert word in out.split(), word
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80


def test_json_output_is_unchanged(monkeypatch, capsys):
    out = _run(monkeypatch, capsys, node_cli, {"locators": LOCATORS}, ["locators", "--json"])
    assert json.loads(out) == LOCATORS


def test_a_wide_terminal_gets_one_line_per_row(monkeypatch, capsys):
    monkeypatch.setattr(node_cli, "_client", lambda args: FakeClient({"locators": LOCATORS}))
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["locators"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[1].split()[:3] == ["ADDRESS", "ENDPOINT", "LINK"]
    assert len(lines) == 2 + len(LOCATORS)


def test_a_table_too_wide_for_its_words_becomes_one_block_per_row():
    console, out = _console(40)
    print_rows(LOCATORS, list(LOCATORS[0]), title="locators", console=console)
    text = out.getvalue()
    assert "…" not in text
    assert re.search(r"^endpoint\s+\[2001:db8:10::2\]:6275\s*$", text, re.MULTILINE)
    assert re.search(r"^confirmed\s+2.3 s ago\s*$", text, re.MULTILINE)
    assert "last confirmed" not in text


words = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
cells = st.lists(words, min_size=1, max_size=4).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(cells, min_size=3, max_size=3), min_size=1, max_size=4),
       st.integers(20, 100))
def test_tables_fit_the_width_without_cutting_a_word(rows, width):
    titles = ["A", "BB", "CCC"]
    widths = column_widths(titles, rows, width)
    minimum = [max(len(w) for row in rows for w in row[i].split()) for i in range(3)]
    if widths is None:
        assert sum(max(m, len(t)) for m, t in zip(minimum, titles, strict=True)) + 4 > width
        return
    assert sum(widths) + 4 <= width
    assert all(w >= m for w, m in zip(widths, minimum, strict=True))
    console, out = _console(width)
    print_rows([dict(zip(titles, row, strict=True)) for row in rows], titles, console=console)
    printed = out.getvalue().split()
    for row in rows:
        for cell in row:
            for word in cell.split():
                assert word in printed


def test_locator_table_render_ages():
    table = LocatorTable.from_peers([])
    table.confirm("2001:db8:31::2", ("203.0.113.1", 40123), now=100.0, link="lte0")
    assert "2.5s ago" in table.render(now=102.5)
    assert "5m 05s ago" in table.render(now=405.0)
    assert "2h 00m ago" in table.render(now=100.0 + 7200)


def test_ike_list_spis_in_hex(monkeypatch, capsys):
    answer = {"sas": [{"name": "ha", "state": "established", "role": "initiator",
                       "local": "2001:db8:31::2[500]", "remote": "2001:db8:100::1[500]",
                       "spi_i": "0011223344556677", "spi_r": "8899aabbccddeeff",
                       "age_s": 12.3456,
                       "children": [{"name": "ha", "spi_in": 0xC0FFEE, "spi_out": 0x1234,
                                     "suite": "aes128gcm16", "mode": "transport"}]}]}
    out = _run(monkeypatch, capsys, ike_cli, {"ike.list": answer}, ["ike", "list"], 200)
    assert "0x00c0ffee" in out and "0x00001234" in out and "12 s" in out
    assert len([line for line in out.splitlines() if line.strip()]) == 3  # title, header, row


@pytest.mark.parametrize("event, shown", [
    ({"t": 0, "event": "BindingAccepted", "peer": "2001:db8:100::1",
      "rtt": 0.012345678901234567}, "rtt=12.3ms"),
    ({"t": 0, "event": "BindingAccepted", "rtt": 1.5}, "rtt=1.50s"),
    ({"t": 0, "event": "X", "ratio": 0.333333333333333}, "ratio=0.3333"),
])
def test_dashboard_events_show_short_numbers(event, shown):
    line = _event_line(event, 200)
    assert shown in line
    assert not re.search(r"\d{7,}", line)
