"""docs/configuration.md stays true: its schema block loads, every key is documented."""

from __future__ import annotations

import re
from pathlib import Path

from cfgtest_helpers import REPO

from vmip.config import load_config
from vmip.config.loader import (
    IKE_KEYS,
    IKE_PEER_KEYS,
    KEYS_KEYS,
    LIFETIME_KEYS,
    LINK_KEYS,
    LOGGING_KEYS,
    MOBILITY_KEYS,
    NODE_KEYS,
    PEER_KEYS,
    POLICY_KEYS,
    ROOT_KEYS,
    SA_KEYS,
    TUN_KEYS,
)
from vmip.ipsec.suites import SUITES

DOC = (REPO / "docs" / "configuration.md").read_text()


def _schema_block() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", DOC, flags=re.DOTALL)
    return blocks[-1]


def test_annotated_schema_loads(configs: Path) -> None:
    """The doc's schema block (the static-keys half of it) is a valid config."""
    text = _schema_block()
    without_ike = re.sub(r"\n\[ike\].*?(?=\n\[control\])", "\n", text, flags=re.DOTALL)
    path = configs / "doc.toml"
    path.write_text(without_ike)
    cfg = load_config(path)
    assert cfg.node.name == "mn" and cfg.keys.sa[0].name == "mn-cn-out"
    assert cfg.policies[0].sa == ("mn-cn-out",)


def test_every_key_is_documented() -> None:
    for keys in (ROOT_KEYS, NODE_KEYS, TUN_KEYS, LINK_KEYS, PEER_KEYS, MOBILITY_KEYS, KEYS_KEYS,
                 SA_KEYS, LIFETIME_KEYS, POLICY_KEYS, IKE_KEYS, IKE_PEER_KEYS, LOGGING_KEYS,
                 ("socket",)):
        for key in keys:
            assert f"`{key}`" in DOC or f"[{key}]" in DOC or f"[[{key}]]" in DOC, key


def test_every_suite_is_documented_with_its_sizes() -> None:
    for name, suite in SUITES.items():
        row = next(line for line in DOC.splitlines() if line.startswith(f"| `{name}` |"))
        if suite.enc_key_len:
            assert f"{suite.enc_key_len} bytes" in row, name
        if suite.auth_key_len:
            assert row.rstrip(" |").endswith(f"{suite.auth_key_len} bytes"), name
