"""The CLI's start-up (issue 18, item 3): `ce --help` builds every step command from the step types without the
libraries only a running step needs -- the server (flask, gunicorn), the SMB byte path (smbprotocol and its
cryptography), libguestfs, sh. Checked in a fresh interpreter by what is in sys.modules, not by timing
(bench/hashing.py measures the time)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.support import ROOT

NOT_FOR_HELP = ("flask", "gunicorn", "smbprotocol", "spnego", "cryptography", "guestfs", "sh")
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


def modules_after(argv: list[str], before: str = "") -> set[str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(before=before, argv=argv)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, check=True)
    return {name.split(".")[0] for name in json.loads(done.stdout.splitlines()[-1])}


def test_help_imports_none_of_what_only_a_running_step_needs():
    for argv in (["--help"], ["hash", "--help"]):
        loaded = modules_after(argv)
        assert "pydantic" in loaded and "steps" in loaded                   # it did build the step commands
        assert not loaded & set(NOT_FOR_HELP), (argv, sorted(loaded & set(NOT_FOR_HELP)))


def test_the_probe_sees_them_when_they_are_imported():
    """The check above can fail: the same probe after one import of the SMB byte path and of libguestfs."""
    loaded = modules_after(["--help"], before="import ce.smb.share, guestfs")
    assert {"smbprotocol", "cryptography", "guestfs"} <= loaded
