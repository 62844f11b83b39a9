"""ce's gunicorn worker (ce/server/gthread.py) against the gunicorn installed: it overrides ThreadWorker internals, so
the version is pinned and ``ce serve`` refuses a gunicorn that lacks them. Its behaviour -- polls stay fast while
clients are being dropped -- is tests/faults/test_faults_requests.py::test_clients_being_dropped_do_not_stall_polls.
"""
from __future__ import annotations

import re

import gunicorn
import pytest
from gunicorn.workers import base, gthread as stock

from ce.errors import CeError
from ce.server import gthread
from tests.support import ROOT


def test_gunicorn_is_the_version_pinned_and_tested():
    pins = re.findall(r'"gunicorn==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pins == [gthread.TESTED] == [gunicorn.__version__]


def test_the_installed_gthread_worker_has_what_ces_overrides():
    gthread.check()
    overridden = {name for name, value in vars(gthread.CeThreadWorker).items() if callable(value)}
    assert overridden == {"handle", "finish_request"}
    assert all(callable(getattr(stock.ThreadWorker, name)) for name in overridden)


def test_a_worker_without_them_is_refused():
    class Older(base.Worker):                  # a gthread worker whose loop has no finish_request to override
        def handle(self, listener, client, addr):
            pass

    with pytest.raises(CeError) as refused:
        gthread.check(Older)
    assert "ThreadWorker.handle(conn), ThreadWorker.finish_request(conn, fs)" in refused.value.message
    assert gthread.TESTED in refused.value.message
