"""`make bench`'s load scripts run end to end on small settings (the figures themselves are not asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support import ROOT


def last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def test_load_export_compares_loaded_and_unloaded_exports():
    # smbd's own sockets live under the bench's directory: a short one, as pytest's tmp_path is too deep for them.
    tmp_path = Path(tempfile.mkdtemp(prefix="cbl-"))
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "load_export.py"), "--pollers", "12", "--procs", "2",
                          "--size-mb", "48", "--rounds", "1", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    figures = last_json(run.stdout)
    assert figures["errors"] == 0 and figures["polls"] >= 12          # each poller polled at least once
    assert figures["throughput_ratio"] > 0 and len(figures["round_ratios"]) == 1
    assert figures["server_p99_ms"] >= 0 and figures["server_cpu_ms_per_poll"] > 0
    assert "loaded / unloaded" in run.stdout
    assert list(tmp_path.iterdir()) == []
    tmp_path.rmdir()


def test_load_polls_a_running_step(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--pollers", "12", "--procs", "2",
                          "--step", "test-wait", "--seconds", "4"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    figures = last_json(run.stdout)
    assert figures["errors"] == 0 and figures["requests"] >= 24
    assert figures["server_p50_ms"] >= 0


def test_slowclients_compares_polls_beside_dropped_clients():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "slowclients.py"), "--plain", "2", "--certified", "2",
                          "--seconds", "3", "--quiet-seconds", "2", "--request-seconds", "2"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    figures = last_json(run.stdout)
    for worker in ("ce", "gthread"):
        for case in ("quiet", "slow_clients"):
            assert figures["workers"][worker][case]["polls"] >= 1
            assert figures["workers"][worker][case]["p99_ms"] > 0
        assert figures["workers"][worker]["dropped"].get("plain", 0) >= 1
    assert "stock worker's polls p99" in run.stdout
