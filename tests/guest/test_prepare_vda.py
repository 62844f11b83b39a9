"""prepare / xdReconfigure: parameter validation (injection strings included) and `ce plan` / `ce run` end to end
on a writable child of a sample image, checked by inspecting the result."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ce import disks
from ce.errors import InvalidParams
from steps.prepare.vda import XdParameter, parse_controllers, parse_site_guid, support_rules, validated, vda_supported
from ce.registry import sha256_file

CE = [sys.executable, "-m", "ce.cli"]
INJECTIONS = ["a.example.com & calc.exe", "a.example.com|whoami", 'a"b.example.com', "%COMSPEC%", "$(reboot)",
              "a.example.com\nshutdown", "a.example.com;rm", "-a.example.com", "a..example.com", "`id`"]


def xd(**values):
    return [XdParameter(ParameterName=k, ParameterValue=v) for k, v in values.items()]


def write_job(path, params):
    path.write_text(json.dumps({"type": "prepare", "params": {"provisioningType": "Mcs", **params}}))
    return str(path)


@pytest.mark.parametrize("value", INJECTIONS)
def test_controllers_refuse_anything_but_fqdns(value):
    with pytest.raises(InvalidParams, match="not a valid FQDN|control character"):
        parse_controllers(value)


def test_controllers_accept_space_and_comma_lists():
    assert parse_controllers(" ddc1.corp.example.com,ddc2  DDC-3.corp.example.com ") == [
        "ddc1.corp.example.com", "ddc2", "DDC-3.corp.example.com"]
    with pytest.raises(InvalidParams, match="empty"):
        parse_controllers("  ")


def test_site_guid_is_normalised_or_refused():
    assert parse_site_guid("6C1B0E1D-3F55-4A0E-9D7B-2D4F8A41C2B7") == "{6c1b0e1d-3f55-4a0e-9d7b-2d4f8a41c2b7}"
    for bad in ("{6c1b0e1d}", "6c1b0e1d-3f55-4a0e-9d7b-2d4f8a41c2b7 & x", ""):
        with pytest.raises(InvalidParams, match="not a GUID"):
            parse_site_guid(bad)


def test_unknown_duplicate_and_first_boot_options():
    with pytest.raises(InvalidParams, match="not supported"):
        validated(xd(format_c="yes"))
    with pytest.raises(InvalidParams, match="twice"):
        validated([XdParameter(ParameterName="controllers", ParameterValue="a.b"),
                   XdParameter(ParameterName="/Controllers", ParameterValue="c.d")])
    assert validated(xd(controllers="a.example.com", portnumber="80")) == (["a.example.com"], None,
                                                                          ["/portnumber", "80"])


def test_support_table_is_data():
    rules = support_rules()
    assert vda_supported("1912.0.9000.11", rules) and vda_supported("2411.0.0.20", rules)
    assert not vda_supported("2203.0.4000.23", rules) and not vda_supported("2402.0.100.629", rules)


def test_cli_refuses_a_bad_job_before_launching(tmp_path, samples):
    job = write_job(tmp_path / "job.json", {"xdReconfigure": [{"ParameterName": "controllers",
                                                                "ParameterValue": "x.example.com & calc"}]})
    proc = subprocess.run([*CE, "plan", "--job", job, str(samples["win2016-vda1912"].path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "error [invalid_job]" in proc.stderr and "xdReconfigure controllers" in proc.stderr
    missing = write_job(tmp_path / "job2.json", {"provisioningType": "Citrix"})
    proc = subprocess.run([*CE, "plan", "--job", missing, str(samples["win2016-vda1912"].path)],
                          capture_output=True, text=True, timeout=60)
    assert "error [invalid_job]" in proc.stderr and "params.provisioningType" in proc.stderr


@pytest.mark.slow
def test_run_sets_local_and_policy_controllers_and_inspect_sees_them(samples, tmp_path):
    sample = samples["win10-vda2203-policy"]
    before = sha256_file(sample.path)
    child = disks.create_child(str(sample.path), str(tmp_path / "w10.qcow2"), parent_fmt=sample.format)
    new = "ddc-x.corp.example.com ddc-y.corp.example.com"
    job = write_job(tmp_path / "job.json", {"xdReconfigure": [{"ParameterName": "controllers",
                                                                "ParameterValue": new}]})
    proc = subprocess.run([*CE, "run", "--json", "--job", job, child.path], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    changed = [(o["change"]["key"], o["change"]["old"]["value"], o["change"]["new"]["value"], o["status"])
               for o in result["outcomes"]]
    assert changed == [(r"Citrix\VirtualDesktopAgent", "old-ddc.corp.example.com", new, "applied"),
                       (r"Policies\Citrix\VirtualDesktopAgent", "ddc-a.corp.example.com ddc-b.corp.example.com",
                        new, "applied")]
    proc = subprocess.run([*CE, "inspect", "--json", child.path], capture_output=True, text=True, timeout=900)
    vda = json.loads(proc.stdout)["vda"]
    assert vda["listOfDdcs"] == vda["policyListOfDdcs"] == vda["controllers"] == new.split()
    assert sha256_file(sample.path) == before


@pytest.mark.slow
def test_plan_on_unsupported_vda_warns_and_changes_nothing(samples, tmp_path):
    path = samples["win11-vda2402-policy"].path
    before = sha256_file(path)
    job = write_job(tmp_path / "job.json", {"xdReconfigure": [{"ParameterName": "site_guid",
                                                                "ParameterValue": "{6c1b0e1d-3f55-4a0e-9d7b-2d4f8a41c2b7}"}]})
    proc = subprocess.run([*CE, "plan", "--json", "--job", job, str(path)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["changes"] == [] and [w["code"] for w in plan["warnings"]] == ["vda_unsupported"]
    assert sha256_file(path) == before
