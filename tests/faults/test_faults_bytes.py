"""Interrupted byte moves: SIGKILL `ce convert`, `ce export`, `ce publish` and `ce reverse-image` -- the whole
process group, qemu-img included, as a CE VM losing power -- inside each phase of the move (a raw disk streamed into
its container on the share, conversion into scratch space, upload to the share, writing the attached disk; an
image on a share is read in place, so there is no download phase) at 10, 50 and 90 % of it, then prove:

* nothing at the final name (on the share, or the local output);
* the source byte-identical (sha256 of the local disk, or of the file on the share);
* after the cleanup path -- the same command again, which is what an operator or the connector does after a
  failed step -- the output is complete and equal in content to the source, and nothing else is left: no
  ``.partial`` on the share or next to a local output, no directory in the scratch space.

Plus a cancel through the server API while an export uploads to the real smbd: ``canceled``, nothing at the final
name, no partial file on the share, scratch space empty.

`make test-faults` kills every phase at 10, 50 and 90 % (``--fault-bytes=all``, or CE_FAULT_BYTES=all); `make test`
one kind of phase each at 50 % only.
Real parts only: the `ce` command in its own session, qemu-img, Samba's smbd on 127.0.0.1.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from ce import disks, staging
from ce.server.processes import group_members
from tests.support import ROOT
from tests.support.faults import DEPTH
from tests.support.files import write_extents
from tests.support.server_harness import ServerProcess, wait_until
from tests.support.smbserver import PASSWORD, USER, SambaServer

MiB = 1 << 20
CE = [sys.executable, "-m", "ce.cli"]
VIRTUAL = 256 * MiB
DATA_REGIONS = [(0, 64 * MiB), (96 * MiB, 64 * MiB), (192 * MiB, 32 * MiB)]   # 160 MiB of random data, holes between
POLL = 0.002
ALL = DEPTH.every("bytes")                 # --fault-bytes (tests/support/faults.py)
# make test: one kill per kind of phase (conversion, upload, download, writing the disk), at 50 %
SAMPLE = {("export", "stream"), ("export", "convert"), ("convert>smb", "upload"), ("convert<smb", "convert"),
          ("reverseImage", "write")}
SUMMARY: list[dict] = []


def kill_points(step: str, phases: list[str]) -> list:
    return [pytest.param(phase, fraction, id=f"{phase}-{fraction:.0%}".replace("%", "pct"))
            for phase in phases for fraction in ((0.1, 0.5, 0.9) if ALL else (0.5,))
            if ALL or (step, phase) in SAMPLE]


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A raw disk with 256 MiB of random data in three regions and holes between them."""
    return write_extents(tmp_path_factory.mktemp("source") / "golden.raw", VIRTUAL, DATA_REGIONS)


@pytest.fixture(scope="module")
def references(source, tmp_path_factory) -> dict[str, Path]:
    """The source as a dynamic VHDX and VHD (their sizes place the kill points of uploads; the VHDX is the
    input of downloads), and as a qcow2 (a source that an export must convert before uploading)."""
    out = tmp_path_factory.mktemp("refs")
    refs = {fmt: out / f"ref.{fmt}" for fmt in ("vhdx", "vhd", "qcow2")}
    for fmt, path in refs.items():
        disks.convert(source, path, fmt)
    return refs


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    if SUMMARY:
        print("\ninterrupted byte moves (SIGKILL of the process group):")
        print(f"{'step':<14}{'phase':<10}{'kill at':>8}{'was at':>8}  {'left after the kill':<76}  after the re-run")
        for row in SUMMARY:
            print(f"{row['step']:<14}{row['phase']:<10}{row['target']:>8.0%}{row['at']:>8.0%}  "
                  f"{' '.join(row['debris']) or '-':<76}  {' '.join(row['left']) or 'nothing'}")
        print(f"{len(SUMMARY)} interrupts, {sum(len(r['left']) for r in SUMMARY)} partial/temp files left")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def same_contents(a: Path, b: Path) -> bool:
    """qemu-img decodes both (an independent reader of what ce wrote)."""
    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)]).returncode == 0


