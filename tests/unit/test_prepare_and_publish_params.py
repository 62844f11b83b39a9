"""prepareAndPublish without an appliance or a share: its params are prepare's and publish's (built from the two
models, a field declared two ways refused), both halves' refusals come before any work, and the job file, the
command line and the step registry all reach it. The run itself (a prepared sample image published to a real
smbd, read back) is tests/guest/test_prepare_and_publish.py."""
from __future__ import annotations

import json

import pytest
from pydantic import Field

from ce.cli import build_parser
from ce.cli.jobs import load_job
from ce.errors import InvalidJob, InvalidParams
from ce.step import StepParams, step_types
from steps import prepare, prepare_and_publish, publish

TYPES = step_types()
KIND = TYPES["prepareAndPublish"]
STORE = {"Location": r"\\pvs\store", "credentials": {"username": "svc", "password": "s3cret-canary"}}
BASE = {"disk": "/dev/sdb", "provisioningType": "Pvs", "outputStorageLocation": STORE, "vDiskName": "Golden"}


def test_params_are_every_prepare_and_every_publish_param():
    own = set(StepParams.model_fields)
    fields = set(KIND.Params.model_fields)
    assert fields == set(prepare.Params.model_fields) | set(publish.Params.model_fields)
    assert set(prepare_and_publish.fields_of(prepare.Params)) == set(prepare.Params.model_fields) - own
    assert set(prepare_and_publish.fields_of(publish.Params)) == set(publish.Params.model_fields) - own
    assert KIND.disk_params == ("disk",) and not KIND.plan_ahead
    assert set(KIND.error_groups) == set(prepare.STEP.error_groups) | set(publish.STEP.error_groups)
    params = KIND.parse({**BASE, "targetPlatform": "azure", "ceVmSku": "Standard_D2ds_v6", "SmbDiskFormat":
                         "VhdDiskFormat", "overwriteTargetFile": True, "installPvs": "2402.0.2000"})
    assert prepare_and_publish.split(params, publish.Params)["SmbDiskFormat"] == "VhdDiskFormat"
    assert prepare_and_publish.split(params, prepare.Params)["ceVmSku"] == "Standard_D2ds_v6"
    assert "s3cret-canary" not in repr(params) and "s3cret-canary" not in params.model_dump_json()


def test_a_field_two_steps_declare_differently_is_refused_naming_it():
    class One(StepParams):
        disk: str
        name: str = "a"

    class Two(StepParams):
        disk: str
        name: int = 1

    with pytest.raises(TypeError, match="'name' means different things"):
        prepare_and_publish.combined_params(One, Two)
    assert set(prepare_and_publish.combined_params(One, One).model_fields) == {"timeout", "dryRun", "disk", "name"}


@pytest.mark.parametrize("bad, field", [
    ({"vDiskName": "a.b"}, "vDiskName"), ({"installMisa": True}, None), ({"ceVmSku": "Standard_D2s_v3"}, "ceVmSku"),
    ({"xdReconfigure": [{"ParameterName": "controllers", "ParameterValue": "a & calc"}]}, None),
    ({"SmbDiskFormat": "raw"}, "SmbDiskFormat"), ({"extra": 1}, "extra"), ({"timeout": 5}, "timeout")])
def test_either_halfs_refusal_comes_before_any_work(bad, field):
    with pytest.raises(InvalidParams) as refused:
        KIND.parse({**BASE, **bad})
    if field:
        assert field in refused.value.message


def test_the_example_job_file_runs_through_ce_run(tmp_path):
    kind, params = load_job("examples/prepare-and-publish.json", TYPES, disk="/dev/sdc", dryRun=True)
    assert kind is KIND and params.disk == "/dev/sdc" and params.dryRun and params.ceVmSku == "Standard_D2s_v3"
    bad = tmp_path / "job.json"
    bad.write_text(json.dumps({"type": "prepareAndPublish", "params": {**BASE, "disk": "/dev/sdc", "vDiskName": "x/y"}}))
    with pytest.raises(InvalidJob, match="vDiskName"):
        load_job(str(bad), TYPES, disk="/dev/sdc")


def test_the_command_line_maps_onto_the_params(tmp_path, monkeypatch):
    monkeypatch.setenv("CE_SMB_USER", "svc")
    monkeypatch.setenv("CE_SMB_PASSWORD", "s3cret-canary")
    more = tmp_path / "more.json"
    more.write_text(json.dumps({"xdReconfigure": [{"ParameterName": "portnumber", "ParameterValue": "80"},
                                                  {"ParameterName": "controllers", "ParameterValue": "old.corp"}]}))
    args = build_parser(TYPES).parse_args([
        "prepare-and-publish", "disk.qcow2", r"\\pvs\store", "--vdisk", "Golden", "--provisioning", "Mcs",
        "--platform", "azure", "--vm-sku", "Standard_D2ds_v6", "--controllers", "ddc1.corp ddc2.corp",
        "--install-misa", "--params", str(more), "--format", "vhd", "--overwrite", "--hash"])
    params = KIND.parse({**args.kind.cli.params(args), "dryRun": True})
    assert (params.disk, params.vDiskName, params.provisioningType, params.targetPlatform, params.ceVmSku) == \
        ("disk.qcow2", "Golden", "Mcs", "azure", "Standard_D2ds_v6")
    assert params.installMisa and not params.installMcsio and not params.domainUnjoin
    assert [(x.ParameterName, x.ParameterValue) for x in params.xdReconfigure] == \
        [("portnumber", "80"), ("controllers", "ddc1.corp ddc2.corp")]
    assert (params.SmbDiskFormat, params.overwriteTargetFile, params.hashDisk) == ("VhdDiskFormat", True, True)
    assert params.outputStorageLocation.credentials.password.get_secret_value() == "s3cret-canary"


def test_command_line_errors_name_the_flags(monkeypatch):
    monkeypatch.setenv("CE_SMB_USER", "svc")
    monkeypatch.setenv("CE_SMB_PASSWORD", "s3cret-canary")
    args = build_parser(TYPES).parse_args(["prepare-and-publish", "disk.qcow2", r"\\pvs\store", "--vdisk", "a.b",
                                           "--provisioning", "Mcs", "--vm-sku", "Standard_D2s_v3"])
    assert set(KIND.cli.flags) <= set(KIND.Params.model_fields) | {f for f in KIND.cli.flags if "." in f}
    with pytest.raises(InvalidParams) as refused:
        KIND.parse({**args.kind.cli.params(args), "dryRun": True})
    assert "ceVmSku" in refused.value.message or "--vm-sku" in refused.value.message
