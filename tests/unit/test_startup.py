"""The CLI's start-up (issue 18, item 3): `ce --help` lists every command without importing a step module (nor
pydantic); `ce hash` imports the hash step's modules and no other step's, and none of the libraries only other
steps or the server need -- the server (flask, gunicorn), the SMB byte path (smbprotocol and its cryptography),
libguestfs, sh. Checked in a fresh interpreter by what is in sys.modules, not by timing (bench/hashing.py measures
the time)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import steps
from ce.cli import build_parser, completion
from ce.cli.lazy import ENTRY_POINT_GROUP, fill_all
from ce.step import ENTRY_POINT_GROUP as STEP_ENTRY_POINT_GROUP, step_types
from tests.support import ROOT

NOT_FOR_HASH = ("flask", "gunicorn", "smbprotocol", "spnego", "cryptography", "guestfs", "sh")
NOT_FOR_HELP = (*NOT_FOR_HASH, "pydantic", "ce.step", "ce.changes", "ce.document")
PROBE = """
import json, sys
{before}
from ce.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


def run_probe(argv: list[str], before: str = "") -> tuple[set[str], str]:
    """(the modules a fresh `ce ARGV` imported -- packages and their modules both named, the output before)."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(before=before, argv=argv)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, check=True)
    *printed, last = done.stdout.splitlines()
    names = json.loads(last)
    return {*names, *(name.split(".")[0] for name in names)}, "\n".join(printed)


def step_modules(loaded: set[str]) -> set[str]:
    return {name for name in loaded if name.startswith("steps.")}


def test_help_lists_every_step_command_and_imports_no_step():
    loaded, printed = run_probe(["--help"])
    commands = [kind.cli.command for kind in step_types().values() if kind.cli]
    assert all(f"\n    {command} " in printed or f"\n    {command}\n" in printed for command in commands), printed
    assert not step_modules(loaded) and not loaded & set(NOT_FOR_HELP), sorted(loaded & set(NOT_FOR_HELP))


def test_hash_imports_its_own_step_only(tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\x01" * 65536)
    for argv in (["hash", "--help"], ["hash", "-q", "--json", str(disk)]):
        loaded, printed = run_probe(argv)
        assert step_modules(loaded) == {"steps.hash"}, (argv, sorted(step_modules(loaded)))
        assert not loaded & set(NOT_FOR_HASH), (argv, sorted(loaded & set(NOT_FOR_HASH)))
    assert json.loads(printed)["facts"]["hashes"]["md5"] == hashlib.md5(disk.read_bytes()).hexdigest()  # it ran


def test_the_probe_sees_them_when_they_are_imported():
    """The checks above can fail: the same probe after one import of the SMB byte path, libguestfs and a step."""
    loaded, _ = run_probe(["--help"], before="import ce.smb.share, guestfs, steps.export")
    assert {"smbprotocol", "cryptography", "guestfs", "steps.export", "pydantic"} <= loaded


def test_the_command_index_is_the_registry_s():
    """steps.COMMANDS (what `ce --help` lists without importing a step) names the entry point's step commands, in
    its order, with their help, and loads the same step types."""
    registry = step_types()
    assert ENTRY_POINT_GROUP == STEP_ENTRY_POINT_GROUP
    assert [(command, doc) for command, (doc, _) in steps.COMMANDS.items()] == \
        [(kind.cli.command, kind.cli.help) for kind in registry.values() if kind.cli]
    for command, (_, load) in steps.COMMANDS.items():
        kind = load()
        assert kind.cli.command == command
        assert registry[kind.name].Params.model_json_schema() == kind.Params.model_json_schema()


def test_the_lazy_parser_is_the_whole_one():
    """Every command's help and the completion script are the same from the parser that finds the step commands in
    the index as from one given every step type."""
    lazy, eager = fill_all(build_parser()), fill_all(build_parser(step_types()))
    for path, parser in completion.command_paths(eager):
        assert dict(completion.command_paths(lazy))[path].format_help() == parser.format_help(), path
    assert completion.bash_script(lazy) == completion.bash_script(eager)
