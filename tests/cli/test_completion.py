"""vmip completion bash|zsh: scripts generated from the argparse parser."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from vmip.cli.completion import commands
from vmip.cli.main import build_parser, main


def _script(capsys, shell: str) -> str:
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


def test_the_tree_is_the_parsers():
    tree = commands(build_parser())
    assert {"init", "check", "sa", "spd", "completion"} <= set(tree[""].subcommands)
    assert tree["sa"].subcommands == {"list": "list the SAs (no keys)"}
    assert tree[""].values["--log-level"] == "debug info warning error"
    assert tree["init"].values["--keys"] == "ike static"
    assert tree["check"].values["--config"] == "__file__"  # metavar FILE
    assert tree["run"].values["-c"] == "__file__"  # type=Path
    assert tree["completion"].positional == ["bash", "zsh"]
    assert "--json" in tree["spd list"].options


CASES = [
    (["vmip", ""], {"init", "check", "spd", "completion"}, set()),
    (["vmip", "sp"], {"spd"}, {"sa"}),
    (["vmip", "sa", ""], {"list"}, {"spd"}),
    (["vmip", "spd", "list", "--j"], {"--json"}, {"--socket"}),
    (["vmip", "--log-level", ""], {"debug", "info", "warning", "error"}, {"run"}),
    (["vmip", "--log-level", "debug", "ike", "re"], {"rekey"}, set()),
    (["vmip", "init", "/tmp/net", "--keys", ""], {"ike", "static"}, set()),
    (["vmip", "init", "/tmp/net", "--ha", "h=192.0.2.1:1", "--"], {"--mn", "--add-mn"}, set()),
    (["vmip", "completion", ""], {"bash", "zsh"}, set()),
]


@pytest.mark.parametrize("words, present, absent", CASES)
def test_bash_completes_commands_options_and_values(tmp_path, capsys, words, present, absent):
    script = tmp_path / "vmip.bash"
    script.write_text(_script(capsys, "bash"))
    quoted = " ".join(f"'{w}'" for w in words)
    probe = (f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
             "_vmip; printf '%s\\n' \"${COMPREPLY[@]}\"")
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", probe], capture_output=True,
                            text=True, timeout=20, check=True)
    offered = set(result.stdout.split())
    assert present <= offered, offered
    assert not absent & offered
    assert "complete -o default -F _vmip vmip" in script.read_text()


def test_zsh_script_describes_subcommands(capsys):
    script = _script(capsys, "zsh")
    assert script.startswith("#compdef vmip\n")
    assert "init:generate the configs, keys and units of a whole network" in script
    assert "'init|--keys') printf '%s\\n' 'ike static'" in script
    assert "compdef _vmip vmip" in script


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completes_with_stubbed_completion_builtins(tmp_path, capsys):
    script = tmp_path / "_vmip"
    script.write_text(_script(capsys, "zsh"))
    probe = (
        "compdef() { :; }; compadd() { [[ $1 == -- ]] && shift; print -l -- $@; }; "
        "_describe() { print -l -- ${(P)2%%:*}; }; _files() { print FILES; }; "
        f"source {script}; words=(vmip init x --keys ''); CURRENT=5; _vmip; "
        "words=(vmip sa ''); CURRENT=3; _vmip")
    result = subprocess.run(["zsh", "-f", "-c", probe], capture_output=True, text=True,
                            timeout=20, check=True)
    assert result.stdout.split() == ["ike", "static", "list"]