def smb_url(samba: SambaServer, folder: str, name: str | None = None) -> str:
    return f"smb://{samba.host}:{samba.port}/share/{folder}" + (f"/{name}" if name else "")


# ---------------------------------------------------------------- watching and killing

def size_of(pattern: Callable[[], list[Path]]) -> int:
    sizes = []
    for path in pattern():
        try:
            sizes.append(path.stat().st_size)
        except FileNotFoundError:
            pass
    return max(sizes, default=0)


def allocated_of(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def start(argv: list[str], scratch: Path) -> subprocess.Popen:
    env = {**os.environ, "CE_SMB_USER": USER, "CE_SMB_PASSWORD": PASSWORD, staging.SCRATCH_ENV: str(scratch)}
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill_when(proc: subprocess.Popen, measure: Callable[[], int], threshold: int, total: int) -> float:
    """SIGKILL the process group once ``measure()`` reaches ``threshold``; returns the fraction reached."""
    while proc.poll() is None:
        done = measure()
        if done >= threshold:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            wait_until(lambda: not group_members(proc.pid), 30, "the killed group's processes to be gone", 0.05)
            return done / total
        time.sleep(POLL)
    out, err = proc.communicate()
    raise AssertionError(f"{proc.args[2:4]} ended (exit {proc.returncode}) before the kill point "
                         f"{threshold}/{total}: {err[-500:]}")


# ---------------------------------------------------------------- one interrupted move

@dataclass
class Move:
    step: str
    phase: str
    argv: list[str]
    measure: Callable[[], int]           # bytes done in the phase
    total: int                           # bytes the phase will have done at its end
    outputs: list[Path]                  # final names that must not exist after the kill
    sources: list[Path]                  # must stay byte-identical
    share_dir: Path
    scratch: Path
    local_dir: Path | None = None
    expect_on_share: set[str] = field(default_factory=set)     # besides the final output
    rerun_extra: list[str] = field(default_factory=list)


def interrupt_and_rerun(move: Move, fraction: float, check_output: Callable[[], None]) -> None:
    before = {p: sha256(p) for p in move.sources}
    at = kill_when(start(move.argv, move.scratch), move.measure, int(fraction * move.total), move.total)

    for output in move.outputs:
        assert not output.exists(), f"{output} exists after a kill at {at:.0%}"
    assert {p: sha256(p) for p in move.sources} == before, "the source changed"
    debris = leftovers(move)

    again = subprocess.run(move.argv + move.rerun_extra, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "CE_SMB_USER": USER, "CE_SMB_PASSWORD": PASSWORD,
                                staging.SCRATCH_ENV: str(move.scratch)})
    assert again.returncode == 0, again.stderr
    left = leftovers(move)
    SUMMARY.append({"step": move.step, "phase": move.phase, "target": fraction, "at": at, "debris": debris,
                    "left": left})
    assert not left, f"left after the re-run: {left}"
    assert set(os.listdir(move.share_dir)) == {o.name for o in move.outputs if o.parent == move.share_dir} \
        | move.expect_on_share
    assert {p: sha256(p) for p in move.sources} == before, "the source changed"
    check_output()


def leftovers(move: Move) -> list[str]:
    """Every partial or temporary file: on the share, in the scratch space, next to a local output."""
    found = [f"share:{n}" for n in os.listdir(move.share_dir) if n.endswith(".partial")]
    found += [f"scratch:{p.relative_to(move.scratch)}" if not p.is_dir() else f"scratch:{p.name}/"
              for p in sorted(move.scratch.rglob("*")) if not p.is_dir() or not any(p.iterdir())]
    if move.local_dir:
        found += [f"local:{n}" for n in os.listdir(move.local_dir) if n.endswith(".partial")]
    return found


