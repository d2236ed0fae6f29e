"""docs/configuration.md stays true: its schema block loads, every key is documented."""

from __future__ import annotations

import re
from pathlib import Path

from cfgtest_helpers import REPO

from vmip.config import NodeConfig, load_config
from vmip.config.model import LIFETIME_KEYS
from vmip.config.schema import headers, keys_of, settings
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


def _doc_section(header: str) -> str:
    """The doc's part on one table: from its heading to the next ``###``."""
    found = re.search(rf"^(### )?`{re.escape(header)}`", DOC, flags=re.MULTILINE)
    assert found, f"no section on {header}"
    end = DOC.find("\n### ", found.end())
    return DOC[found.start():end if end > 0 else None]


def test_every_key_is_documented_in_its_table() -> None:
    for key in keys_of(NodeConfig):
        assert f"`[{key}]`" in DOC or f"`[[{key}]]`" in DOC, key
    for header, kind in headers(NodeConfig):
        section = _doc_section(header)
        dotted = header.strip("[]")
        for field, spec in settings(kind):
            if spec.section is not None:
                assert f"[[{dotted}.{spec.name}]]" in DOC, (header, spec.name)
            else:
                assert f"`{spec.name}`" in section, (header, spec.name)
    sa_section = _doc_section("[[keys.sa]]")
    for key in LIFETIME_KEYS:
        assert f"`{key}`" in sa_section, key


def test_the_annotated_schema_shows_every_key() -> None:
    """The whole-schema block writes (or comments out) each key of each table."""
    text = "\n" + _schema_block()
    for header, kind in headers(NodeConfig):
        block = text[text.index(f"\n{header}") + 1:]
        first_line = block.index("\n")
        following = re.search(r"^\[", block[first_line:], flags=re.MULTILINE)
        block = block[:first_line + following.start()] if following else block
        for _, spec in settings(kind):
            if spec.section is None:
                assert re.search(rf"^(# )?{spec.name} = ", block, flags=re.MULTILINE), \
                    (header, spec.name)


def test_every_suite_is_documented_with_its_sizes() -> None:
    for name, suite in SUITES.items():
        row = next(line for line in DOC.splitlines() if line.startswith(f"| `{name}` |"))
        if suite.enc_key_len:
            assert f"{suite.enc_key_len} bytes" in row, name
        if suite.auth_key_len:
            assert row.rstrip(" |").endswith(f"{suite.auth_key_len} bytes"), name
