"""The command line as a user runs it (the installed `ce` script, real processes): --version, `ce steps`, -v / -q
anywhere on the line, the end-of-run summary, job files whose relative paths follow the job file, and a job whose
disk disagrees with the command line's (issue 17)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ce import __version__
from tests.support import ROOT

CE = Path(sys.executable).parent / "ce"
MiB = 1 << 20


def ce(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(CE), *args], capture_output=True, text=True, cwd=cwd or ROOT, timeout=120)


@pytest.fixture
def disk(tmp_path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(MiB))
    return path


def test_version_and_steps():
    assert ce("--version").stdout.strip() == f"ce {__version__}"
    listed = ce("steps")
    assert listed.returncode == 0 and "reverseImage" in listed.stdout and "ce reverse-image" in listed.stdout
    schemas = json.loads(ce("steps", "--json").stdout)
    assert "disk" in schemas["hash"]["paramsSchema"]["properties"] and schemas["hash"]["command"] == "hash"
    assert "job types:" in ce("run", "--help").stdout and "prepare" in ce("plan", "--help").stdout


def test_options_work_after_the_command_too(disk):
    for args in (("-q", "hash", str(disk)), ("hash", "-q", str(disk)), ("hash", str(disk), "-v")):
        done = ce(*args)
        assert done.returncode == 0, (args, done.stderr)
    assert ce("hash", "--no-such-option", str(disk)).returncode == 2


def test_every_run_ends_with_a_summary_line(disk, tmp_path):
    applied = ce("hash", str(disk))
    assert applied.stdout.splitlines()[-1].startswith("done in ") and "1 change applied (1 disk_hash)" in \
        applied.stdout.splitlines()[-1]
    planned = ce("hash", "--dry-run", str(disk))
    assert planned.stdout.splitlines()[-1] == "dry run: 1 change would be made (1 disk_hash); 0 warnings"


def test_a_job_files_relative_paths_follow_the_job_file(disk, tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "hash.json").write_text(json.dumps({"type": "hash", "params": {"disk": "../disk.raw"}}))
    elsewhere = tmp_path / "a" / "b"          # from here ../disk.raw would be a/disk.raw, which is not the disk
    elsewhere.mkdir(parents=True)
    done = ce("run", "--job", str(jobs / "hash.json"), str(disk), cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    refused = ce("run", "--job", str(jobs / "hash.json"), str(tmp_path / "other.raw"), cwd=elsewhere)
    assert refused.returncode == 1 and "[invalid_job]" in refused.stderr and "remove one of them" in refused.stderr
    assert not done.stdout.lstrip().startswith("{")          # people's lines unless --json


def test_relative_payloads_in_a_prepare_job_follow_the_job_file(tmp_path):
    from ce.cli.jobs import load_job
    from ce.step import step_types
    (tmp_path / "store").mkdir()
    job = tmp_path / "prepare.json"
    job.write_text(json.dumps({"type": "prepare", "params": {"payloads": "store", "provisioningType": "Mcs"}}))
    _, params = load_job(str(job), step_types(), disk=str(tmp_path / "disk.raw"))
    assert params.payloads == str(tmp_path / "store")


def test_the_examples_payloads_resolve_from_any_directory(tmp_path):
    from ce.cli.jobs import load_job
    from ce.step import step_types
    _, params = load_job(str(ROOT / "examples" / "prepare-mcs.json"), step_types(), disk=str(tmp_path / "d.raw"))
    assert Path(params.payloads) == ROOT / "examples" / "payloads" and Path(params.payloads).is_dir()


def test_progress_off_a_terminal_is_one_line_per_phase_and_machine_readable_on_request(disk):
    done = ce("hash", "--machine-readable", str(disk))
    phases = [line for line in done.stderr.splitlines() if line.startswith("[")]
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [p.split("] ", 1)[1] for p in phases] == ["hashing the content (1 MiB)", "done"]
    assert events[-1]["percent"] == 100 and {"elapsed", "percent", "message"} == set(events[-1])
    assert not ce("hash", "-q", str(disk)).stderr
    refused = ce("hash", "--machine-readable-fd", "97", str(disk))
    assert refused.returncode == 1 and "--machine-readable-fd 97: Bad file descriptor" in refused.stderr


def test_a_reader_that_goes_away_is_no_traceback(disk):
    proc = subprocess.Popen(f"{CE} hash --machine-readable-fd 1 {disk} | head -c 10", shell=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and len(out) == 10


def test_command_line_errors_name_the_flags_and_job_files_the_params(disk, tmp_path):
    wrong = ce("hash", "--expect", "sha1:00", str(disk))
    assert "--algorithm" in wrong.stderr and "params." not in wrong.stderr
    env = {**os.environ, "CE_SMB_PASSWORD": "x"}
    named = subprocess.run([str(CE), "export", str(disk), r"\\127.0.0.1\share", "--user", "u", "--name", "a/b"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert "--name 'a/b' must be a file name" in named.stderr and "put the folder in LOCATION" in named.stderr
    assert "SmbDiskName" not in named.stderr and "outputStorageLocation" not in named.stderr
    job = tmp_path / "export.json"
    job.write_text(json.dumps({"type": "export", "params": {
        "outputStorageLocation": {"Location": r"\\127.0.0.1\share", "credentials": {"username": "u", "password": "x"}},
        "SmbDiskName": "a/b"}}))
    in_job = ce("plan", "--job", str(job), str(disk))
    assert "params.SmbDiskName" in in_job.stderr and "--name" not in in_job.stderr


def test_choices_are_taken_in_any_case_and_reported_canonical(disk, tmp_path):
    from ce.step import step_types
    types = step_types()
    prepare = types["prepare"].parse({"disk": str(disk), "provisioningType": "mcs", "targetPlatform": "Azure"})
    assert (prepare.provisioningType, prepare.targetPlatform) == ("Mcs", "azure")
    hashed = types["hash"].parse({"disk": str(disk), "algorithms": ["MD5"], "of": "File"})
    assert (hashed.algorithms, hashed.of) == (["md5"], "file")
    out = tmp_path / "out.vmdk"
    converted = ce("convert", str(disk), str(out), "-O", "VMDK", "--subformat", "streamoptimized", "--json")
    assert converted.returncode == 0, converted.stderr
    assert json.loads(converted.stdout)["facts"]["output"]["subformat"] == "streamOptimized"


@pytest.mark.parametrize("example", ["convert-to-uefi.json", "upgrade-pvs.json"])
def test_the_vdisk_examples_are_valid_jobs_without_a_disk(example):
    """convertToUefi and upgradePvs take their input from the share: their jobs parse with no DISK given."""
    from ce.cli.jobs import load_job
    from ce.step import step_types
    kind, params = load_job(str(ROOT / "examples" / example), step_types())
    assert kind.name == json.loads((ROOT / "examples" / example).read_text())["type"]
    assert params.inputImageFilename == "Win2019-VDA.vhdx" and params.timeout == 7200
