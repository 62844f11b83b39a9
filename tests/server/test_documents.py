"""One naming rule for every document (issue 17, item 6): the documents real runs produce -- the server's step
documents and the CLI's --json -- validate against the step types' own schemas in the server's /openapi.json
(jsonschema_rs, not ce's models), carry schemaVersion, and every key in them is camelCase except inside maps whose
keys are data (digests by algorithm, the service's own params)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid

import jsonschema_rs
import pytest

from ce.document import SCHEMA_VERSION
from tests.server.test_server import wait_terminal

CE = [sys.executable, "-m", "ce.cli"]
CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")
DATA_KEYED = {"hashes", "expected", "params"}     # keys are algorithms, or the service's params as it names them
MiB = 1 << 20


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    path = tmp_path_factory.mktemp("documents") / "disk.raw"
    path.write_bytes(b"\xa5" * MiB + bytes(3 * MiB))
    return path


@pytest.fixture(scope="module")
def server_options(disk) -> dict:
    return {"disks": [str(disk)]}


@pytest.fixture(scope="module")
def openapi(server, api) -> dict:
    return api.get(server.url + "/openapi.json", timeout=30).json()


def validator(openapi: dict, component: str):
    return jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{component}",
                                        "components": openapi["components"]})


def not_camel(document, where: str = "") -> list[str]:
    """Every key of ``document`` (nested) that is not camelCase, with where it is."""
    found = []
    if isinstance(document, dict):
        for key, value in document.items():
            if not CAMEL.match(key):
                found.append(f"{where}.{key}")
            if key not in DATA_KEYED:
                found += not_camel(value, f"{where}.{key}")
    elif isinstance(document, list):
        for i, value in enumerate(document):
            found += not_camel(value, f"{where}[{i}]")
    return found


def assert_conforms(openapi: dict, component: str, document: dict) -> None:
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}"
              for e in validator(openapi, component).iter_errors(document)]
    assert not errors, errors[:5]
    assert not_camel(document) == [], component


def ce_json(*args) -> dict:
    proc = subprocess.run([*CE, *args, "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("dry", [True, False], ids=["plan", "result"])
def test_step_documents_of_the_server_match_the_openapi(server, api, openapi, disk, dry):
    step_id = f"doc-{uuid.uuid4().hex[:10]}"
    created = api.post(server.url + "/v1/steps", timeout=30, json={
        "id": step_id, "type": "hash", "params": {"disk": str(disk), "algorithms": ["md5", "sha256"], "dryRun": dry}})
    assert created.status_code == 202, created.text
    doc = wait_terminal(server, api, step_id)
    assert doc["status"] == "succeeded", doc
    assert doc["schemaVersion"] == SCHEMA_VERSION and doc["result"]["schemaVersion"] == SCHEMA_VERSION
    assert_conforms(openapi, "Step", doc)
    assert_conforms(openapi, f"hash.{'Plan' if dry else 'Result'}", doc["result"])
    if not dry:
        assert doc["result"]["facts"]["size"] == 4 * MiB and set(doc["result"]["facts"]["hashes"]) == {"md5", "sha256"}


def test_cli_documents_match_the_openapi(openapi, disk, tmp_path):
    out = tmp_path / "disk.vhdx"
    converted = ce_json("convert", str(disk), str(out), "-O", "vhdx")
    assert_conforms(openapi, "convert.Result", converted)
    assert converted["facts"]["output"]["virtualSize"] == 4 * MiB and converted["schemaVersion"] == SCHEMA_VERSION
    planned = ce_json("hash", str(out), "--dry-run")
    assert_conforms(openapi, "hash.Plan", planned)
    assert planned["facts"]["format"] == "vhdx" and planned["facts"]["fileSize"] == out.stat().st_size


def test_a_document_that_strays_from_its_schema_is_caught():
    """The check the tests run every step under (CE_STRICT_DOCUMENTS) is not a formality: a snake_case fact fails."""
    from ce.document import facts_problem
    from steps.hash import Facts
    good = {"disk": "d", "of": "content", "size": 1, "format": "raw", "fileSize": 1, "algorithms": ["md5"]}
    assert facts_problem(Facts, good) is None
    assert facts_problem(Facts, {**good, "bytes_sent": 1}) == "bytes_sent: Extra inputs are not permitted"
    assert facts_problem(Facts, {k: v for k, v in good.items() if k != "fileSize"}) == "fileSize: Field required"
