"""Property tests: whatever the input, the loader gives a config or one
ConfigError (one line, naming the file), never another exception; a config
it accepts always survives the effective dump; and the documented ranges
are exactly the accepted ones."""

from __future__ import annotations

import copy
from vmip.compat import tomllib
from datetime import date, datetime, time, timezone
from pathlib import Path

import pytest
from cfgtest_helpers import CONFIGS, copy_configs
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vmip.config import ConfigError, build_config, dump_effective, parse_config
from vmip.config.model import LIFETIME_KEYS, NodeConfig
from vmip.config.schema import headers, keys_of

ROOT_KEYS = keys_of(NodeConfig)
ALL_KEYS = sorted(set(ROOT_KEYS + LIFETIME_KEYS).union(
    *(keys_of(kind) for _, kind in headers(NodeConfig))))

# Strings that get past the first checks and reach the deeper ones.
INTERESTING = [
    "any", "mn", "ha", "cn", "udp", "raw", "rfc3948", "tcp", "udp", "mh", "icmpv6", "in", "out",
    "protect", "bypass", "discard", "static", "ike", "transport", "tunnel", "esp", "ip6ip6",
    "aes128gcm16", "aes128cbc-sha256", "null-sha256", "cryptography", "debug", "json", "",
    "2001:db8:100::10", "2001:db8:100::1", "2001:db8:31::2", "2001:db8:100::/64", "::/0",
    "2001:db8:100::10/64", "2001:db8:100::10/128", "192.0.2.2", "192.0.2.0/24", "0.0.0.0/0",
    "fe80::1%eth0", "192.0.2.2:6275", "[2001:db8::1]:6275", "[2001:db8::1]", "[192.0.2.1]:1",
    "2001:db8::zz", "1000-2000", "2000-1000", "22", "0-65535", "keys/mn-to-cn.key",
    "keys/mn-to-ha-mh.auth", "keys/", "/dev/null", "..", "wifi0", "a" * 20, "x/y", "é",
]
SCALARS = st.one_of(
    st.sampled_from(INTERESTING),
    st.text(max_size=24),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from([0, 1, 4, 255, 256, 420, 1280, 6275, 65535, 65536, 0x1101, 2**32, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(timezones=st.sampled_from([None, timezone.utc])),
    st.dates(),
    st.times(),
)
PLAUSIBLE = st.one_of(
    st.sampled_from(INTERESTING),
    st.integers(min_value=0, max_value=70000),
    st.booleans(),
    st.lists(st.sampled_from(INTERESTING), max_size=2),
)
KEYS = st.one_of(st.sampled_from(ALL_KEYS), st.text(max_size=12))
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def fuzz_configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_configs(tmp_path_factory.mktemp("fuzz"))


def _check_outcome(source: Path, attempt) -> None:
    """Run *attempt*; a config must re-read equal from its dump, an error must be one line."""
    try:
        cfg = attempt()
    except ConfigError as exc:
        text = str(exc)
        assert "\n" not in text and "\r" not in text
        assert text.startswith(f"{source}: ")
        assert exc.problem and exc.hint and exc.exit_status == 2
        return
    assert parse_config(dump_effective(cfg), cfg.source) == cfg


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.one_of(st.sampled_from(ROOT_KEYS), st.text(max_size=8)), VALUES, max_size=6))
def test_arbitrary_documents_give_config_or_config_error(fuzz_configs: Path, document: dict) -> None:
    source = fuzz_configs / "fuzz.toml"
    _check_outcome(source, lambda: build_config(document, source))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_gives_config_or_config_error(fuzz_configs: Path, text: str) -> None:
    source = fuzz_configs / "fuzz.toml"
    _check_outcome(source, lambda: parse_config(text, source))


def _lines_of_examples() -> list[str]:
    lines: list[str] = []
    for path in sorted(CONFIGS.glob("*.toml")):
        lines.extend(path.read_text().splitlines())
    return lines


EXAMPLE_LINES = _lines_of_examples()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(EXAMPLE_LINES), max_size=60))
def test_shuffled_example_lines_give_config_or_config_error(fuzz_configs: Path, lines: list[str]) -> None:
    source = fuzz_configs / "fuzz.toml"
    _check_outcome(source, lambda: parse_config("\n".join(lines) + "\n", source))


