"""Server errors: requests to the step server, its bootstrap, TLS and the client side of the connector API.

A class whose ``status`` the server answers with is a refusal of a request (``invalid_request``, ``unauthorized``,
``not_found``, ``conflict``, ...); the step-document errors the service writes itself (``timeout``,
``worker_died``, ``interrupted``, ``internal_error``) keep ``status`` for the table only, like every step error.
The client errors (``client_error`` and its subclasses) are raised by the reference client, never by the server.
"""
from __future__ import annotations

from .base import CeError
from .step import TimedOut


# ---------------------------------------------------------------- refusals of a request

class InvalidRequest(CeError):
    """The request itself is malformed (not a JSON object, a query parameter of the wrong form)."""
    code = "invalid_request"
    status = 400
    action = "send a JSON object {id, type, params} (or the query parameter as documented) and retry"


class Unauthorized(CeError):
    code = "unauthorized"
    status = 401
    action = "send Authorization: Bearer <token> with the token from the job's bootstrap"


class NotFound(CeError):
    """No such step (or no such route)."""
    code = "not_found"
    status = 404
    action = "check the step id (or the path): the CE knows only the steps created on it"


class MethodNotAllowed(CeError):
    code = "method_not_allowed"
    status = 405
    action = "use the method the route takes (see /openapi.json)"


class Conflict(CeError):
    """The step id is taken by a step with a different type or params."""
    code = "conflict"
    status = 409
    action = "use a new step id for different work (a retry with the same id must send the same params)"


class DiskBusy(Conflict):
    code = "disk_busy"
    action = "wait for the step named in the message to finish (or cancel it), then submit again"


class StepFinished(Conflict):
    code = "step_finished"
    action = "nothing to cancel: the step already ended; read its status and result"


class RequestTooLarge(CeError):
    code = "request_entity_too_large"
    status = 413
    action = "send a request body smaller than 1 MiB"


class InternalError(CeError):
    """A bug in the service or a step: the log has the traceback."""
    code = "internal_error"
    status = 500
    action = "a bug: collect the service's and the step's logs and report it; retry with a new step id"


# ---------------------------------------------------------------- step outcomes written by the service

class StepDeadline(TimedOut):
    """The service stopped the step at its deadline (params.timeout, else ``ce serve --step-timeout``)."""
    code = "timeout"
    action = "the step did not finish in params.timeout and was stopped: raise params.timeout or check the CE's load"


class WorkerDied(CeError):
    code = "worker_died"
    status = 500
    action = "the step's process ended without a result: read the step log, then run the step again with a new id"


class Interrupted(CeError):
    code = "interrupted"
    status = 503
    action = "the service restarted while the step ran: run the step again with a new id"


class DiskReplaced(CeError):
    """A disk param's path names another file than the one checked when the step was submitted (a symlink or the
    file swapped in between): the step does not run."""
    code = "disk_replaced"
    status = 409
    action = ("the disk's path named another file when the step started than when it was submitted: check the CE's "
              "disks (and who changes them), then submit the step again with a new id")


# ---------------------------------------------------------------- configuration of the service

class BootstrapInvalid(CeError):
    code = "bootstrap_invalid"
    action = "fix the field of the job's bootstrap.json the message names, then start ce serve again"


class TlsConfigError(CeError):
    code = "tls_config_invalid"
    action = "fix the callback's TLS settings: ca a PEM file that exists, or sha1_fingerprint 40 hex digits, not both"


# ---------------------------------------------------------------- the reference client (ce client)

class ClientError(CeError):
    """The server refused a request: ``code``, ``status`` and ``field`` are the server's, relayed (``client_error``
    when its answer carried no error code)."""
    code = "client_error"
    status = 502
    action = "the server's answer was not a ce error document: check --url and that ce serve answers there"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 field: str | None = None):
        super().__init__(message, code=code)
        self.field = field
        if status is not None:
            self.status = status


class ClientCertMissing(ClientError):
    code = "client_cert_missing"
    status = 400
    action = "give --cert and --key (or $CE_CLIENT_CERT and $CE_CLIENT_KEY): a certificate signed by the job's CA"


class Unreachable(ClientError):
    code = "unreachable"
    status = 503
    action = "check the URL, that ce serve runs there and that the server's certificate is trusted (--ca)"


class WaitTimeout(ClientError):
    code = "wait_timeout"
    status = 504
    action = "the step is still running: wait again (steps wait ID) or cancel it"


# This module's refusals of a request, each answered with its own status (with invalid_params of ce.errors.step and
# a step's own submit-time checks); the step-document, configuration and client errors above are never a response.
REFUSALS = (InvalidRequest, Unauthorized, NotFound, MethodNotAllowed, Conflict, DiskBusy, StepFinished,
            RequestTooLarge, InternalError)


class Terminated(CeError):
    """The step process got SIGTERM from the service: a cancel or a timeout that the step did not end by itself."""
    code = "terminated"
    status = 409
    action = "the service stopped the step (cancel or timeout); nothing is left under a final name: run it again"


# What the service itself can put into any step's document (the step's own codes come from its groups).
STEP_DOCUMENT = (StepDeadline, WorkerDied, Interrupted, Terminated, DiskReplaced, InternalError)
