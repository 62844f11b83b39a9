"""``ce serve --bootstrap FILE``: gunicorn (one worker process, gthread) terminating mutual TLS in front of the app.

One worker process because the step runner's state -- which disk is locked by which step, the child processes --
lives in that process; threads serve the concurrent pollers. The worker is gunicorn's gthread with the closing of
connections moved off its event loop (ce/server/gthread.py: with the stock one, clients being dropped stalled every
poll). The TLS context is built once (gunicorn's default factory would re-read the key and certificates for every
connection).
"""
from __future__ import annotations

import logging
import os

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from .. import logs, tls
from ..errors import BootstrapInvalid
from . import gthread
from .bootstrap import Bootstrap
from .priority import lower_this_thread
from .slowclients import DeadlineSocket
from .supervisor import CANCEL_GRACE, DEFAULT_TIMEOUT

log = logging.getLogger("ce.server")
# CE_SERVE_WORKER=gthread runs gunicorn's stock gthread worker instead of ce's: only to measure what ce's buys
# (bench/slowclients.py, tests/faults/test_faults_requests.py); nothing else sets it.
WORKER_ENV = "CE_SERVE_WORKER"
# Threads only wait (on SQLite, on sockets): 64 let ~60 slow or stalled clients (each dropped within
# slowclients' deadlines) sit beside the connector's polls without delaying them.
THREADS = 64

LOGCONFIG = {
    "version": 1, "disable_existing_loggers": False,
    "formatters": {"json": {"()": "ce.logs.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {"gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
                "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
                "sh": {"level": "WARNING"}},
}


class AppAccessLogger(Logger):
    """The app logs each request itself (JSON, with the step id); gunicorn's own access line would be built from
    its atoms on every poll only to be dropped."""

    def access(self, resp, req, environ, request_time):
        return None


class CeServer(BaseApplication):
    def __init__(self, boot: Bootstrap, *, threads: int = THREADS, default_timeout: int = DEFAULT_TIMEOUT,
                 cancel_grace: float = CANCEL_GRACE, verbose: bool = False):
        self.boot, self.default_timeout, self.cancel_grace = boot, default_timeout, cancel_grace
        self.context = tls.server_context(boot.tls.cert, boot.tls.key, boot.tls.client_ca)
        self.context.sslsocket_class = DeadlineSocket      # slow clients cannot hold the threads
        self.options = {
            "bind": [f"[{boot.host}]:{boot.port}" if ":" in boot.host else f"{boot.host}:{boot.port}"],
            "workers": 1, "worker_class": worker_class(), "threads": threads,
            "certfile": str(boot.tls.cert), "keyfile": str(boot.tls.key), "ca_certs": str(boot.tls.client_ca),
            "cert_reqs": 2,                            # ssl.CERT_REQUIRED
            "ssl_context": lambda config, default: self.context,
            "timeout": 60, "graceful_timeout": 20, "keepalive": 30,
            "accesslog": None, "logconfig_dict": {**LOGCONFIG, "root": {**LOGCONFIG["root"],
                                                  "level": "DEBUG" if verbose else "INFO"}},
            "control_socket_disable": True, "proc_name": "ce-serve", "logger_class": AppAccessLogger,
            "worker_exit": self._worker_exit,
            "post_worker_init": lambda worker: lower_this_thread(),     # polls yield the CPU to steps
        }
        self.app = None
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self):
        from .app import create_app
        logs.add_secret(self.boot.token)
        self.app = create_app(self.boot, default_timeout=self.default_timeout, cancel_grace=self.cancel_grace)
        return self.app

    def _worker_exit(self, server, worker):
        """Stop running steps with the service (a restart then reports them as interrupted)."""
        if self.app is not None:
            self.app.extensions["ce"]["supervisor"].shutdown()


def worker_class() -> str:
    if os.environ.get(WORKER_ENV) == gthread.STOCK_WORKER_CLASS:
        log.warning("%s=%s: gunicorn's stock gthread worker, whose event loop waits on clients being dropped",
                    WORKER_ENV, gthread.STOCK_WORKER_CLASS)
        return gthread.STOCK_WORKER_CLASS
    return gthread.WORKER_CLASS


def check_state_dir(boot: Bootstrap) -> None:
    """Fail in one line before gunicorn starts, rather than with a worker that cannot boot."""
    try:
        boot.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BootstrapInvalid(f"state_dir {boot.state_dir} cannot be created: {exc.strerror}") from None
    if not os.access(boot.state_dir, os.W_OK | os.X_OK):
        raise BootstrapInvalid(f"state_dir {boot.state_dir} is not writable by this user")


def serve(boot: Bootstrap, **kwargs) -> None:
    check_state_dir(boot)
    gthread.check()
    logs.setup()
    logs.add_secret(boot.token)
    log.info("serving on %s (mutual TLS, client CA %s)", boot.listen, boot.tls.client_ca)
    CeServer(boot, **kwargs).run()
