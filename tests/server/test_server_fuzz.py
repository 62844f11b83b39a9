"""schemathesis fuzzes every operation of /openapi.json against the real server (gunicorn, mutual TLS, token):
no input may produce a server error, and every response must match the document's status codes and schemas.

The document is generated in-process from the same code the server uses, with the product's step types only: the
server also offers the suite's test-only steps, which write pid files and outputs wherever their params say, and
fuzzing those wrote a file with a random name into the working tree. The server here has no attached disks, so a
fuzzed step that needs one is refused (422) instead of working on something real (tests/conftest.py's `server`).
"""
from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from ce.server import openapi
from ce.server.steps import EXTRA_ENV, step_types

assert not os.environ.get(EXTRA_ENV), "fuzz only the real step types"
# The registry is explicit: importing tests.support.server_harness adds nothing to it (its steps are its own STEPS).
PRODUCT_TYPES = step_types()
assert {"test-wait", "test-sleep"}.isdisjoint(PRODUCT_TYPES) and "export" in PRODUCT_TYPES, sorted(PRODUCT_TYPES)
schema = schemathesis.openapi.from_dict(openapi.document(PRODUCT_TYPES))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_fuzz(case, server, api):
    response = case.call(base_url=server.url, session=api)
    case.validate_response(response, checks=CHECKS)
