"""Progress of data work (issue 17): the bar's bytes, rate and time left; the rate over a sliding window; the byte
figures a real `ce hash` / `ce convert` writes as machine-readable lines; and the same figures in the server's step
document."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ce.cli.output import ConsoleContext, bar
from ce.client import ProgressBar
from ce.server import api, openapi
from ce.server.stepdocs import step_doc
from ce.server.store import Store
from ce.server.supervisor import Supervisor
from ce.server.worker import Reporter, WorkerContext
from ce.step import PartContext, step_types
from ce.throughput import Throughput
from tests.support.steps import Recorder

CE = Path(sys.executable).parent / "ce"
MiB, GiB = 1 << 20, 1 << 30


def test_the_bar_shows_bytes_done_of_the_total_the_rate_and_the_time_left():
    line = bar(42.0, 8.2, "exporting", (int(1.7 * GiB), 4 * GiB), 210 * MiB)
    assert line == "[############..................]  42.0%  1.7 GiB / 4 GiB  210 MiB/s  0:08, ~0:11 left  exporting"
    assert bar(42.0, 8.2, "exporting", (int(1.7 * GiB), 4 * GiB)) == \
        "[############..................]  42.0%  1.7 GiB / 4 GiB  0:08, ~0:11 left  exporting"
    assert bar(30.0, 12, "inspecting the image") == \
        "[#########.....................]  30.0%  0:12, ~0:28 left  inspecting the image"


def test_the_reference_clients_bar_shows_the_step_documents_bytes():
    shown = ProgressBar(Terminal())
    step = {"id": "s", "progressPercent": 30.0, "status": "running", "message": "uploading"}
    shown({**step, "bytesDone": 3 * MiB, "bytesTotal": 10 * MiB, "bytesPerSecond": 2 * MiB})
    shown(step)
    first, second = shown.stream.getvalue().split("\r")[1:]
    assert " 30.0% 3 MiB / 10 MiB  2 MiB/s  running   uploading" in first
    assert " 30.0% running   uploading" in second


def test_the_rate_is_over_the_last_seconds_so_a_stall_lowers_it():
    meter = Throughput(window=5)
    assert meter.rate(0) is None
    for second in range(11):                         # 10 s at 100 MiB/s
        meter.add(second, second * 100 * MiB, "copying")
    assert meter.rate(10) == 100 * MiB
    for second in range(11, 16):                     # then 5 s at 10 MiB/s: the start's pace is forgotten
        meter.add(second, 1000 * MiB + (second - 10) * 10 * MiB, "copying")
    assert meter.rate(15) == 10 * MiB
    meter.add(17, 1050 * MiB, "copying")             # nothing moved for 2 s: 30 MiB in the last 5 s
    assert meter.rate(17) == 6 * MiB
    assert meter.rate(25) == 0                       # a stall with no reports at all, read by a redraw
    meter.add(26, 5 * MiB, "uploading")              # a new phase starts over
    assert meter.rate(26) is None


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_stall_shows_in_the_redrawn_bar_cut_to_its_width(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setenv("COLUMNS", "80")
    ctx = ConsoleContext()
    ctx.throughput = Throughput(window=1)                       # the rate over the last second
    ctx.progress(10, "uploading", (0, 100 * MiB))
    time.sleep(0.2)                                             # past the bar's redraw throttle
    ctx.progress(50, "uploading", (50 * MiB, 100 * MiB))       # then nothing more: the transfer stalls
    deadline = time.monotonic() + 30
    while "0 B/s" not in sys.stderr.getvalue() and time.monotonic() < deadline:
        time.sleep(0.2)
    ctx.done()
    drawn = [line for line in sys.stderr.getvalue().split("\r") if "50 MiB / 100 MiB" in line]
    assert "MiB/s" in drawn[0]                                  # moving when it reported
    assert "50 MiB / 100 MiB  0 B/s" in drawn[-1] and drawn[-1].rstrip().endswith("left  uploading")
    assert {len(line) for line in drawn} == {79}                # narrower than the terminal: redrawn in place


def test_a_band_reports_bytes_counted_or_as_its_share_of_a_size_and_a_part_keeps_them():
    ctx = Recorder()
    ctx.band(0, 50, "hashing", unit="bytes")(3 * MiB, 4 * MiB)
    ctx.band(50, 100, "converting", size=8 * MiB)(25)         # qemu-img's percent of an 8 MiB disk
    PartContext(ctx, 50, 100).band(0, 100, "uploading", unit="bytes")(MiB, 2 * MiB)
    ctx.band(0, 100, "inspecting")(40)
    assert ctx.reports == [(37.5, "hashing"), (62.5, "converting"), (75.0, "uploading"), (40.0, "inspecting")]
    assert ctx.transfers == [("hashing", 3 * MiB, 4 * MiB), ("converting", 2 * MiB, 8 * MiB),
                             ("uploading", MiB, 2 * MiB)]


def machine_lines(*args: str) -> tuple[list[dict], list[str]]:
    done = subprocess.run([str(CE), *args, "--machine-readable"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")], [line for line in lines if line[:1] == "["]


def assert_bytes_climb_to(events: list[dict], message: str, size: int) -> None:
    moved = [e for e in events if e["message"] == message]
    done = [e["bytesDone"] for e in moved]
    assert len(done) > 2 and done == sorted(done) and done[-1] == size, done
    assert {e["bytesTotal"] for e in moved} == {size}
    assert all(e["bytesPerSecond"] > 0 for e in moved[1:])        # a rate once two reports are in
    assert not any("bytesDone" in e for e in events if e["message"] == "done")


@pytest.mark.parametrize("fmt", ["vhdx", "qcow2"])       # ce's own fill, and qemu-img convert -p
def test_ce_hash_and_convert_write_bytes_done_up_to_the_real_size(tmp_path, fmt):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(24 * MiB) + bytes(8 * MiB) + os.urandom(8 * MiB))
    if fmt == "vhdx":
        events, phases = machine_lines("hash", str(disk))
        assert_bytes_climb_to(events, "hashing the content", 40 * MiB)
        assert phases[0].endswith("] hashing the content (40 MiB)") and len(phases) == 2
    events, phases = machine_lines("convert", str(disk), str(tmp_path / f"out.{fmt}"), "-O", fmt)
    assert_bytes_climb_to(events, "converting", 40 * MiB)
    assert [p.split("] ", 1)[1] for p in phases] == ["converting (40 MiB)", "done"]


def test_the_step_document_carries_the_byte_figures_and_the_api_documents_them(tmp_path):
    read_fd, write_fd = os.pipe()
    ctx = WorkerContext("t-bytes", Reporter(write_fd))
    ctx.progress(10, "uploading", (MiB, 10 * MiB))
    time.sleep(0.3)                                  # past the throttle: the next report is sent, with a rate
    ctx.progress(30, "uploading", (3 * MiB, 10 * MiB))
    ctx.progress(100, "done")
    ctx.reporter._out.close()
    with os.fdopen(read_fd) as lines:
        events = [json.loads(line) for line in lines]
    assert [set(e) - {"event", "percent", "message"} for e in events] == [
        {"bytesDone", "bytesTotal"}, {"bytesDone", "bytesTotal", "bytesPerSecond"}, set()]
    store = Store(tmp_path / "ce.sqlite")
    store.insert({"id": "t-bytes", "type": "hash", "params": {}, "params_hmac": "", "disks": [], "status": "running",
                  "timeout": 60, "created": time.time()})
    supervisor, step = SimpleNamespace(store=store), SimpleNamespace(id="t-bytes")
    Supervisor._on_event(supervisor, step, events[1])
    doc = api.Step.model_validate(step_doc(store.get("t-bytes")))
    assert (doc.progressPercent, doc.bytesDone, doc.bytesTotal) == (30, 3 * MiB, 10 * MiB)
    assert doc.bytesPerSecond == events[1]["bytesPerSecond"] > 0
    Supervisor._on_event(supervisor, step, events[2])
    assert "bytesDone" not in step_doc(store.get("t-bytes"))
    schema = openapi.document(step_types())["components"]["schemas"]["Step"]["properties"]
    assert {"bytesDone", "bytesTotal", "bytesPerSecond"} <= set(schema)
