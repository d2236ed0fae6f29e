"""``spd.list`` sends selectors as JSON fields; the CLI spells them out."""

from __future__ import annotations

import json

from vmip.cli.render import format_selector
from vmip.ipsec.spd import OPAQUE, Selector
from vmip.node.control import selector_record


def test_a_selector_travels_as_fields_and_reads_as_people_write_it() -> None:
    selector = Selector(local="2001:db8:100::10/128", remote=None, proto=17,
                        local_ports=(500, 500), remote_ports=OPAQUE)
    record = json.loads(json.dumps(selector_record(selector)))
    assert record == {"local": "2001:db8:100::10/128", "remote": None, "proto": 17,
                      "local_ports": [500, 500], "remote_ports": "opaque", "icmp_type": None,
                      "icmp_code": None, "mh_type": None}
    assert format_selector(record, "out") == \
        "2001:db8:100::10/128 → any proto udp sport 500 dport opaque"


def test_mh_type_and_port_ranges() -> None:
    selector = Selector(local="2001:db8::1/128", remote="2001:db8::/64", proto=135, mh_type=5)
    assert format_selector(selector_record(selector), "in") == \
        "2001:db8::/64 → 2001:db8::1/128 proto mh mh type 5"
    ranged = Selector(proto=6, remote_ports=(1024, 65535))
    assert selector_record(ranged)["remote_ports"] == [1024, 65535]
