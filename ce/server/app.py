"""The Flask app: JSON API under ``/v1``. ``create_app(bootstrap)`` wires the store, the supervisor and the
callback notifier; gunicorn serves it (``ce.server.serve``), tests of the app object may use ``test_client()``."""
from __future__ import annotations

import logging
import re
import time

from flask import Flask, Response, jsonify, request
from gunicorn.http.errors import ParseException as BodyParseError
from pydantic import ValidationError
from werkzeug import exceptions as http

from .. import __version__, disks as disk_info
from ..disks import chains
from ..errors import (CeError, InternalError, InvalidParams, InvalidRequest, MethodNotAllowed, NotFound,
                      RequestTooLarge, Unauthorized, first_problem, naming_field)
from ..payloads import PARAM as PAYLOADS_PARAM, confine as confine_payloads, store_in_force
from ..smb.ports import ports_allowed as smb_ports_allowed
from ..step import StepType
from . import api, openapi
from .auth import PUBLIC_ENDPOINTS, token_ok
from .bootstrap import Bootstrap
from .callback import Notifier
from .polls import StepPolls, answer
from .stepdocs import StepBodies, step_doc
from .steps import step_types
from .store import STORE_FILE, Store
from .supervisor import CANCEL_GRACE, DEFAULT_TIMEOUT, Supervisor

log = logging.getLogger("ce.server")
MAX_BODY = 1 << 20
DRAIN_LIMIT = 4 * MAX_BODY
# werkzeug's refusals (routing, the body limit) answered as the ce errors they are; any other HTTP error keeps its
# own name as code and its own status.
HTTP_ERRORS: dict[type[http.HTTPException], type[CeError]] = {
    http.NotFound: NotFound, http.MethodNotAllowed: MethodNotAllowed, http.RequestEntityTooLarge: RequestTooLarge}


def refuse(exc: CeError, field: str | None = None):
    """The JSON refusal of this request: the error's own code and HTTP status."""
    return error(exc.code, exc.message, exc.status, field)


def error(code: str, message: str, status: int, field: str | None = None):
    body = {"error": {"code": code, "message": message, **({"field": field} if field else {})}}
    response = jsonify(body)
    response.status_code = status
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if response.status_code == 413:
        _drain_body()
    return response


def _drain_body() -> None:
    """Read and drop what is left of a body refused as too large, so the connection can carry the client's next
    request: left unread, gunicorn drops the connection after the 413 while the client, told keep-alive, reuses it
    and gets "connection closed without response". Only a body announced (Content-Length) at most DRAIN_LIMIT
    long is read: a larger or chunked one gets its 413 at once, and that client has to reconnect."""
    length = request.content_length
    if length is None or length > DRAIN_LIMIT:
        return
    stream, left = request.environ.get("wsgi.input"), length
    while stream is not None and left > 0 and (chunk := stream.read(min(left, 1 << 20))):
        left -= len(chunk)


def check_payloads(kind: StepType | None, params: dict, boot: Bootstrap) -> None:
    """A step's ``payloads`` param may name the bootstrap's payload store and nothing else (ce.payloads)."""
    requested = params.get(PAYLOADS_PARAM)
    if kind is not None and PAYLOADS_PARAM in kind.Params.model_fields and isinstance(requested, str) and requested:
        with naming_field(PAYLOADS_PARAM):
            confine_payloads(requested, boot.payloads)


