"""Resuming an export / publish / convert to a share that an earlier attempt left as NAME.partial (ce.smb.resume),
against a real smbd.

An attempt is interrupted at half of the disk's data, the way it happens: the ``ce`` process group SIGKILLed, or
the connection dropped (the smbd process serving it SIGKILLed). The next attempt must send at most 55 % of the
data, and its file must be the file an uninterrupted export writes: byte for byte, except the identifiers
qemu-img makes fresh for every container (VHDX file / data write GUIDs and their header checksums, the virtual
disk id), which two uninterrupted exports do not share either. Anything that does not check out -- a partial of
another source, an extent corrupted on the share, a source changed between its first and last MiB -- is rewritten,
and ``resume: false`` starts over. A convert to a share is interrupted on both its paths: a raw disk streamed into
a VHDX (the export's file), and a qcow2 file converted in scratch space and uploaded, which qemu-img writes the same
every time, so the resumed file is compared whole (md5) with an uninterrupted convert's; from a source on the share too.

``pytest tests/smb/test_resume.py -s -k killed`` prints the figures the README quotes; with
``CE_RESUME_DELAY_MS=15`` the `ce export` and `ce convert` runs it times (uninterrupted and resumed) go through
bench/wanproxy.py with that delay each way (a 30 ms round trip).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.wanproxy import DelayProxy
from ce import disks, staging
from ce.disks.headers import (VHDX_HEADERS, VHDX_METADATA_REGION, VHDX_PAGE83_DATA, VHDX_REGION_TABLE,
                              vhdx_metadata_items, vhdx_regions)
from ce.errors import CeError, SmbUnreachable
from ce.smb.resume import ResumeKey, merged, minus
from ce.step import StepContext, execute, step_types
from tests.support.files import write_extents
from tests.support.server_harness import wait_until
from tests.support.smbserver import PASSWORD, USER, fresh_folder

MiB = 1 << 20
STEPS = step_types()


@dataclass(frozen=True)
class Shape:
    """A raw disk of ``virtual`` bytes with random data in ``regions`` and holes between them."""
    virtual: int
    regions: tuple[tuple[int, int], ...]
    half_at: int                        # the offset in the disk where half of its data is behind

    @property
    def data(self) -> int:
        return sum(length for _, length in self.regions)


# The figures and the 55 % rule on 256 MiB of data (the container's 8 MiB of metadata is 3 % of it); the other
# cases on a smaller disk, to keep the module fast.
LARGE = Shape(384 * MiB, ((0, 96 * MiB), (128 * MiB, 64 * MiB), (224 * MiB, 96 * MiB)), 160 * MiB)
SMALL = Shape(96 * MiB, ((0, 24 * MiB), (32 * MiB, 16 * MiB), (64 * MiB, 24 * MiB)), 40 * MiB)
DATA = LARGE.data
CE_ENV = {**os.environ, "CE_SMB_USER": USER, "CE_SMB_PASSWORD": PASSWORD}


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_extents(tmp_path_factory.mktemp("resume") / "golden.raw", LARGE.virtual, LARGE.regions)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_extents(tmp_path_factory.mktemp("resume") / "small.raw", SMALL.virtual, SMALL.regions)


@pytest.fixture(scope="module")
def port(samba):
    """The port the timed `ce export` runs reach smbd on: its own, or a delay proxy's (CE_RESUME_DELAY_MS)."""
    delay = float(os.environ.get("CE_RESUME_DELAY_MS", "0"))
    if not delay:
        yield samba.port
        return
    with DelayProxy((samba.host, samba.port), delay / 1000) as proxy:
        yield proxy.port


@pytest.fixture(scope="module")
def reference(samba, port, source) -> dict:
    """An uninterrupted `ce export` of ``source`` (timed, process included), that resumed exports are compared with."""
    folder = samba.share_dir("share") / "reference"
    folder.mkdir()
    facts, seconds = timed(ce_export(samba, folder, source, port), CE_ENV)
    return {**checked_file(folder / "golden.vhdx", source), "facts": facts, "seconds": seconds}