def _paths(value, prefix=()):
    """Every place in a parsed document: (path, value) for tables, lists and leaves."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _paths(child, prefix + (i,))


EXAMPLE_DOCUMENTS = {path.stem: tomllib.loads(path.read_text()) for path in CONFIGS.glob("*.toml")}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_examples_give_config_or_config_error(fuzz_configs: Path, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(EXAMPLE_DOCUMENTS)))
    document = copy.deepcopy(EXAMPLE_DOCUMENTS[name])
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        places = [p for p in _paths(document) if p]
        place = data.draw(st.sampled_from(places))
        parent = document
        for step in place[:-1]:
            parent = parent[step]
        action = data.draw(st.sampled_from(["plausible", "plausible", "replace", "delete", "add"]))
        if action == "plausible":
            # A value of a kind the loader accepts somewhere: reaches the
            # cross-checks and, often enough, a valid config to dump.
            parent[place[-1]] = data.draw(PLAUSIBLE)
        elif action == "replace":
            parent[place[-1]] = data.draw(VALUES)
        elif action == "delete":
            del parent[place[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(KEYS)] = data.draw(VALUES)
        else:
            parent.append(data.draw(VALUES))
    source = fuzz_configs / f"{name}.toml"
    _check_outcome(source, lambda: build_config(document, source))


# --- The documented ranges are exactly the accepted ones ---------------------

def _with(base: str, old: str, new: str) -> str:
    assert old in base
    return base.replace(old, new, 1)


MN_TEXT = (CONFIGS / "mn.toml").read_text()
CN_TEXT = (CONFIGS / "cn.toml").read_text()


def _accepted(fuzz_configs: Path, text: str, source: str = "cn.toml") -> bool:
    try:
        parse_config(text, fuzz_configs / source)
    except ConfigError:
        return False
    return True


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=-10, max_value=70000), st.integers(min_value=-10, max_value=70000))
def test_port_ranges(fuzz_configs: Path, low: int, high: int) -> None:
    policy = ('\n[[policy]]\nname = "p"\ndirection = "in"\nsrc = "::/0"\ndst = "::/0"\n'
              f'protocol = "udp"\ndst_ports = "{low}-{high}"\naction = "bypass"\n')
    assert _accepted(fuzz_configs, CN_TEXT + policy) == (0 <= low <= high <= 65535)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.integers(min_value=-5, max_value=300_000),
                 st.sampled_from([0, 4, 262136, 262140, 262144])))
def test_binding_lifetime(fuzz_configs: Path, lifetime: int) -> None:
    text = _with(MN_TEXT, "binding_lifetime = 420", f"binding_lifetime = {lifetime}")
    # RFC 6275 §6.1.7: 16 bits of 4-second units; 0 would mean deregistration.
    assert _accepted(fuzz_configs, text, "mn.toml") == (4 <= lifetime <= 262140 and lifetime % 4 == 0)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.integers(min_value=-1, max_value=2**33),
                 st.sampled_from([0, 1, 255, 256, 0xFFFFFFFF, 0x100000000])))
def test_spi_range(fuzz_configs: Path, spi: int) -> None:
    assume(spi not in (0x1302, 0x2301, 0x2302))  # the other SAs' SPIs (same dst: fine anyway)
    text = _with(CN_TEXT, "spi = 0x1301", f"spi = {spi}")
    # RFC 4303 §2.1: 1-255 reserved, 0 local use.
    assert _accepted(fuzz_configs, text) == (256 <= spi <= 0xFFFFFFFF)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=70000))
def test_mtu_range(fuzz_configs: Path, mtu: int) -> None:
    text = _with(CN_TEXT, "mtu = 1400", f"mtu = {mtu}")
    assert _accepted(fuzz_configs, text) == (1280 <= mtu <= 65535)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii"), min_size=1, max_size=20))
def test_tun_names(fuzz_configs: Path, name: str) -> None:
    text = _with(CN_TEXT, 'name = "vmip0"', f"name = {_toml_literal(name)}")
    valid = (len(name) <= 15 and name not in (".", "..") and "/" not in name and ":" not in name
             and not any(c.isspace() for c in name) and "\0" not in name)
    assert _accepted(fuzz_configs, text) == valid


def _toml_literal(text: str) -> str:
    from vmip.tomlwriter import toml_string
    return toml_string(text)


def test_tomllib_values_of_every_type_are_handled(fuzz_configs: Path) -> None:
    """Dates and times are TOML values too: a date where an address belongs is a ConfigError."""
    for value in (datetime(2024, 1, 1), date(2024, 1, 1), time(12, 0), 1.5, [], {}):
        document = copy.deepcopy(EXAMPLE_DOCUMENTS["mn"])
        document["mobility"]["home_agent"] = value
        with pytest.raises(ConfigError) as caught:
            build_config(document, fuzz_configs / "mn.toml")
        assert caught.value.key == "mobility.home_agent"


# --- Valid variants: accepted, values kept, defaults as documented -----------

#: (table path, key) -> (strategy of valid values, documented default)
VARIANTS = {
    (("tun",), "mtu"): (st.integers(min_value=1280, max_value=65535), 1400),
    (("tun",), "name"): (st.from_regex(r"[a-z][a-z0-9_.-]{0,14}", fullmatch=True), "vmip0"),
    (("mobility",), "binding_lifetime"): (st.integers(min_value=1, max_value=65535).map(lambda n: 4 * n), 420),
    (("mobility",), "proof_cache_size"): (st.integers(min_value=1, max_value=1_000_000), 1024),
    (("mobility",), "max_home_bindings"): (st.integers(min_value=1, max_value=1_000_000), 16384),
    (("mobility",), "tunnel"): (st.sampled_from(["esp", "ip6ip6"]), "esp"),
    (("keys",), "replay_window"): (st.one_of(st.just(0), st.integers(min_value=32, max_value=1 << 20)), 1024),
    (("logging",), "level"): (st.sampled_from(["debug", "info", "warning", "error"]), "info"),
    (("logging",), "format"): (st.sampled_from(["text", "json"]), "text"),
    (("link", 0), "priority"): (st.integers(min_value=0, max_value=65535), 100),
    (("link", 0), "keepalive"): (st.integers(min_value=0, max_value=3600), 20),
    (("link", 0), "port"): (st.integers(min_value=1, max_value=65535), 6275),
    (("keys", "sa", 4), "esn"): (st.booleans(), True),
    (("policy", 2), "priority"): (st.integers(min_value=0, max_value=2**31 - 1), 100),
}


def _effective_value(cfg, table: tuple, key: str):
    section = {"tun": cfg.tun, "mobility": cfg.mobility, "keys": cfg.keys, "logging": cfg.logging}
    if table[0] == "link":
        obj = cfg.links[table[1]]
    elif table[0] == "policy":
        obj = cfg.policies[table[1]]
    elif table[:2] == ("keys", "sa"):
        obj = cfg.keys.sa[table[2]]
    else:
        obj = section[table[0]]
    value = getattr(obj, key)
    return getattr(value, "value", value)


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_valid_variants_are_accepted_and_kept(fuzz_configs: Path, data: st.DataObject) -> None:
    document = copy.deepcopy(EXAMPLE_DOCUMENTS["mn"])
    expected = {}
    for (table, key), (values, default) in VARIANTS.items():
        parent = document
        for step in table:
            parent = parent[step]
        choice = data.draw(st.sampled_from(["keep", "change", "delete"]), label=f"{table}.{key}")
        if choice == "change":
            parent[key] = data.draw(values, label=f"{table}.{key} value")
        elif choice == "delete":
            parent.pop(key, None)
        expected[(table, key)] = parent.get(key, default)
    if document["keys"].get("replay_window") == 0:
        # No anti-replay only where no peer may send duplicate-mode copies.
        document["mobility"]["max_care_of_addresses"] = 0
    cfg = build_config(document, fuzz_configs / "mn.toml")
    for (table, key), value in expected.items():
        assert _effective_value(cfg, table, key) == value, (table, key)
    assert parse_config(dump_effective(cfg), cfg.source) == cfg


@settings(max_examples=100, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    key: (st.floats(min_value=0.001, max_value=1e9) | st.integers(min_value=1, max_value=10**9))
    if key.endswith("seconds") else st.integers(min_value=1, max_value=2**63 - 1)
    for key in LIFETIME_KEYS}))
def test_lifetimes(fuzz_configs: Path, lifetime: dict) -> None:
    document = copy.deepcopy(EXAMPLE_DOCUMENTS["cn"])
    document["keys"]["sa"][0]["lifetime"] = lifetime
    consistent = all(lifetime.get(f"soft_{u}", 0) <= lifetime.get(f"hard_{u}", float("inf"))
                     for u in ("seconds", "bytes", "packets"))
    try:
        cfg = build_config(document, fuzz_configs / "cn.toml")
    except ConfigError as exc:
        assert not consistent and ".soft_" in exc.key
        return
    assert consistent
    sa = cfg.keys.sa[0]
    for unit in ("seconds", "bytes", "packets"):
        assert getattr(sa.soft, unit) == lifetime.get(f"soft_{unit}")
        assert getattr(sa.hard, unit) == lifetime.get(f"hard_{unit}")
    assert parse_config(dump_effective(cfg), cfg.source) == cfg
