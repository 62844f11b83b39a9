"""Sequences (ce.step.sequence): a step made of real steps -- here hash, then convert of the same disk -- with one
plan / result holding each part's, one progress scale, one cancel, and a failure that keeps the parts already done.
"""
from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from pydantic import Field

from ce.changes import Plan, Result
from ce.errors import Canceled, StepFailed
from ce.step import Part, StepContext, StepParams, execute, sequence, step_types
from tests.support.steps import Recorder

TYPES = step_types()


class Params(StepParams):
    disk: str
    md5: str = Field(pattern=r"^[0-9a-f]{32}$")
    output: str


CHECKED_CONVERT = sequence(
    "test-checked-convert", "TEST ONLY: check a disk's md5, then convert it to qcow2", Params,
    (Part(TYPES["hash"], lambda p, done: {"disk": p.disk, "algorithms": ["md5"], "expected": {"md5": p.md5}},
          weight=1),
     Part(TYPES["convert"], lambda p, done: {"source": p.disk, "output": p.output, "outputFormat": "qcow2",
                                            # a later part sees the results of the earlier ones
                                            "sourceFormat": done["hash"].facts["format"]}, weight=3)))


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.raw"
    data = bytes(range(256)) * 4096 * 16            # 16 MiB, not all zeros
    path.write_bytes(data)
    return path, hashlib.md5(data).hexdigest()


def run(params: dict, ctx: StepContext | None = None):
    return execute(CHECKED_CONVERT, CHECKED_CONVERT.parse(params), ctx or Recorder())


def test_dry_run_plans_every_part_and_writes_nothing(disk, tmp_path):
    path, md5 = disk
    plan = run({"disk": str(path), "md5": md5, "output": str(tmp_path / "out.qcow2"), "dryRun": True})
    assert isinstance(plan, Plan) and plan.step == "test-checked-convert" and plan.changes == []
    assert [p.step for p in plan.parts] == ["hash", "convert"]
    assert [c.kind for c in plan.parts[0].changes] == ["disk_hash"]
    assert [c.kind for c in plan.parts[1].changes] == ["disk_write"]
    assert not (tmp_path / "out.qcow2").exists()
    json.loads(plan.model_dump_json())


def test_run_holds_each_part_result_on_one_progress_scale(disk, tmp_path):
    path, md5 = disk
    out = tmp_path / "out.qcow2"
    ctx = Recorder()
    result = run({"disk": str(path), "md5": md5, "output": str(out)}, ctx)
    assert isinstance(result, Result) and result.error is None and result.seconds > 0
    assert [p.step for p in result.parts] == ["hash", "convert"]
    assert all(0 < p.seconds <= result.seconds for p in result.parts)
    assert result.parts[0].facts["hashes"] == {"md5": md5}
    assert {o.status for p in result.parts for o in p.outcomes} == {"applied"}
    converted = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(path), str(out)])
    assert converted.returncode == 0
    percents = [p for p, _ in ctx.reports]
    assert percents == sorted(percents) and percents[-1] == 100       # one scale, never backwards
    hashing = [p for p, m in ctx.reports if m.startswith("hashing")]
    converting = [p for p, m in ctx.reports if m.startswith("converting")]
    assert hashing and max(hashing) <= 25 <= min(converting)           # weights 1 : 3


def test_a_failing_part_keeps_the_results_of_the_parts_before_it(disk, tmp_path):
    path, md5 = disk
    out = tmp_path / "out.qcow2"
    out.write_bytes(b"already here")                                  # convert refuses to replace it
    with pytest.raises(StepFailed) as failed:
        run({"disk": str(path), "md5": md5, "output": str(out)})
    result = Result.model_validate(failed.value.result)
    assert failed.value.code == "disk_exists" and result.error["code"] == "disk_exists"
    assert [p.step for p in result.parts] == ["hash", "convert"]
    assert result.parts[0].error is None and result.parts[0].facts["hashes"] == {"md5": md5}
    assert result.parts[1].error["code"] == "disk_exists" and out.read_bytes() == b"already here"


def test_a_failing_first_part_stops_the_sequence(disk, tmp_path):
    path, _ = disk
    with pytest.raises(StepFailed) as failed:
        run({"disk": str(path), "md5": "0" * 32, "output": str(tmp_path / "out.qcow2")})
    result = Result.model_validate(failed.value.result)
    assert failed.value.code == "hash_mismatch" and [p.step for p in result.parts] == ["hash"]
    assert not (tmp_path / "out.qcow2").exists()


def test_one_cancel_stops_whichever_part_runs(disk, tmp_path):
    path, md5 = disk
    out = tmp_path / "out.qcow2"
    ctx = Recorder(cancel_when=lambda percent, message: message.startswith("converting"))
    with pytest.raises(Canceled):
        run({"disk": str(path), "md5": md5, "output": str(out)}, ctx)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
