"""``/openapi.json`` (OpenAPI 3.1) from the API models and every step type's ``Params`` model."""
from __future__ import annotations

from pydantic.json_schema import models_json_schema

from .. import __version__
from ..errors import Canceled, catalogue
from ..errors.server import REFUSALS, STEP_DOCUMENT
from ..step import StepType
from . import api

REF = "#/components/schemas/{model}"


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def error_responses(*statuses: int, refusals: bool = False) -> dict:
    """Each status with the error codes that answer with it (``x-error-codes``): the server's own, and with
    ``refusals`` every code a step's submit-time checks can refuse with. What each means and what to do about it
    is in the document's ``x-error-catalogue``, which also holds the codes a step's document can carry."""
    text = {400: "malformed request", 401: "missing or wrong bearer token", 404: "no such step",
            409: "conflict (see error.code)", 413: "request too large", 422: "invalid input (error.field names it)"}
    by_status: dict[int, list[str]] = {}
    for code, cls in catalogue().items():
        submit_time = refusals and not cls.__module__.endswith(".server") and not issubclass(cls, Canceled)
        if cls not in REFUSALS and not submit_time:
            continue
        by_status.setdefault(cls.status, []).append(code)
    return {str(s): {"description": text[s], "x-error-codes": sorted(by_status.get(s, [])),
                     "content": {"application/json": {"schema": ref("ErrorResponse")}}} for s in statuses}


def error_catalogue() -> dict:
    """Every error code ce reports -- in a refused request or in a step's document -- with its HTTP status and
    what the connector should do."""
    return {code: {"status": cls.status, "group": cls.__module__.rsplit(".", 1)[-1], "action": cls.action}
            for code, cls in sorted(catalogue().items())}


def json_response(description: str, schema: str, headers: dict | None = None) -> dict:
    out = {"description": description, "content": {"application/json": {"schema": ref(schema)}}}
    if headers:
        out["headers"] = headers
    return out


def step_schemas(types: dict[str, StepType]) -> tuple[dict, list[dict]]:
    """Components for each type's params, and one create-request variant per type with the error codes its step
    document can carry (``x-error-codes``: its groups' codes and the service's own)."""
    components, variants = {}, []
    for name, kind in types.items():
        schema = kind.Params.model_json_schema(ref_template=f"#/components/schemas/{name}.{{model}}")
        for def_name, definition in schema.pop("$defs", {}).items():
            components[f"{name}.{def_name}"] = definition
        components[f"{name}.Params"] = schema
        variant = f"{name}.StepCreate"
        components[variant] = {
            "type": "object", "title": f"create a {name} step", "additionalProperties": False,
            "x-error-codes": sorted({code for code, cls in catalogue().items()
                                     if cls.__module__.rsplit(".", 1)[-1] in kind.error_groups}
                                    | {cls.code for cls in STEP_DOCUMENT}),
            "required": ["id", "type", "params"],
            "properties": {"id": {"type": "string", "pattern": api.STEP_ID}, "type": {"const": name},
                           "params": ref(f"{name}.Params")}}
        variants.append(ref(variant))
        if kind.Facts:
            components.update(document_schemas(name, kind))
    return components, variants


def document_schemas(name: str, kind: StepType) -> dict:
    """``{name}.Facts`` and the step's plan and result: the generic Plan / Result with its own facts."""
    schema = kind.Facts.model_json_schema(mode="serialization", ref_template=f"#/components/schemas/{name}.{{model}}")
    out = {f"{name}.{def_name}": definition for def_name, definition in schema.pop("$defs", {}).items()}
    out[f"{name}.Facts"] = schema
    for shape in ("Plan", "Result"):
        out[f"{name}.{shape}"] = {"title": f"the {name} step's {shape.lower()}", "allOf": [ref(shape), {
            "type": "object", "properties": {"step": {"const": name}, "facts": ref(f"{name}.Facts")}}]}
    return out


def typed_results(components: dict, types: dict[str, StepType]) -> None:
    """The step document's ``result`` as one of the step types' own plans and results (their facts typed)."""
    shapes = [ref(f"{name}.{shape}") for name, kind in types.items() if kind.Facts for shape in ("Plan", "Result")]
    if shapes:
        result = components["Step"]["properties"]["result"]
        result["anyOf"] = shapes + [{"type": "null"}]


def document(types: dict[str, StepType]) -> dict:
    _, defs = models_json_schema(
        [(m, "validation") for m in (api.StepCreate,)] +
        [(m, "serialization") for m in (api.ErrorResponse, api.Step, api.StepTypes, api.Disks, api.Health,
                                        api.StepLog)], ref_template=REF)
    components = dict(defs.get("$defs", {}))
    step_components, variants = step_schemas(types)
    components.update(step_components)
    typed_results(components, types)
    step_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": api.STEP_ID}}
    location = {"Location": {"description": "the step's URL", "schema": {"type": "string"}}}
    etag = {"ETag": {"description": "changes whenever the document does", "schema": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "ce step server", "version": __version__,
                 "description": "Drives the Compositing Engine one step at a time. Every connection needs a client "
                                "certificate (mutual TLS); every route except GET /v1/health needs the bearer token."},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "x-error-catalogue": error_catalogue(),
        "paths": {
            "/v1/health": {"get": {"operationId": "health", "security": [], "summary": "liveness, no secrets",
                                   "responses": {"200": json_response("alive", "Health")}}},
            "/v1/disks": {"get": {"operationId": "listDisks", "summary": "attached disks with format and size",
                                  "responses": {"200": json_response("disks", "Disks"), **error_responses(401)}}},
            "/v1/steps": {
                "get": {"operationId": "listStepTypes", "summary": "step types and their parameter schemas",
                        "responses": {"200": json_response("step types", "StepTypes"), **error_responses(401)}},
                "post": {"operationId": "createStep", "summary": "start a step (idempotent on id)",
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"oneOf": variants} if variants else ref("StepCreate")}}},
                         "responses": {"202": json_response("accepted: the step as it is now", "Step", location),
                                       **error_responses(400, 401, 409, 413, 422, refusals=True)}}},
            "/v1/steps/{id}": {"get": {
                "operationId": "getStep", "summary": "a step's status and result",
                "parameters": [step_id, {"name": "If-None-Match", "in": "header", "required": False,
                                         "description": "the ETag of the document the poller has",
                                         "schema": {"type": "string"}}],
                "responses": {"200": json_response("the step", "Step", etag),
                              "304": {"description": "unchanged since the ETag in If-None-Match", "headers": etag},
                              **error_responses(401, 404)}}},
            "/v1/steps/{id}/log": {"get": {
                "operationId": "getStepLog", "summary": "a step's log lines",
                "parameters": [step_id, {"name": "since", "in": "query", "required": False,
                                         "schema": {"type": "integer", "minimum": 0}}],
                "responses": {"200": json_response("log lines", "StepLog"), **error_responses(400, 401, 404)}}},
            "/v1/steps/{id}/cancel": {"post": {
                "operationId": "cancelStep", "parameters": [step_id], "summary": "stop a step and clean up",
                "responses": {"202": json_response("cancel under way (or done)", "Step"),
                              **error_responses(401, 404, 409)}}},
        },
    }