def create_app(boot: Bootstrap, *, types: dict[str, StepType] | None = None, notifier=None,
               default_timeout: int = DEFAULT_TIMEOUT, cancel_grace: float = CANCEL_GRACE) -> Flask:
    types = types if types is not None else step_types()
    store = Store(boot.state_dir / STORE_FILE)
    interrupted = store.mark_interrupted()
    if interrupted:
        log.warning("steps interrupted by a restart: %s", ", ".join(row["id"] for row in interrupted))
    if notifier is None and boot.callback:
        notifier = Notifier(boot.callback.url, boot.callback.policy(), boot.token)
    supervisor = Supervisor(store, types, hmac_key=boot.hmac_key(), allowed_disks=boot.attached_disks,
                            notify=lambda row: notifier(step_doc(row)) if notifier else None,
                            default_timeout=default_timeout, cancel_grace=cancel_grace)
    supervisor.step_env = boot.step_env()       # the payload store and SMB ports a step's process may use
    chains.restrict_to(boot.attached_disks)     # this process's disk reads (GET /v1/disks, the door's checks)
    supervisor.stop_orphans(interrupted)        # before the app exists: no step is accepted while they run
    app = Flask("ce.server")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["ce"] = {"store": store, "supervisor": supervisor, "notifier": notifier, "boot": boot}
    spec = openapi.document(types)
    bodies = StepBodies(store)

    @app.before_request
    def authenticate():
        request.environ["ce.started"] = time.monotonic()
        if request.endpoint in PUBLIC_ENDPOINTS:
            return None
        if not token_ok(request.headers.get("Authorization"), boot.token):
            return refuse(Unauthorized("missing or wrong bearer token (Authorization: Bearer <token> from the "
                                       "job's bootstrap)"))
        return None

    @app.after_request
    def access_log(response: Response):
        took = (time.monotonic() - request.environ.get("ce.started", time.monotonic())) * 1000
        response.headers["Server-Timing"] = f"app;dur={took:.2f}"
        level = logging.DEBUG if request.method == "GET" and response.status_code < 400 else logging.INFO
        log.log(level, "%s %s %d", request.method, request.path, response.status_code,
                extra={"method": request.method, "path": request.path, "status": response.status_code,
                       "duration_ms": round(took, 1),
                       "step_id": (request.view_args or {}).get("step_id") or request.environ.get("ce.step_id")})
        return response

    @app.get("/v1/health")
    def health():
        return jsonify({"status": "ok", "version": __version__})

    @app.get("/openapi.json")
    def openapi_json():
        return jsonify(spec)

    @app.get("/v1/disks")
    def list_disks():
        out = []
        for path in boot.attached_disks():
            entry = {"path": path, "inUseBy": supervisor.disk_owner(path)}
            try:
                info = disk_info.info(path)
                entry.update(format=disk_info.FORMAT_LABELS.get(info.format, info.format).lower(),
                             subformat=info.subformat, virtualSize=info.virtual_size, actualSize=info.actual_size)
            except CeError as exc:
                entry["error"] = exc.to_dict()
            out.append(entry)
        return jsonify({"disks": out})

    @app.get("/v1/steps")
    def list_step_types():
        return jsonify({"types": [{"name": k.name, "summary": k.summary, "diskParams": list(k.disk_params),
                                   "paramsSchema": k.Params.model_json_schema(),
                                   "factsSchema": k.facts_schema()} for k in types.values()]})

    @app.post("/v1/steps")
    def create_step():
        # A chunked body has no Content-Length to refuse up front: werkzeug stops reading it at MAX_BODY and
        # would hand over the truncated JSON as if it were all.
        try:
            data = request.get_data()
        except BodyParseError as exc:        # a chunk size that is not hex digits, a missing terminator, ...
            refused = refuse(InvalidRequest(f"the request body's chunked encoding is malformed ({exc})"))
            refused.headers["Connection"] = "close"     # the rest of the stream cannot be framed
            return refused
        if len(data) >= MAX_BODY:
            return refuse(RequestTooLarge(f"the request body must be smaller than {MAX_BODY} bytes"))
        try:
            body = request.get_json(force=True, silent=True)
        except RecursionError:               # json nests deeper than the parser's stack
            body = None
        if not isinstance(body, dict):
            return refuse(InvalidRequest("the request body must be a JSON object {id, type, params}"))
        try:
            create = api.StepCreate.model_validate(body)
        except ValidationError as exc:
            message, field = first_problem(exc, top="body")
            return refuse(InvalidParams(message), field=field or "body")
        request.environ["ce.step_id"] = create.id
        check_payloads(types.get(create.type), create.params, boot)
        with smb_ports_allowed(boot.allowed_smb_ports()), store_in_force(boot.payloads):   # what the step may use
            row, _ = supervisor.submit(create.id, create.type, create.params)
        response = jsonify(step_doc(row))
        response.status_code = 202
        response.headers["Location"] = f"/v1/steps/{create.id}"
        return response

    @app.get("/v1/steps/<step_id>")
    def get_step(step_id: str):
        """Reached for an unknown step (StepPolls answers the others) or one created since StepPolls looked."""
        found = bodies.body(step_id)
        if found is None:
            return refuse(NotFound(f"no step {step_id}"))
        status, headers, body = answer(found, request.headers.get("If-None-Match"))
        return Response(body, status=int(status[:3]), headers=headers)

    @app.get("/v1/steps/<step_id>/log")
    def get_step_log(step_id: str):
        since = request.args.get("since", "0")
        if not re.fullmatch(r"[0-9]{1,18}", since):           # ASCII digits only: isdigit() accepts "²"
            return refuse(InvalidRequest("since must be a non-negative integer (a log line's seq)"), field="since")
        if store.get(step_id) is None:
            return refuse(NotFound(f"no step {step_id}"))
        lines = store.log(step_id, int(since))
        return jsonify({"lines": lines, "next": lines[-1]["seq"] if lines else int(since)})

    @app.post("/v1/steps/<step_id>/cancel")
    def cancel_step(step_id: str):
        row = supervisor.cancel(step_id)
        response = jsonify(step_doc(row))
        response.status_code = 202
        return response

    @app.errorhandler(CeError)
    def ce_error(exc: CeError):
        field = getattr(exc, "field", None)
        if field and field != "type" and not field.startswith("params."):
            field = f"params.{field}"
        return refuse(exc, field)

    @app.errorhandler(http.HTTPException)
    def http_error(exc: http.HTTPException):
        message = exc.description or exc.name
        kind = next((HTTP_ERRORS[k] for k in type(exc).__mro__ if k in HTTP_ERRORS), None)
        if kind is not None:
            return refuse(kind(message))
        return error((exc.name or "error").lower().replace(" ", "_"), message, exc.code or 400)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return refuse(InternalError("the server failed on this request; its log has the details"))

    app.wsgi_app = StepPolls(app.wsgi_app, bodies, boot.token)
    return app