@pytest.fixture(scope="module")
def convert_reference(samba, port, source, tmp_path_factory) -> dict:
    """An uninterrupted `ce convert` of ``source`` to a qcow2 file on the share (timed, process included): converted
    in scratch space, then uploaded. qemu-img writes a qcow2 file the same way every time, so it is compared whole."""
    folder = samba.share_dir("share") / "convert-reference"
    folder.mkdir()
    argv = ce_convert(samba, folder, source, port, "qcow2")
    facts, seconds = timed(argv, convert_env(tmp_path_factory.mktemp("scratch")))
    assert disks.compare(source, folder / "golden.qcow2", fmt_b="qcow2"), "qemu-img reads other contents"
    return {"md5": md5(folder / "golden.qcow2"), "facts": facts, "seconds": seconds}


@pytest.fixture(scope="module")
def small_reference(samba, small) -> dict:
    folder = samba.share_dir("share") / "small-reference"
    folder.mkdir()
    facts = run("export", export_params(samba, folder, small))
    return {**checked_file(folder / "golden.vhdx", small), "facts": facts}


def checked_file(path: Path, source: Path) -> dict:
    """A reference export, read by qemu-img: its size and its sha256 outside the ids (``without_ids``)."""
    assert disks.compare(source, path, fmt_b="vhdx"), "qemu-img reads other contents"
    checked = subprocess.run(["qemu-img", "check", "-f", "vhdx", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return {"path": path, "size": path.stat().st_size, "digest": without_ids(path)}


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "scratch"
    path.mkdir()
    monkeypatch.setenv(staging.SCRATCH_ENV, str(path))
    return path


def ce_export(samba, folder: Path, disk: Path, port: int | None = None) -> list[str]:
    url = f"smb://{samba.host}:{port or samba.port}/share/{folder.name}"
    return [sys.executable, "-m", "ce.cli", "export", str(disk), url, "--name", "golden", "--json"]


def ce_convert(samba, folder: Path, disk: Path, port: int | None = None, fmt: str = "vhdx") -> list[str]:
    url = f"smb://{samba.host}:{port or samba.port}/share/{folder.name}/golden.{fmt}"
    return [sys.executable, "-m", "ce.cli", "convert", str(disk), url, "-O", fmt, "--json"]


def convert_env(scratch: Path) -> dict:
    return {**CE_ENV, staging.SCRATCH_ENV: str(scratch)}


def convert_params(samba, folder: Path, disk: Path, **extra) -> dict:
    return {"source": str(disk), "outputStorageLocation": samba.location(folder=folder.name),
            "outputImageFilename": "golden.vhdx", "outputFormat": "vhdx", **extra}


def timed(argv: list[str], env: dict) -> tuple[dict, float]:
    """Run a `ce ... --json` command: its facts, and its seconds (process start included)."""
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["facts"], seconds


def killed_at_half(argv: list[str], env: dict, partial: Path) -> int:
    """Start a `ce` command and SIGKILL its process group once ``partial`` holds half of the data; returns what the
    share holds of it then."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    wait_until(lambda: proc.poll() is not None or allocated(partial) >= DATA // 2, 120, "half of the data on the share",
               0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    there = allocated(partial)
    assert DATA // 2 <= there < DATA, f"killed at {there} of {DATA} bytes"
    return there


def md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def figure(what: str, there: int, reference: dict, facts: dict, seconds: float) -> str:
    """The line the README quotes: what the uninterrupted and the resumed run sent, and their seconds."""
    full, delay = reference["facts"], os.environ.get("CE_RESUME_DELAY_MS", "0")
    return (f"\nresume after SIGKILL at {there / DATA:.0%} of {DATA // MiB} MiB of data ({LARGE.virtual // MiB} MiB "
            f"disk -> {what}, process start included, {delay} ms each way): uninterrupted sent "
            f"{full['bytesSent'] / MiB:.0f} MiB in {reference['seconds']:.1f} s; the resumed one sent "
            f"{facts['bytesSent'] / MiB:.0f} MiB ({facts['bytesSent'] / DATA:.0%} of the data), reused "
            f"{facts['bytesReused'] / MiB:.0f} MiB read back over the share, in {seconds:.1f} s")


def export_params(samba, folder: Path, disk: Path, **extra) -> dict:
    return {"disk": str(disk), "outputStorageLocation": samba.location(folder=folder.name), "SmbDiskName": "golden",
            **extra}


PARAMS = {"export": export_params, "convert": convert_params}          # a raw disk streamed into a VHDX
COMMANDS = {"export": ce_export, "convert": ce_convert}


def run(step: str, params: dict, ctx: StepContext | None = None, dry_run: bool = False) -> dict:
    kind = STEPS[step]
    document = execute(kind, kind.parse({**params, "dryRun": dry_run}), ctx or StepContext())
    return {**json.loads(document.model_dump_json())["facts"], "lines": kind.describe(document)}


def smbd_children(samba) -> set[int]:
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == samba.proc.pid:
                found.add(int(pid))
        except (OSError, IndexError, ValueError):
            pass
    return found


class DropConnection(StepContext):
    """Kills the smbd process serving the step's upload once the stream passes ``offset`` of the source: the
    connection drops as a network failure drops it, and the step cannot clean anything up."""

    def __init__(self, samba, shape: Shape):
        super().__init__()
        self.samba, self.percent = samba, 100 * shape.half_at / shape.virtual
        self.others = smbd_children(samba)              # smbd's own helpers, and connections not of this step
        self.dropped: list[int] = []

    def progress(self, percent: float, message: str = "", transferred=None) -> None:
        if message.startswith("streaming") and percent >= self.percent:
            self.drop()

    def drop(self) -> None:
        if not self.dropped:
            self.dropped = sorted(smbd_children(self.samba) - self.others)
            for pid in self.dropped:
                os.kill(pid, signal.SIGKILL)


class DropWhenHalfThere(DropConnection):
    """Drops the connection once the partial file holds half of the data, whatever the step is doing (a convert
    that uploads a scratch file reports "uploading", not "streaming")."""

    def __init__(self, samba, shape: Shape, partial: Path):
        super().__init__(samba, shape)
        self.partial, self.half = partial, shape.data // 2

    def progress(self, percent: float, message: str = "", transferred=None) -> None:
        if allocated(self.partial) >= self.half:
            self.drop()


def interrupted(samba, step: str, params: dict, folder: Path, shape: Shape, name: str = "golden.vhdx",
                ctx: DropConnection | None = None) -> int:
    """Run ``step`` until half of the data is sent and drop its connection; returns the partial's data bytes."""
    ctx = ctx or DropConnection(samba, shape)
    with pytest.raises(SmbUnreachable):
        run(step, params, ctx)
    assert ctx.dropped, "the stream never reached the drop point"
    assert sorted(os.listdir(folder)) == [f"{name}.partial", f"{name}.partial.ce-resume"]
    return allocated(folder / f"{name}.partial")


def allocated(path: Path) -> int:
    """What the share holds of a file (smbd writes in parallel: its size can run ahead of its data)."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def without_ids(path: Path) -> str:
    """sha256 of a VHDX with what qemu-img makes fresh for each container zeroed: each header's checksum,
    sequence number and file / data / log GUIDs, and the virtual disk id (Page 83 data)."""
    data = bytearray(path.read_bytes())
    for header in VHDX_HEADERS:
        data[header + 4:header + 64] = bytes(60)
    read_at = lambda offset, length: bytes(data[offset:offset + length])      # noqa: E731
    metadata, _ = vhdx_regions(read_at(VHDX_REGION_TABLE, 64 * 1024))[VHDX_METADATA_REGION]
    page83 = vhdx_metadata_items(read_at, metadata)[VHDX_PAGE83_DATA]
    data[page83:page83 + 16] = bytes(16)
    return hashlib.sha256(data).hexdigest()


def assert_same_file(output: Path, reference: dict) -> None:
    assert output.stat().st_size == reference["size"]
    assert without_ids(output) == reference["digest"]


# ---------------------------------------------------------------- interrupted, then resumed

def test_a_killed_export_resumes_and_sends_only_the_rest(samba, port, folder, source, reference, scratch):
    """`ce export` SIGKILLed (the whole process group) at half of the data; the same command again."""
    argv, env = ce_export(samba, folder, source, port), CE_ENV
    there = killed_at_half(argv, env, folder / "golden.vhdx.partial")
    facts, seconds = timed(argv, env)
    assert facts["bytesSent"] <= 0.55 * DATA
    assert facts["bytesReused"] >= DATA // 2 - 16 * MiB
    assert sorted(os.listdir(folder)) == ["golden.vhdx"]           # no partial, no record
    assert_same_file(folder / "golden.vhdx", reference)
    print(figure("dynamic VHDX, `ce export`", there, reference, facts, seconds))


def test_a_killed_convert_to_a_share_resumes_and_sends_only_the_rest(samba, port, folder, source, convert_reference,
                                                                     scratch):
    """`ce convert` to a qcow2 file on the share (converted in scratch space, then uploaded) SIGKILLed at half of the
    data; the same command again: the file is the uninterrupted convert's, byte for byte."""
    argv, env = ce_convert(samba, folder, source, port, "qcow2"), convert_env(scratch)
    there = killed_at_half(argv, env, folder / "golden.qcow2.partial")
    facts, seconds = timed(argv, env)
    assert facts["bytesSent"] <= 0.55 * DATA
    assert facts["bytesReused"] >= DATA // 2 - 16 * MiB
    assert sorted(os.listdir(folder)) == ["golden.qcow2"]
    assert md5(folder / "golden.qcow2") == convert_reference["md5"]
    print(figure("qcow2, `ce convert`", there, convert_reference, facts, seconds))


@pytest.mark.parametrize("step", ["publish", "convert"])
def test_a_dropped_upload_resumes_and_its_plan_says_so(step, samba, folder, source, reference, scratch):
    """A publish, and a convert that streams a raw disk into a VHDX as an export does: the same file once resumed."""
    params = {"disk": str(source), "outputStorageLocation": samba.location(folder=folder.name),
              "vDiskName": "golden"} if step == "publish" else convert_params(samba, folder, source)
    there = interrupted(samba, step, params, folder, LARGE)
    plan = run(step, params, dry_run=True)
    assert plan["resume"] == {"enabled": True, "earlier": "same_job", "partialAllocated": there,
                              "resumes": True}
    assert any(line.startswith("resumes golden.vhdx.partial") for line in plan["lines"]), plan["lines"]
    facts = run(step, params)
    assert facts["bytesSent"] <= 0.55 * DATA
    assert facts["bytesReused"] == facts["bytesChecked"] > 0            # nothing found wrong
    assert sorted(os.listdir(folder)) == ["golden.vhdx"]
    assert_same_file(folder / "golden.vhdx", reference)


@pytest.mark.parametrize("step", ["export", "convert"])
def test_a_partial_of_another_source_is_replaced(step, samba, folder, small, tmp_path, scratch):
    other = write_extents(tmp_path / "other.raw", SMALL.virtual, SMALL.regions)     # same shape, other bytes
    interrupted(samba, step, PARAMS[step](samba, folder, small), folder, SMALL)
    params = PARAMS[step](samba, folder, other)
    plan = run(step, params, dry_run=True)
    assert plan["resume"]["earlier"] == "other_job" and not plan["resume"]["resumes"]
    assert any(line.startswith("starts over: golden.vhdx.partial") for line in plan["lines"]), plan["lines"]
    facts = run(step, params)
    assert facts["bytesReused"] == facts["bytesChecked"] == 0
    assert facts["bytesSent"] >= SMALL.data
    assert sorted(os.listdir(folder)) == ["golden.vhdx"]
    assert disks.compare(other, folder / "golden.vhdx", fmt_b="vhdx")


def test_a_corrupted_extent_is_rewritten(samba, folder, small, small_reference, scratch):
    params = export_params(samba, folder, small)
    interrupted(samba, "export", params, folder, SMALL)
    with open(folder / "golden.vhdx.partial", "r+b") as partial:    # 1 MiB of the data there, changed on the server
        partial.seek(small_reference["size"] - SMALL.data + 8 * MiB)
        partial.write(os.urandom(MiB))
    facts = run("export", params)
    assert facts["bytesChecked"] - facts["bytesReused"] == MiB          # that MiB, and nothing else
    assert_same_file(folder / "golden.vhdx", small_reference)


def test_a_disk_changed_between_its_ends_is_caught_by_the_read_back(samba, folder, small, tmp_path, scratch):
    """The attached disk changed between the attempts but kept its size and its first and last MiB (the same key):
    what is there is compared, not trusted -- changed pieces are rewritten, and a chunk that is zero now, which is
    not written, is zeroed on the share. A fixed VHDX, where every block has its place: in a dynamic one a block
    that is zero now moves the blocks after it, which are then rewritten."""
    disk = tmp_path / "attached.raw"
    shutil.copyfile(small, disk)
    params = export_params(samba, folder, disk, SmbDiskSubformat="fixed")
    interrupted(samba, "export", params, folder, SMALL)
    with open(disk, "r+b") as f:                 # inside the half already on the share
        f.seek(2 * MiB)
        f.write(os.urandom(MiB))
        f.seek(8 * MiB)
        f.write(bytes(8 * MiB))
    assert run("export", params, dry_run=True)["resume"]["resumes"]
    facts = run("export", params)
    assert 0 < facts["bytesReused"] <= facts["bytesChecked"] - MiB
    assert disks.compare(disk, folder / "golden.vhdx", fmt_b="vhdx")
    checked = subprocess.run(["qemu-img", "check", "-f", "vhdx", str(folder / "golden.vhdx")], capture_output=True)
    assert checked.returncode == 0


@pytest.mark.parametrize("step", ["export", "convert"])
def test_resume_false_starts_over(step, samba, folder, small, small_reference, scratch):
    params = PARAMS[step](samba, folder, small)
    interrupted(samba, step, params, folder, SMALL)
    planned = subprocess.run([*COMMANDS[step](samba, folder, small), "--no-resume", "--dry-run"], env=CE_ENV,
                             capture_output=True, text=True, timeout=120)
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)["facts"]["resume"]
    assert plan["earlier"] == "same_job" and not plan["enabled"] and not plan["resumes"]
    lines = run(step, {**params, "resume": False}, dry_run=True)["lines"]
    assert any("starts over" in line and "resume is off" in line for line in lines), lines
    facts = run(step, {**params, "resume": False})
    assert facts["bytesReused"] == facts["bytesChecked"] == 0
    assert facts["bytesSent"] == small_reference["facts"]["bytesSent"]
    assert_same_file(folder / "golden.vhdx", small_reference)


def test_a_convert_from_a_share_to_a_share_resumes(samba, folder, small, scratch):
    """The source read in place on the share, converted to qcow2 in scratch space and uploaded: its key fingerprints
    the file on the share (read over it), so the upload resumes as a local source's does."""
    sources = fresh_folder(samba, "convert-sources")
    shutil.copyfile(small, sources / "small.raw")
    params = {"inputStorageLocation": samba.location(folder=sources.name), "inputImageFilename": "small.raw",
              **convert_params(samba, folder, small, outputImageFilename="golden.qcow2", outputFormat="qcow2")}
    del params["source"]
    partial = folder / "golden.qcow2.partial"
    there = interrupted(samba, "convert", params, folder, SMALL, "golden.qcow2",
                        DropWhenHalfThere(samba, SMALL, partial))
    plan = run("convert", params, dry_run=True)
    assert plan["resume"]["earlier"] == "same_job" and plan["resume"]["resumes"]
    facts = run("convert", params)
    assert SMALL.data // 2 - 8 * MiB <= facts["bytesReused"] <= there
    assert facts["bytesSent"] <= 0.55 * SMALL.data
    assert disks.compare(small, folder / "golden.qcow2", fmt_b="qcow2")


def test_a_cancel_still_leaves_nothing(samba, folder, small, scratch):
    """A failure ce can clean up after removes the partial file and its record, as before resuming existed."""
    class CancelHalfway(StepContext):
        def progress(self, percent: float, message: str = "", transferred=None) -> None:
            if message.startswith("streaming") and percent >= 100 * SMALL.half_at / SMALL.virtual:
                self.cancel_event.set()
    with pytest.raises(CeError) as stopped:
        run("export", export_params(samba, folder, small), CancelHalfway())
    assert stopped.value.code == "canceled"
    assert os.listdir(folder) == []


# ---------------------------------------------------------------- the pieces

def test_ranges_merge_and_subtract():
    assert merged([(10, 20), (0, 5), (5, 8), (15, 30), (40, 40)]) == [(0, 8), (10, 30)]
    assert minus([(0, 100)], [(10, 20), (30, 40)]) == [(0, 10), (20, 30), (40, 100)]
    assert minus([(0, 10), (20, 30)], [(5, 25)]) == [(0, 5), (25, 30)]
    assert minus([(0, 10)], []) == [(0, 10)] and minus([(0, 10)], [(0, 10)]) == []


def test_a_record_that_is_not_one_is_no_key():
    key = ResumeKey(job="j", source_size=1, source_format="raw", first="a", last="b", container="vhdx dynamic")
    assert ResumeKey.from_record(key.record()) == key
    assert b"golden" not in key.record()
    for junk in (b"", b"{", b"[]", b'{"ceResume": 2}', b'{"ceResume": 1, "job": "j"}', struct.pack("<Q", 7)):
        assert ResumeKey.from_record(junk) is None