@pytest.fixture
def place(samba, tmp_path):
    """A fresh folder on the share, a fresh scratch directory and a local directory for one move."""
    folder = f"f{uuid.uuid4().hex[:10]}"
    share_dir = samba.share_dir("share") / folder
    share_dir.mkdir()
    (tmp_path / "scratch").mkdir()
    (tmp_path / "local").mkdir()
    yield folder, share_dir, tmp_path / "scratch", tmp_path / "local"
    shutil.rmtree(share_dir, ignore_errors=True)


def partials(directory: Path, pattern: str) -> Callable[[], list[Path]]:
    return lambda: list(directory.glob(pattern))


# ---------------------------------------------------------------- export and publish

@pytest.mark.parametrize("step, phase, fraction", [(step, *p.values) for step in ("export", "publish")
                                                   for p in kill_points(step, ["stream", "convert", "upload"])])
def test_export_and_publish_killed(step, phase, fraction, source, references, samba, place):
    """A raw disk is streamed into the VHDX on the share; a qcow2 is converted in scratch space, then uploaded."""
    folder, share_dir, scratch, _ = place
    disk = source if phase == "stream" else references["qcow2"]
    if step == "export":
        argv = [*CE, "export", str(disk), smb_url(samba, folder), "--name", "golden"]
    else:
        argv = [*CE, "publish", str(disk), smb_url(samba, folder), "--vdisk", "golden"]
    final = share_dir / "golden.vhdx"
    expected = references["vhdx"].stat().st_size
    if phase == "convert":
        measure = lambda: size_of(partials(scratch, "ce-*/*.partial"))      # noqa: E731
    else:
        measure = lambda: size_of(partials(share_dir, "*.partial"))         # noqa: E731
    move = Move(step, phase, argv, measure, expected, [final], [disk], share_dir, scratch)
    interrupt_and_rerun(move, fraction, lambda: _equal(final, source))


def _equal(output: Path, source: Path) -> None:
    assert same_contents(output, source), f"{output} does not hold the source's contents"


# ---------------------------------------------------------------- convert

@pytest.mark.parametrize("phase, fraction", kill_points("convert>smb", ["stream", "convert", "upload"]))
def test_convert_to_share_killed(phase, fraction, source, references, samba, place):
    folder, share_dir, scratch, _ = place
    final = share_dir / "golden.vhd"
    disk = source if phase == "stream" else references["qcow2"]
    argv = [*CE, "convert", str(disk), smb_url(samba, folder, "golden.vhd"), "-O", "vhd"]
    watched = partials(scratch, "ce-*/*.partial") if phase == "convert" else partials(share_dir, "*.partial")
    move = Move("convert>smb", phase, argv, lambda: size_of(watched), references["vhd"].stat().st_size, [final],
                [disk], share_dir, scratch)
    interrupt_and_rerun(move, fraction, lambda: _equal(final, source))


def from_share(step: str, phase: str, argv: list[str], measure: Callable[[], int], outputs: list[Path], place,
               **extra) -> Move:
    """A move that reads the image in place on the share (no download phase): it writes the local side only."""
    folder, share_dir, scratch, local = place
    return Move(step, phase, argv, measure, sum(length for _, length in DATA_REGIONS), outputs,
                [share_dir / "input.vhdx"], share_dir, scratch, local_dir=local, expect_on_share={"input.vhdx"},
                **extra)


@pytest.mark.parametrize("phase, fraction", kill_points("convert<smb", ["convert"]))
def test_convert_from_share_killed(phase, fraction, source, references, samba, place):
    folder, share_dir, scratch, local = place
    shutil.copy(references["vhdx"], share_dir / "input.vhdx")
    output = local / "out.qcow2"
    argv = [*CE, "convert", smb_url(samba, folder, "input.vhdx"), str(output), "-O", "qcow2"]
    watched = partials(local, "*.partial")
    move = from_share("convert<smb", phase, argv, lambda: size_of(watched), [output], place)
    interrupt_and_rerun(move, fraction, lambda: _equal(output, source))


