"""A real Windows event log for the tests: ``TestLogX.evtx``, written by Windows (computer DESKTOP-PJOQLJS, channel
TestLogX, five records: event ids 1 information, 2 error, 3 warning, 5 and 65534), as shipped in the sdist of PyPI's
``dissect.eventlog`` 3.11 (tests/_data). Fetched once with pip into images/build/cache (ignored by git; CI reaches
PyPI) and checked against its sha256, so a changed upload fails loudly instead of testing something else."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "dissect.eventlog==3.11"
MEMBER = "dissect_eventlog-3.11/tests/_data/TestLogX.evtx"
SHA256 = "7bba434a7a3667433d5741e3fe323ac251c4cbde42d66ec548ef9fbf7a8c5735"
CACHE = Path(__file__).resolve().parents[2] / "images" / "build" / "cache" / "TestLogX.evtx"
ERROR_EVENT_ID = 2                 # its one Level 2 (error) record: "Test log message, error"
PROVIDER = "TestAppX"


def sample_evtx() -> Path:
    if CACHE.is_file() and hashlib.sha256(CACHE.read_bytes()).hexdigest() == SHA256:
        return CACHE
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        PACKAGE, "-d", tmp], check=True, capture_output=True, timeout=600)
        sdist = next(Path(tmp).glob("dissect_eventlog-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            data = tar.extractfile(MEMBER).read()
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise RuntimeError(f"{PACKAGE}'s {MEMBER} is not the file these tests were written for")
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    CACHE.write_bytes(data)
    return CACHE
