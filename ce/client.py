"""Reference client of the step server -- the connector's side of the API, for tests and operators.

It talks mutual TLS with a client certificate and sends the job's bearer token. It trusts the server certificate
named in the bootstrap (or ``ca``); a leaf certificate may be its own anchor.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import requests

from .errors import ClientError, Unreachable, WaitTimeout
from .server.bootstrap import load as load_bootstrap
from .throughput import figures
from .tls import OutboundPolicy, outbound_session

TERMINAL = ("succeeded", "failed", "canceled")


class Client:
    def __init__(self, url: str, token: str, cert: str | Path, key: str | Path, server_ca: str | Path,
                 *, check_hostname: bool = True, timeout: float = 30):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = outbound_session(OutboundPolicy(ca=Path(server_ca), check_hostname=check_hostname),
                                        client_cert=(str(cert), str(key)))
        self.session.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_bootstrap(cls, path: str | Path, cert: str | Path, key: str | Path, *, ca: str | Path | None = None,
                       url: str | None = None, **kwargs) -> "Client":
        boot = load_bootstrap(path)
        host = "127.0.0.1" if boot.host in ("0.0.0.0", "::", "") else boot.host
        return cls(url or f"https://{host}:{boot.port}", boot.token, cert, key, ca or boot.tls.cert, **kwargs)

    def request(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise Unreachable(f"cannot reach the ce server at {self.url}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not response.ok:
            err = (body or {}).get("error") or {}
            raise ClientError(err.get("message") or f"HTTP {response.status_code}", code=err.get("code"),
                              status=response.status_code, field=err.get("field"))
        return body

    def health(self) -> dict:
        return self.request("GET", "/v1/health")

    def disks(self) -> dict:
        return self.request("GET", "/v1/disks")

    def types(self) -> dict:
        return self.request("GET", "/v1/steps")

    def create(self, step_id: str, type_name: str, params: dict) -> dict:
        return self.request("POST", "/v1/steps", json={"id": step_id, "type": type_name, "params": params})

    def get(self, step_id: str) -> dict:
        return self.request("GET", f"/v1/steps/{step_id}")

    def cancel(self, step_id: str) -> dict:
        return self.request("POST", f"/v1/steps/{step_id}/cancel")

    def log(self, step_id: str, since: int = 0) -> dict:
        return self.request("GET", f"/v1/steps/{step_id}/log", params={"since": since})

    def wait(self, step_id: str, *, interval: float = 1.0, timeout: float | None = None, on_update=None) -> dict:
        """Poll until the step is terminal; ``on_update(step)`` sees every poll."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            step = self.get(step_id)
            if on_update:
                on_update(step)
            if step["status"] in TERMINAL:
                return step
            if end is not None and time.monotonic() > end:
                raise WaitTimeout(f"step {step_id} still {step['status']} after {timeout:.0f} s")
            time.sleep(interval)


class ProgressBar:
    """A bar redrawn in place on a terminal; elsewhere one line per change of status or message."""

    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream, self.width = stream, width
        self.tty = stream.isatty()
        self.last = None

    def __call__(self, step: dict) -> None:
        pct, status, message = step["progressPercent"], step["status"], step["message"]
        if self.tty:
            filled = int(pct / 100 * self.width)
            moved = (step["bytesDone"], step["bytesTotal"]) if "bytesTotal" in step else None
            self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {pct:5.1f}% "
                              f"{figures(moved, step.get('bytesPerSecond'))}{status:9} {message[:50]:<50}")
            if status in TERMINAL:
                self.stream.write("\n")
        elif (status, message) != self.last:
            self.stream.write(f"{step['id']}: {status} {pct:.0f}% {message}\n")
        self.last = (status, message)
        self.stream.flush()
