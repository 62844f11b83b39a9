"""``ce completion bash|zsh``: the script the installed ``ce`` prints, sourced in a real bash (and zsh where it is
installed), completing words as the shell would: COMP_WORDS / COMP_CWORD set, ``_ce`` called, COMPREPLY read."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CE = Path(sys.executable).parent / "ce"


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "ce.bash"
    done = subprocess.run([str(CE), "completion", "bash"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    path.write_text(done.stdout)
    return path


def complete(script: Path, *words: str, cwd: Path | None = None) -> list[str]:
    """The candidates bash offers for the last of ``words`` (the command line typed so far, ``ce`` first)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _ce; "
               f"printf '%s\\n' \"${{COMPREPLY[@]}}\"; complete -p ce")
    done = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=60, cwd=cwd)
    assert done.returncode == 0, done.stderr
    *candidates, registered = done.stdout.splitlines()
    assert registered.startswith("complete ") and registered.endswith(" -F _ce ce")
    return [c for c in candidates if c]


def test_commands(script):
    assert complete(script, "ce", "con") == ["convert", "convert-to-uefi"]
    assert {"plan", "run", "inspect", "steps", "completion", "export", "prepare-and-publish"} <= \
        set(complete(script, "ce", ""))


def test_a_commands_flags(script):
    flags = complete(script, "ce", "convert", "--")
    assert {"--format", "--dry-run", "--json", "--reg-diff", "--timeout", "--user", "--verbose"} <= set(flags)
    assert "--job" not in flags and "--vdisk" not in flags
    assert complete(script, "ce", "plan", "--r") == ["--root", "--reg-diff"]


def test_choices_of_a_flag_and_of_a_positional(script):
    assert complete(script, "ce", "convert", "--format", "") == ["raw", "qcow2", "vhd", "vhdx", "vmdk"]
    assert complete(script, "ce", "hash", "-a", "s") == ["sha256"]
    assert complete(script, "ce", "completion", "") == ["bash", "zsh"]
    assert complete(script, "ce", "convert", "--format", "=", "vh") == ["vhd", "vhdx"]   # --format=vh as bash splits it
    assert complete(script, "ce", "convert", "--format", "=") == ["raw", "qcow2", "vhd", "vhdx", "vmdk"]


def test_paths_complete_as_file_names(script, tmp_path):
    (tmp_path / "job.json").write_text("{}")
    (tmp_path / "jobs").mkdir()
    assert sorted(complete(script, "ce", "plan", "--job", "jo", cwd=tmp_path)) == ["job.json", "jobs"]
    assert sorted(complete(script, "ce", "run", "--job", "job.json", "j", cwd=tmp_path)) == ["job.json", "jobs"]
    assert sorted(complete(script, "ce", "convert", "--reg-diff", "job", cwd=tmp_path)) == ["job.json", "jobs"]
    assert complete(script, "ce", "convert", "--timeout", "j", cwd=tmp_path) == []     # a number, not a file


def test_options_before_the_command_and_their_values_are_skipped(script):
    assert complete(script, "ce", "-v", "--machine-readable-fd", "3", "exp") == ["export"]
    assert complete(script, "ce", "client", "--bootstrap", "b.json", "steps", "") == \
        ["create", "get", "wait", "cancel", "log"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_runs_the_same_completion_through_bashcompinit(tmp_path):
    """zsh's compgen (bashcompinit) returns every word and leaves matching the prefix to zsh itself."""
    script = tmp_path / "ce.zsh"
    script.write_text(subprocess.run([str(CE), "completion", "zsh"], capture_output=True, text=True,
                                     timeout=60, check=True).stdout)
    program = (f"source {script}; setopt ksharrays; COMP_WORDS=(ce convert --format v); COMP_CWORD=3; _ce; "
               "print -l -- \"${COMPREPLY[@]}\"; print -r -- ${_comps[ce]}")
    done = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True, timeout=60,
                          env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["raw", "qcow2", "vhd", "vhdx", "vmdk",
                                        "_bash_complete -o filenames -o bashdefault -F _ce"]
