"""``[[flow]]`` tables: what they load to, what `vmip check` shows, every mistake."""

from __future__ import annotations

import json
from ipaddress import IPv6Network
from pathlib import Path

import pytest

from vmip.config import ConfigError, load_config
from vmip.config.model import PROTOCOL_NUMBERS

FLOWS = """
[[flow]]
name = "voice"
protocol = "udp"
remote = "2001:db8:20::2"
remote_ports = "5060-5061"
local_ports = 5004
send = "duplicate"

[[flow]]
name = "bulk"
remote = "2001:db8:20::/48"
send = "link:lte0"

[[flow]]
name = "ping"
protocol = "icmpv6"
"""


def _write(configs: Path, base: str, extra: str) -> Path:
    path = configs / "flows.toml"
    path.write_text((configs / f"{base}.toml").read_text() + "\n" + extra)
    return path


def test_flows_load_in_file_order_with_defaults(configs: Path) -> None:
    cfg = load_config(_write(configs, "mn", FLOWS))
    voice, bulk, ping = cfg.flows
    assert (voice.name, voice.protocol, voice.send) == ("voice", PROTOCOL_NUMBERS["udp"],
                                                        "duplicate")
    assert voice.remote == IPv6Network("2001:db8:20::2/128")   # an address is its /128
    assert (voice.local_ports, voice.remote_ports) == ((5004, 5004), (5060, 5061))
    assert (bulk.protocol, bulk.remote, bulk.send) == (None, IPv6Network("2001:db8:20::/48"),
                                                       "link:lte0")
    assert (ping.protocol, ping.remote, ping.local_ports, ping.send) == (58, None, None, "best")


def test_a_config_without_flows_has_none(configs: Path) -> None:
    assert load_config(configs / "mn.toml").flows == ()


def test_vmip_check_shows_the_flows_and_reads_back_the_same(configs: Path, run_check) -> None:
    path = _write(configs, "mn", FLOWS)
    status, out, err = run_check("-c", str(path))
    assert status == 0, err
    assert out.count("[[flow]]") == 3
    assert 'send = "duplicate"' in out and 'send = "link:lte0"' in out
    assert 'remote = "2001:db8:20::2/128"' in out and 'remote_ports = "5060-5061"' in out
    effective = configs / "effective.toml"
    effective.write_text(out)
    assert load_config(effective).flows == load_config(path).flows
    status, out, _ = run_check("-c", str(path), "--json")
    assert status == 0
    assert [flow["send"] for flow in json.loads(out)["flow"]] == ["duplicate", "link:lte0", "best"]


MISTAKES = {
    "ports with protocol any": (
        "mn", '[[flow]]\nname = "x"\nremote_ports = 443\n', "flow[0].remote_ports",
        "ports need a protocol that has them", 'add protocol = "tcp" or "udp" to this flow'),
    "ports with icmpv6": (
        "mn", '[[flow]]\nname = "x"\nprotocol = "icmpv6"\nlocal_ports = "1-2"\n',
        "flow[0].local_ports", "ports need a protocol", "or remove local_ports"),
    "link not in [[link]]": (
        "mn", '[[flow]]\nname = "x"\nsend = "link:lte1"\n', "flow[0].send",
        "no [[link]] is named \"lte1\"", 'did you mean "link:lte0"?'),
    "link unlike any": (
        "mn", '[[flow]]\nname = "x"\nsend = "link:satellite"\n', "flow[0].send",
        "no [[link]] is named \"satellite\"",
        "name one of the links with a care-of address: wifi0, lte0"),
    "link on a correspondent": (
        "cn", '[[flow]]\nname = "x"\nsend = "link:eth0"\n', "flow[0].send",
        "only a mobile node picks the link", 'write send = "best" or "duplicate"'),
    "duplicate names": (
        "mn", '[[flow]]\nname = "x"\n[[flow]]\nname = "y"\n[[flow]]\nname = "x"\n',
        "flow[2].name", '"x" is already the name of flow[0]', "give each entry its own name"),
    "unknown send": (
        "mn", '[[flow]]\nname = "x"\nsend = "duplicat"\n', "flow[0].send",
        '"duplicat" is not a way to send', 'did you mean "duplicate"?'),
    "link without a name": (
        "mn", '[[flow]]\nname = "x"\nsend = "link:"\n', "flow[0].send",
        "does not name a link", '"link:lte0"'),
    "IPv4 remote": (
        "mn", '[[flow]]\nname = "x"\nremote = "192.0.2.0/24"\n', "flow[0].remote",
        "is not an IPv6 prefix", "the inner destination"),
    "remote with host bits": (
        "mn", '[[flow]]\nname = "x"\nremote = "2001:db8::1/64"\n', "flow[0].remote",
        "has bits set after the prefix length", '"2001:db8::/64"'),
    "missing name": (
        "mn", '[[flow]]\nsend = "duplicate"\n', "flow[0].name", "is missing",
        'add name = "voice" to [[flow]]'),
    "unknown key": (
        "mn", '[[flow]]\nname = "x"\nsends = "duplicate"\n', "flow[0].sends",
        "unknown key 'sends'", "did you mean 'send'?"),
    "single brackets": (
        "mn", '[flow]\nname = "x"\n', "flow", "is a single table",
        "write [[flow]] with double brackets"),
}


@pytest.mark.parametrize("case", list(MISTAKES), ids=list(MISTAKES))
def test_flow_mistakes_name_the_key_and_the_fix(configs: Path, run_check, case: str) -> None:
    base, extra, key, problem, hint = MISTAKES[case]
    path = _write(configs, base, extra)
    status, out, err = run_check("-c", str(path))
    assert status == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"vmip: error: {path}: {key}: "), err
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key
    assert problem in caught.value.problem and hint in caught.value.hint, caught.value


def test_a_link_without_coa_cannot_carry_a_flow(configs: Path) -> None:
    """An MN's link without a care-of address has no binding to send a flow on."""
    text = (configs / "mn.toml").read_text()
    start = text.index("[[link]]", text.index("[[link]]") + 1)
    end = text.index("\n[", start + 1)
    lte = text[start:end]
    without_coa = "\n".join(line for line in lte.splitlines() if not line.startswith("coa"))
    path = configs / "flows.toml"
    path.write_text(text.replace(lte, without_coa)
                    + '\n[[flow]]\nname = "x"\nsend = "link:lte0"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "flow[0].send"
    assert "link[1] (\"lte0\") has no care-of address" in caught.value.problem
    assert "add coa to link[1], or name one of wifi0" in caught.value.hint
