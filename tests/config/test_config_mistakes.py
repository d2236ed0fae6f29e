"""One test per kind of mistake: `vmip check` exits 2 with one line on stderr
naming the file, the key and what to write instead.

Each case edits a private copy of an example config the way a user might get
it wrong, then checks both the CLI (exit status, stderr) and the
:class:`ConfigError` fields.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmip.config import ConfigError, load_config


@dataclass(frozen=True)
class Mistake:
    file: str                              # which example to start from
    edit: Callable[[Path, str], str]       # (configs dir, text) -> broken text
    key: str                               # the dotted key the message must name
    problem: str                           # a fragment of the problem
    hint: str                              # a fragment of the hint


def replace(old: str, new: str, count: int = 1) -> Callable[[Path, str], str]:
    def edit(_: Path, text: str) -> str:
        assert text.count(old) >= count, f"example changed? {old!r} not found"
        return text.replace(old, new, count)
    return edit


def chain(*edits: Callable[[Path, str], str]) -> Callable[[Path, str], str]:
    def edit(configs: Path, text: str) -> str:
        for one in edits:
            text = one(configs, text)
        return text
    return edit


def append(extra: str) -> Callable[[Path, str], str]:
    return lambda _, text: text + "\n" + extra


def chmod_key(name: str, mode: int) -> Callable[[Path, str], str]:
    def edit(configs: Path, text: str) -> str:
        (configs / "keys" / name).chmod(mode)
        return text
    return edit


def remove_key(name: str) -> Callable[[Path, str], str]:
    def edit(configs: Path, text: str) -> str:
        (configs / "keys" / name).unlink()
        return text
    return edit


BAD_PORTS_POLICY = """
[[policy]]
name = "web"
direction = "out"
src = "2001:db8:100::10/128"
dst = "::/0"
protocol = "tcp"
dst_ports = "8080-80"
action = "bypass"
"""

MISTAKES = {
    "unknown key": Mistake(
        "mn", replace("home_agent = ", "home_agnet = "), "mobility.home_agnet",
        "unknown key 'home_agnet'", "did you mean 'home_agent'?"),
    "unknown table": Mistake(
        "mn", replace("[mobility]", "[mobilty]"), "mobilty",
        "unknown table 'mobilty'", "did you mean 'mobility'?"),
    "key under the wrong table": Mistake(
        "mn", replace('tunnel = "esp"', 'tunnel = "esp"\ncoa = "2001:db8:31::9"'), "mobility.coa",
        "unknown key 'coa'", "'coa' belongs in [[link]]"),
    "wrong type": Mistake(
        "mn", replace("mtu = 1400", 'mtu = "1400"'), "tun.mtu",
        'expected an integer, got a string "1400"', "write mtu = 1400"),
    "state_dir not a path": Mistake(
        "mn", replace('mode = "static"', 'mode = "static"\nstate_dir = 7'), "keys.state_dir",
        "expected a string, got an integer 7", 'write state_dir = "/var/lib/vmip/mn"'),
    "wrong type boolean": Mistake(
        "ha", replace("mtu = 1400", "mtu = true"), "tun.mtu", "expected an integer, got a boolean", "write mtu = 1400"),
    "bad address": Mistake(
        "mn", replace('coa = "2001:db8:32::2"', 'coa = "2001:db8::zz"'), "link[1].coa",
        '"2001:db8::zz" is not an IPv6 address', 'write a care-of address such as "2001:db8:31::2"'),
    "IPv4 where IPv6 needed": Mistake(
        "mn", replace('home_agent = "2001:db8:100::1"', 'home_agent = "192.0.2.2"'),
        "mobility.home_agent", '"192.0.2.2" is not an IPv6 address', '"2001:db8:100::1"'),
    "bad prefix": Mistake(
        "mn", replace('home_prefix = "2001:db8:100::/64"', 'home_prefix = "2001:db8:100::/129"'),
        "mobility.home_prefix", "is not an IPv6 prefix", 'such as "2001:db8:100::/64"'),
    "prefix with host bits": Mistake(
        "cn", replace('routes = ["2001:db8:100::/64"]', 'routes = ["2001:db8:100::7/64"]'),
        "tun.routes[0]", "bits set after the prefix length", 'write "2001:db8:100::/64"'),
    "address where prefix needed": Mistake(
        "mn", replace('src = "2001:db8:100::10/128"', 'src = "2001:db8:100::10"'), "policy[0].src",
        '"2001:db8:100::10" is an address, not a prefix', 'write "2001:db8:100::10/128"'),
    "address where home prefix needed": Mistake(
        "ha", replace('home_prefix = "2001:db8:100::/64"', 'home_prefix = "2001:db8:100::1"'),
        "mobility.home_prefix", "is an address, not a prefix", '"2001:db8:100::/64"'),
    "missing key file": Mistake(
        "mn", remove_key("mn-to-cn.key"), "keys.sa[4].key_file",
        "keys/mn-to-cn.key: key file does not exist", "create it"),
    "world-readable key file": Mistake(
        "mn", chmod_key("cn-to-mn.key", 0o644), "keys.sa[5].key_file",
        "readable or writable by group or others (mode 0644)", "run chmod 600 "),
    "group-writable key file": Mistake(
        "cn", chmod_key("mn2-to-cn.key", 0o620), "keys.sa[2].key_file",
        "(mode 0620)", "run chmod 600 "),
    "wrong key length": Mistake(
        "mn", replace('key_file = "keys/mn-to-cn.key"', 'key_file = "keys/mn-to-ha-mh.auth"'),
        "keys.sa[4].key_file", "holds a 32-byte key, suite aes128gcm16 needs 20 bytes",
        "write a 20-byte encryption key (40 hex digits)"),
    "auth key for an AEAD suite": Mistake(
        "mn", replace('key_file = "keys/mn-to-cn.key"',
                      'key_file = "keys/mn-to-cn.key"\nauth_key_file = "keys/mn-to-ha-mh.auth"'),
        "keys.sa[4].auth_key_file", "AEAD suite", "remove auth_key_file"),
    "unknown suite": Mistake(
        "cn", replace('suite = "aes128gcm16"', 'suite = "aes-128-gcm"'), "keys.sa[0].suite",
        '"aes-128-gcm" is not one of', 'did you mean "aes128gcm16"?'),
    "unknown SA in a policy": Mistake(
        "mn", replace('sa = ["mn-cn-out"]', 'sa = ["mn-cn-uot"]'), "policy[4].sa[0]",
        'no [[keys.sa]] is named "mn-cn-uot"', 'did you mean "mn-cn-out"?'),
    "SA of the wrong direction in a policy": Mistake(
        "mn", replace('sa = ["mn-cn-out"]', 'sa = ["mn-cn-in"]'), "policy[4].sa[0]",
        'SA "mn-cn-in" is inbound but the policy is outbound', "name SAs of the policy's direction"),
    "MN without HoA": Mistake(
        "mn", replace('home_address = "2001:db8:100::10"\n', ""), "mobility.home_address",
        "a mobile node needs its home address", 'add home_address = "2001:db8:100::10" under [mobility]'),
    "MN without a CoA": Mistake(
        "mn", lambda _, text: text.replace('coa = "2001:db8:31::2"\n', "").replace('coa = "2001:db8:32::2"\n', ""),
        "link", "at least one link with a care-of address", 'add coa = "2001:db8:31::2" to a [[link]]'),
    "HoA outside home prefix": Mistake(
        "mn", lambda _, text: text.replace('home_address = "2001:db8:100::10"',
                                           'home_address = "2001:db8:200::10"'),
        "mobility.home_address", "2001:db8:200::10 is outside home_prefix 2001:db8:100::/64",
        'write a home address inside 2001:db8:100::/64, such as "2001:db8:100::10"'),
    "HA without home prefix": Mistake(
        "ha", replace('home_prefix = "2001:db8:100::/64"\n', ""), "mobility.home_prefix",
        "a home agent needs the home prefix", 'add home_prefix = "2001:db8:100::/64"'),
    "CoA on a node that is not an MN": Mistake(
        "cn", replace("keepalive = 20", 'keepalive = 20\ncoa = "2001:db8:20::9"'), "link[0].coa",
        "only makes sense on a mobile node", 'add "mn" to node.roles'),
    "duplicate SPI": Mistake(
        "mn", replace("spi = 0x1201", "spi = 0x1101"), "keys.sa[2].spi",
        'SPI 0x1101 is already used by keys.sa[0] ("mn-ha-mh-out") for direction out to 2001:db8:100::1',
        "pick another SPI"),
    "reserved SPI": Mistake(
        "cn", replace("spi = 0x1301", "spi = 255"), "keys.sa[0].spi", "255 is out of range",
        "write an SPI from 256 to 4294967295"),
    "duplicate SA name": Mistake(
        "cn", replace('name = "mn2-in"', 'name = "mn-in"'), "keys.sa[2].name",
        '"mn-in" is already the name of keys.sa[0]', "give each entry its own name"),
    "bad port range": Mistake(
        "mn", append(BAD_PORTS_POLICY), "policy[10].dst_ports",
        '"8080-80" starts above its end', 'write the lower port first, such as "80-8080"'),
    "port out of range": Mistake(
        "mn", append(BAD_PORTS_POLICY.replace('"8080-80"', '"80-70000"')), "policy[10].dst_ports",
        "outside 0-65535", 'write a port (22), a range ("1000-2000") or "any"'),
    "ports without a protocol that has them": Mistake(
        "mn", append(BAD_PORTS_POLICY.replace('protocol = "tcp"', 'protocol = "icmpv6"')
                     .replace('"8080-80"', '"80-8080"')),
        "policy[10].dst_ports", "ports need a protocol that has them", 'add protocol = "tcp"'),
    "binding lifetime not a multiple of 4": Mistake(
        "mn", replace("binding_lifetime = 420", "binding_lifetime = 421"), "mobility.binding_lifetime",
        "421 is not a multiple of 4", "write 420 or 424"),
    "binding lifetime too long": Mistake(
        "mn", replace("binding_lifetime = 420", "binding_lifetime = 262144"),
        "mobility.binding_lifetime", "262144 is out of range", "from 4 to 262140"),
    "MTU below 1280": Mistake(
        "cn", replace("mtu = 1400", "mtu = 1200"), "tun.mtu", "1200 is out of range",
        "write an MTU from 1280 to 65535"),
    "TUN name too long": Mistake(
        "cn", replace('name = "vmip0"', 'name = "vmip-overlay-tunnel0"'), "tun.name",
        "longer than 15 characters", "15 characters at most"),
    "unknown driver": Mistake(
        "ha", replace('driver = "udp"', 'driver = "udp6"'), "link[0].driver",
        '"udp6" is not one of', 'did you mean "udp"?'),
    "IKE mode without [ike]": Mistake(
        "cn", replace('mode = "static"', 'mode = "ike"'), "keys.mode",
        '"ike" needs an [ike] section', 'write mode = "static"'),
    "[[link]] written [link]": Mistake(
        "ha", replace("[[link]]", "[link]"), "link", "is a single table",
        "write [[link]] with double brackets"),
    "TOML syntax error": Mistake(
        "mn", replace('coa = "2001:db8:32::2"', "coa = 2001:db8:32::2"), "link[1].coa",
        "TOML syntax error at line {line}, column", 'write coa = "2001:db8:32::2"'),
    "raw link with a port": Mistake(
        "cn", replace('driver = "udp"\ninterface = "eth0"', 'driver = "raw"\ninterface = "eth0"'),
        "link[0].port", "the raw driver has no port", "remove port"),
    "raw peer with an endpoint": Mistake(
        "cn", chain(replace('port = 6275\nkeepalive = 20', 'port = 6275\nkeepalive = 20\n\n'
                            '[[link]]\nname = "eth1"\ndriver = "raw"\ninterface = "eth1"'),
                    replace('framing = "udp"\ndefault = true', 'framing = "raw"\ndefault = true')),
        "peer[0].endpoint", "raw framing has no underlay endpoint",
        "the operating system routes raw packets"),
    "IPv4 prefix on a raw peer": Mistake(
        "cn", chain(replace('port = 6275\nkeepalive = 20', 'port = 6275\nkeepalive = 20\n\n'
                            '[[link]]\nname = "eth1"\ndriver = "raw"\ninterface = "eth1"'),
                    replace('prefixes = ["2001:db8:31::2/128"]\nendpoint = "192.0.2.34:6275"\n'
                            'framing = "udp"', 'prefixes = ["192.0.2.34/32"]\nframing = "raw"')),
        "peer[1].prefixes[0]", '"192.0.2.34/32" is IPv4, but raw framing carries IPv6',
        'framing = "rfc3948" for a plain IPsec peer'),
    "raw link that could receive nothing": Mistake(
        "cn", chain(replace('driver = "udp"\ninterface = "eth0"\nbind = "192.0.2.18"\nport = 6275',
                            'driver = "raw"\nbind = "2001:db8:20::99"'),
                    replace('addresses = ["2001:db8:20::2/128"]', 'addresses = ["2001:db8:20::3/128"]'),
                    replace('framing = "udp"', 'framing = "raw"', 3),
                    replace('endpoint = "192.0.2.2:6275"\n', ''),
                    replace('endpoint = "192.0.2.34:6275"\n', ''),
                    replace('endpoint = "192.0.2.50:6275"\n', '')),
        "keys.sa[0].dst", "would be dropped as rx_drop_not_for_us",
        'add own_addresses = ["2001:db8:20::2"] to link[0]'),
    "raw link without an interface, its peer routed into the TUN": Mistake(
        "cn", chain(replace('driver = "udp"\ninterface = "eth0"\nbind = "192.0.2.18"\nport = 6275',
                            'driver = "raw"\nown_addresses = ["2001:db8:20::2"]'),
                    replace('framing = "udp"', 'framing = "raw"', 3),
                    replace('endpoint = "192.0.2.2:6275"\n', ''),
                    replace('endpoint = "192.0.2.34:6275"\n', ''),
                    replace('endpoint = "192.0.2.50:6275"\n', '')),
        "link[0].interface", "is also routed into the TUN (tun.routes[0] 2001:db8:100::/64)",
        'set interface = "eth0"'),
    "multiple_care_of on a node without the mn role": Mistake(
        "cn", replace("[mobility]\n", "[mobility]\nmultiple_care_of = true\n"),
        "mobility.multiple_care_of",
        "is only used by a mobile node", 'add "mn" to node.roles'),
    "multiple_care_of not a boolean": Mistake(
        "mn", replace('tunnel = "esp"', 'tunnel = "esp"\nmultiple_care_of = "yes"'),
        "mobility.multiple_care_of", 'expected true or false, got a string "yes"',
        "write multiple_care_of = true"),
    "max_care_of_addresses above 16": Mistake(
        "cn", replace("[mobility]\n", "[mobility]\nmax_care_of_addresses = 17\n"),
        "mobility.max_care_of_addresses", "17", "0"),
    "more links with a CoA than bindings per HoA": Mistake(
        "mn", chain(replace('tunnel = "esp"', 'tunnel = "esp"\nmultiple_care_of = true'),
                    append("".join(f'\n[[link]]\nname = "extra{i}"\ncoa = "2001:db8:5{i:x}::2"\n'
                                   for i in range(15)))),
        "mobility.multiple_care_of", "17 links have a care-of address",
        "keep coa on 16 links, or set multiple_care_of = false"),
    "TOML duplicate key": Mistake(
        "cn", replace("mtu = 1400", "mtu = 1400\nmtu = 1500"), "tun.mtu",
        "TOML syntax error at line {line}", "each key and [table] may appear once"),
}


@pytest.mark.parametrize("mistake", MISTAKES.values(), ids=MISTAKES.keys())
def test_mistake_is_reported_with_file_key_and_hint(configs: Path, run_check, mistake: Mistake) -> None:
    original = (configs / f"{mistake.file}.toml").read_text()
    broken = mistake.edit(configs, original)
    path = configs / "broken.toml"
    path.write_text(broken)
    if "{line}" in mistake.problem:
        # The line a syntax error must point at: the first line that differs.
        changed = next(i for i, (a, b) in enumerate(zip(original.splitlines(),
                                                        broken.splitlines()), 1) if a != b)
        problem = mistake.problem.format(line=changed)
    else:
        problem = mistake.problem

    status, out, err = run_check("-c", str(path))

    assert status == 2 and out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err   # exactly one line
    assert err.startswith(f"vmip: error: {path}: {mistake.key}: "), err
    assert problem in err and mistake.hint in err, err
    # The same through the API: one ConfigError with its fields filled in.
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    assert (error.file, error.key, error.exit_status) == (str(path), mistake.key, 2)
    assert problem in error.problem and mistake.hint in error.hint


def test_syntax_error_points_at_the_right_line_and_column(configs: Path) -> None:
    text = (configs / "mn.toml").read_text().replace('coa = "2001:db8:32::2"', "coa = 2001:db8:32::2")
    path = configs / "broken.toml"
    path.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row == "coa = 2001:db8:32::2")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    # tomllib stops after "2001" (an integer), at the first ':' (1-based column 11).
    assert f"line {line}, column 11" in caught.value.problem


def test_missing_config_file(tmp_path: Path, run_check) -> None:
    path = tmp_path / "nope.toml"
    status, _, err = run_check("-c", str(path))
    assert status == 2
    assert err == f"vmip: error: {path}: no such file; check the path, or start from configs/mn.toml\n"


def test_config_that_is_not_utf8(tmp_path: Path, run_check) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[node]\nname = "caf\xe9"\n')
    status, _, err = run_check("-c", str(path))
    assert status == 2 and f"{path}: line 2: the file is not UTF-8 text" in err


def test_first_mistake_is_reported_and_unknown_keys_come_first(configs: Path) -> None:
    """A typo in a key name is reported rather than the missing key it causes."""
    text = (configs / "mn.toml").read_text().replace("home_address = ", "home_adress = ")
    path = configs / "broken.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "mobility.home_adress"
    assert caught.value.hint == "did you mean 'home_address'?"


def test_key_material_never_appears_in_errors(configs: Path) -> None:
    """A malformed key file or a wrong-length key: the message names the
    file, never its content."""
    key_path = configs / "keys" / "mn-to-cn.key"
    secret = key_path.read_text().strip()
    for content in (secret + "zz\n", secret[:-2] + "\n", secret + secret + "\n"):
        key_path.write_text(content)
        os.chmod(key_path, 0o600)
        with pytest.raises(ConfigError) as caught:
            load_config(configs / "mn.toml")
        assert caught.value.key == "keys.sa[4].key_file"
        assert secret[:8] not in str(caught.value)


def test_no_replay_window_is_refused_while_peers_may_send_copies(configs: Path) -> None:
    """Duplicate mode sends the same ESP packet on every path: only the
    receiver's replay window drops the extra copies (RFC 4303 §3.4.3)."""
    from vmip.config import parse_config
    base = configs / "cn.toml"
    text = base.read_text()
    assert "replay_window = 1024\n" in text
    no_window = text.replace("replay_window = 1024\n", "replay_window = 0\n", 1)
    sa_without = text.replace('name = "mn-in"\n', 'name = "mn-in"\nreplay_window = 0\n', 1)
    for mistake, key in ((no_window, "keys.replay_window"),
                         (sa_without, "keys.sa[0].replay_window")):
        with pytest.raises(ConfigError) as caught:
            parse_config(mistake, base)
        assert caught.value.key == key and "max_care_of_addresses = 0" in str(caught.value)
    allowed = no_window.replace("[mobility]\n", "[mobility]\nmax_care_of_addresses = 0\n", 1)
    assert parse_config(allowed, base).keys.replay_window == 0
