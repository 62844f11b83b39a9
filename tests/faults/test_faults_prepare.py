"""Crash injection during prepare (every option: VDA, components, unjoin, platform): SIGKILL the worker (and with it the appliance) at many points of the apply.

A clean run is traced first (CE_FAULT_TRACE, ce/faults.py) to count its libguestfs calls; then, for each chosen
call of the apply phase, a fresh child of the sample is prepared with CE_FAULT_KILL_AT pointing at it. After
every kill: each hive opens with hivex *and* regipy and is logically either the original or the fully updated
hive; every file ce writes is absent, the old one, or complete -- never partial; no qemu survives. Then `ce run`
again completes, and the final image equals the clean run's.

`make test-faults` tries every second call of the apply phase (``--fault-points=all``, >= 50 points); `make test`
tries a few (``--fault-points=N``, default CE_FAULT_POINTS or 3), spread evenly.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from regipy.registry import RegistryHive

from ce import disks, registry
from ce.guest import Drive, Guest
from ce.plan import hive_path
from ce.registry import Hive
from tests.support.faults import DEPTH

pytestmark = pytest.mark.slow
CE = [sys.executable, "-m", "ce.cli"]
SAMPLE = "win2016-vda1912"
HIVES = ("SYSTEM", "SOFTWARE")
FB = r"C:\Windows\Setup\ce-firstboot"
JOB = {"provisioningType": "Mcs", "installMisa": True, "installMcsio": True, "domainUnjoin": True,
       "targetPlatform": "azure",
       "xdReconfigure": [{"ParameterName": "controllers", "ParameterValue": "ddc9.corp.example.com"},
                         {"ParameterName": "portnumber", "ParameterValue": "8080"}]}


def chosen_points(apply_calls: list[int]) -> list[int]:
    wanted = DEPTH.points                       # --fault-points (tests/support/faults.py)
    if DEPTH.every("points"):
        return apply_calls[::2]
    n = max(1, int(wanted))
    step = max(1, len(apply_calls) // n)
    return apply_calls[step // 2::step][:n]


def ce_run(job: Path, disk: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CE, "run", "--json", "--job", str(job), disk], capture_output=True, text=True,
                          timeout=1200, env={**os.environ, **(env or {})}, start_new_session=True)


def dump_hive(path: Path) -> dict:
    """Every key and value, without timestamps: equal dumps = logically the same hive."""
    out = {}
    with Hive.open(path) as hive:
        def walk(key: str):
            out[key] = {name: value.to_json() for name, value in hive.values(key).items()}
            for sub in hive.subkeys(key):
                walk(f"{key}\\{sub}" if key else sub)
        walk("")
    return out


def regipy_walk(path: Path) -> int:
    """Parse every key and value with an independent reader; returns the number of values seen."""
    return sum(len(list(k.values)) for k in RegistryHive(str(path)).recurse_subkeys(as_json=True))


def orphans(disk: str) -> list[int]:
    proc = subprocess.run(["pgrep", "-f", disk], capture_output=True, text=True)
    return [int(p) for p in proc.stdout.split()]


def image_state(guest: Guest, device: str, work: Path) -> dict:
    """Hive dumps (after both parsers read them) and the sha256 of every file under the first-boot folder."""
    root = guest.windows_root(device=device)
    guest.mount_windows(root, readonly=True)
    try:
        hives = {}
        for name in HIVES:
            local = registry.download_hive(guest, hive_path(guest, root, name), work)
            regipy_walk(local)
            hives[name] = dump_hive(local)
        base, files = guest.win_path(FB), {}
        if guest.g.is_dir(base):
            for rel in guest.g.find(base):
                if guest.g.is_file(base + rel):
                    files[rel] = guest.g.checksum("sha256", base + rel)
        fs = next(f for f in guest.filesystems(device) if f.device == root.device)
        return {"hives": hives, "files": files, "ntfs_state": fs.ntfs_state}
    finally:
        guest.g.umount_all()


def states(paths: list[str], work: Path) -> list[dict]:
    """One appliance reads every image (read-only)."""
    with Guest([Drive(p, "qcow2", readonly=True) for p in paths]) as guest:
        return [image_state(guest, dev, work) for dev in guest.devices()]


@pytest.fixture(scope="module")
def clean(samples, tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    sample = samples[SAMPLE]
    store = work / "store"
    store.mkdir()
    (store / "VDAServerSetup_1912.exe").write_bytes(b"MZ stand-in installer " * 50000)
    from ce.payloads import write_manifest
    write_manifest(store, [{"component": "vda-server-installer", "version": "1912.0.9000.11",
                            "file": "VDAServerSetup_1912.exe"}])
    job = work / "job.json"
    job.write_text(json.dumps({"type": "prepare", "params": {**JOB, "payloads": str(store)}}))
    original = disks.create_child(str(sample.path), str(work / "original.qcow2"), parent_fmt=sample.format).path
    done = disks.create_child(str(sample.path), str(work / "clean.qcow2"), parent_fmt=sample.format).path
    trace = work / "trace"
    proc = ce_run(job, done, {"CE_FAULT_TRACE": str(trace)})
    assert proc.returncode == 0, proc.stderr
    lines = trace.read_text().splitlines()
    assert lines.count("# launch") == 1             # a whole prepare with every option is one appliance launch
    start = lines.index("# apply")
    apply_calls = [int(line.split()[0]) for line in lines[start + 1:]]
    before, after = states([original, done], work)
    return {"work": work, "job": job, "sample": sample, "apply_calls": apply_calls, "before": before,
            "after": after}


def test_kill_at_many_points_leaves_old_or_new_and_a_rerun_finishes(clean, capsys):
    work, job, sample = clean["work"], clean["job"], clean["sample"]
    points = chosen_points(clean["apply_calls"])
    children, problems, survivors, left_by_kills = {}, [], 0, set()
    scratch = work / "scratch"                  # the runs' own: what a killed prepare leaves there is counted
    scratch.mkdir(exist_ok=True)
    for point in points:
        child = disks.create_child(str(sample.path), str(work / f"kill-{point}.qcow2"), parent_fmt=sample.format).path
        proc = ce_run(job, child, {"CE_FAULT_KILL_AT": str(point), "CE_SCRATCH": str(scratch)})
        left_by_kills |= {p.name for p in scratch.iterdir()}
        assert proc.returncode == -9, f"kill at call {point} did not happen: {proc.returncode} {proc.stderr[-500:]}"
        left = orphans(child)
        survivors += len(left)
        for pid in left:
            os.kill(pid, 9)
        children[point] = child
    after_kill = dict(zip(points, states(list(children.values()), work)))
    before, after = clean["before"], clean["after"]
    final_files = after["files"]
    for point, state in after_kill.items():
        for name in HIVES:
            if state["hives"][name] not in (before["hives"][name], after["hives"][name]):
                problems.append(f"call {point}: {name} is neither the original nor the updated hive")
        for rel, digest in state["files"].items():
            if rel.endswith(".ce-new"):
                continue                                  # a staged copy, never at a final name
            if final_files.get(rel) != digest:
                problems.append(f"call {point}: {rel} is at its final name with unexpected content")
    reruns = {}
    for point, child in children.items():
        proc = ce_run(job, child, {"CE_SCRATCH": str(scratch)})
        reruns[point] = proc.returncode
        if proc.returncode != 0:
            problems.append(f"call {point}: the re-run failed: {proc.stdout[-300:]} {proc.stderr[-300:]}")
    finals = dict(zip(points, states(list(children.values()), work)))
    for point, state in finals.items():
        if state["hives"] != after["hives"]:
            problems.append(f"call {point}: after the re-run the hives differ from a clean run's")
        if state["files"] != final_files:
            extra = sorted(set(state["files"].items()) ^ set(final_files.items()))
            problems.append(f"call {point}: after the re-run the files differ from a clean run's: {extra}")
    # The re-runs removed the hive copies the killed runs had left in scratch, and their own.
    leftovers = sorted(p.name for p in scratch.iterdir())
    if leftovers:
        problems.append(f"scratch still holds {leftovers} after the re-runs")
    with capsys.disabled():
        print(f"\ncrash injection: {len(points)} kill points over {len(clean['apply_calls'])} apply calls; "
              f"{len(problems)} problem(s); {survivors} qemu process(es) outlived the worker; the kills left "
              f"{len(left_by_kills)} scratch dir(s), the re-runs removed them")
    assert problems == []
