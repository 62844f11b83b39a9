"""The poll path: ``GET /v1/steps/{id}`` answered in front of Flask.

Hundreds of connectors poll a running step about once a second each, and every CPU second their polls take is one
the step's data path does not get. A poll for a step that exists, with the right token, is answered here from the
encoded document (:class:`StepBodies`) with the same headers, access log line and conditional ``304`` the Flask
view gives; it skips Flask's request context, routing and response objects, about half of what a poll costs.
Anything else -- a wrong or missing token, an unknown step, another method or path -- goes on to Flask, which
answers it as for every other route (401, 404, 405, ...).
"""
from __future__ import annotations

import logging
import time

from werkzeug.http import parse_etags

from .auth import token_ok
from .stepdocs import StepBodies

log = logging.getLogger("ce.server")
PREFIX = "/v1/steps/"


def answer(found: tuple[bytes, str], if_none_match: str | None) -> tuple[str, list[tuple[str, str]], bytes]:
    """(status, headers, body) for a step's encoded document, or a 304 when the poller has it already."""
    body, etag = found
    headers = [("ETag", f'"{etag}"'), ("Cache-Control", "no-cache")]
    if if_none_match and parse_etags(if_none_match).contains_weak(etag):
        return "304 NOT MODIFIED", headers, b""
    return "200 OK", [*headers, ("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body


class StepPolls:
    """WSGI middleware: ``StepPolls(flask_app.wsgi_app, bodies, token)``."""

    def __init__(self, app, bodies: StepBodies, token: str):
        self.app, self.bodies, self.token = app, bodies, token

    def __call__(self, environ, start_response):
        started = time.monotonic()
        path = environ.get("PATH_INFO", "")
        step_id = path[len(PREFIX):]
        if (environ.get("REQUEST_METHOD") != "GET" or not path.startswith(PREFIX) or not step_id or "/" in step_id
                or not token_ok(environ.get("HTTP_AUTHORIZATION"), self.token)):
            return self.app(environ, start_response)
        found = self.bodies.body(step_id)
        if found is None:
            return self.app(environ, start_response)
        status, headers, body = answer(found, environ.get("HTTP_IF_NONE_MATCH"))
        took = (time.monotonic() - started) * 1000
        start_response(status, [*headers, ("Server-Timing", f"app;dur={took:.2f}")])
        if log.isEnabledFor(logging.DEBUG):
            log.debug("GET %s %s", path, status[:3], extra={"method": "GET", "path": path, "status": int(status[:3]),
                                                            "duration_ms": round(took, 1), "step_id": step_id})
        return [body]