# ---------------------------------------------------------------- reverse image

@pytest.mark.parametrize("phase, fraction", kill_points("reverseImage", ["write"]))
def test_reverse_image_killed(phase, fraction, source, references, samba, place):
    """The image is read in place on the share (over a local NBD socket): writing the disk is the only phase."""
    folder, share_dir, scratch, local = place
    shutil.copy(references["vhdx"], share_dir / "input.vhdx")
    target = local / "attached.raw"
    target.touch()                                         # an empty thin disk; grows to the image's size
    argv = [*CE, "reverse-image", smb_url(samba, folder, "input.vhdx"), str(target)]
    # The attached disk has no partial name: killed while writing it holds a mix, so the re-run must overwrite.
    move = from_share("reverseImage", phase, argv, lambda: allocated_of(target), [], place,
                      rerun_extra=["--overwrite"])
    interrupt_and_rerun(move, fraction, lambda: _equal(target, source))


# ---------------------------------------------------------------- cancel through the server

def test_cancel_export_through_the_server(source, references, samba, place, tmp_path, pki):
    folder, share_dir, scratch, _ = place
    scratch_env = {staging.SCRATCH_ENV: str(scratch)}       # its own server: the step processes use this scratch
    with ServerProcess(tmp_path / "server", pki, disks=[str(source)], env=scratch_env) as server:
        api = server.session()
        step_id = f"cancel-{uuid.uuid4().hex[:8]}"
        params = {"disk": str(source), "SmbDiskName": "golden",
                  "outputStorageLocation": {"Location": samba.unc("share", folder), "port": samba.port,
                                            "credentials": {"username": USER, "password": PASSWORD}}}
        assert api.post(server.url + "/v1/steps", json={"id": step_id, "type": "export", "params": params},
                        timeout=30).status_code == 202
        before = sha256(source)
        total = references["vhdx"].stat().st_size
        wait_until(lambda: size_of(partials(share_dir, "*.partial")) >= total // 2, 120,
                   "the upload to reach half of the file", POLL)
        assert api.post(f"{server.url}/v1/steps/{step_id}/cancel", timeout=30).status_code == 202
        doc = wait_until(lambda: (d := api.get(f"{server.url}/v1/steps/{step_id}", timeout=30).json())["status"]
                         in ("succeeded", "failed", "canceled") and d, 60, "the step to end")
    assert doc["status"] == "canceled", doc
    assert doc["error"]["code"] == "canceled"
    assert os.listdir(share_dir) == []
    assert list(scratch.iterdir()) == []
    assert sha256(source) == before


# ---------------------------------------------------------------- the mechanism behind the scratch cleanup

def test_scratch_dirs_of_dead_processes_are_removed_by_the_next_step(tmp_path, monkeypatch):
    """What the kills above rely on, with a real process: its directory survives while it runs (a concurrent step
    keeps its files) and goes with the next scratch directory made after it died."""
    monkeypatch.setenv(staging.SCRATCH_ENV, str(tmp_path))
    code = "import sys, time; from ce import staging; print(staging.make_scratch_dir('export'), flush=True); " \
           "time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    theirs = Path(proc.stdout.readline().strip())
    (theirs / "disk.partial").write_bytes(b"x" * 4096)
    unrelated = tmp_path / "ce-export-notmine"
    unrelated.mkdir()
    with staging.scratch_dir("convert") as mine:
        assert theirs.is_dir(), "the directory of a running step was removed"
        assert mine.name.startswith(f"ce-convert-{os.getpid()}-")
    proc.kill()
    proc.wait()
    with staging.scratch_dir("convert"):
        assert not theirs.exists()
        assert unrelated.is_dir(), "a directory ce did not name was removed"
