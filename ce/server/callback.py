"""Pushes step status changes to the connector's callback URL (vSphere deployments), never blocking a step.

Each change is queued and POSTed by one background thread, in order, with retries and exponential backoff
(urllib3 ``Retry``: connection errors, 429 and 5xx). The body is the step document without params; the request
carries the job's bearer token so the connector can tell the CE from anyone else. Outbound TLS follows the job's
policy (``ce.tls``). A callback that still fails after its retries is logged and dropped: the connector also polls.
"""
from __future__ import annotations

import logging
import queue
import threading

import requests
from urllib3.util.retry import Retry

from .. import logs
from ..tls import OutboundPolicy, outbound_session

log = logging.getLogger("ce.callback")

RETRIES = 6
BACKOFF = 1.0               # seconds: 0, 2, 4, 8, ... between attempts (urllib3 skips the first wait)
TIMEOUT = (10, 30)          # connect, read
CALLBACK_FIELDS = ("id", "type", "status", "progressPercent", "message", "warnings", "error", "result",
                   "createdAt", "startedAt", "finishedAt")


class Notifier:
    def __init__(self, url: str, policy: OutboundPolicy, token: str, *, retries: int = RETRIES,
                 backoff: float = BACKOFF):
        self.url = url
        # other=0: a TLS failure (wrong pin, untrusted peer) will not fix itself by retrying.
        retry = Retry(total=retries, connect=retries, read=retries, status=retries, other=0, backoff_factor=backoff,
                      backoff_max=60, status_forcelist=(429, 500, 502, 503, 504), allowed_methods=None,
                      respect_retry_after_header=True, raise_on_status=False)
        self.session = outbound_session(policy, max_retries=retry)
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.sent = 0
        self.failed = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="callback")
        self._thread.start()

    def __call__(self, doc: dict) -> None:
        """Queue one status change (a step document); returns at once."""
        self._queue.put({k: doc.get(k) for k in CALLBACK_FIELDS})

    def _loop(self) -> None:
        while True:
            body = self._queue.get()
            try:
                self._post(body)
            finally:
                self._queue.task_done()

    def _post(self, body: dict) -> None:
        with logs.step_scope(body["id"]):
            try:
                # Never follow a redirect: it could send the step document elsewhere, or in clear over http.
                response = self.session.post(self.url, json=body, timeout=TIMEOUT, allow_redirects=False)
            except requests.RequestException as exc:
                self.failed += 1
                log.warning("callback for status %s not delivered to %s: %s", body["status"], self.url, exc)
                return
            if response.is_redirect or 300 <= response.status_code < 400:
                self.failed += 1
                log.warning("callback for status %s not delivered: %s answered HTTP %d, a redirect to %s, which is "
                            "never followed (configure the callback URL itself)", body["status"], self.url,
                            response.status_code, response.headers.get("Location", "nowhere"))
            elif response.ok:
                self.sent += 1
                log.info("callback delivered: %s", body["status"])
            else:
                self.failed += 1
                log.warning("callback for status %s refused by %s: HTTP %d", body["status"], self.url,
                            response.status_code)
