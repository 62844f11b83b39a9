"""The step server under polling load: >= 100 connectors polling one running step.

    python bench/load.py [--pollers 100] [--interval 1.0] [--seconds 180]

Starts the real server (gunicorn, mutual TLS, generated certificates) on 127.0.0.1, starts a real ``inspect`` of
the sample image (``--step test-wait``, or when the image is not built: a test-only step that only waits), and runs ``--pollers`` threads, each with
its own TLS session, polling ``GET /v1/steps/{id}`` every ``--interval`` seconds while the step runs (for at most
``--seconds``). Reports requests, errors, throughput and latency p50/p90/p99/max, and whether the step still
succeeded. The pollers share this process's GIL and the 2 CPUs with the appliance, so latencies are an upper bound.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server_harness import Pki, ServerProcess  # noqa: E402

SAMPLE = ROOT / "images/build/win2019-vda2203-pvs.qcow2"
TERMINAL = ("succeeded", "failed", "canceled")


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))]


def poller(server: ServerProcess, url: str, interval: float, stop: threading.Event, latencies: list, errors: list):
    session = server.session()
    while not stop.is_set():
        started = time.perf_counter()
        try:
            response = session.get(url, timeout=30)
            took = time.perf_counter() - started
            if response.status_code != 200:
                errors.append(f"HTTP {response.status_code}")
            else:
                latencies.append(took)
                if response.json()["status"] in TERMINAL:
                    stop.set()
        except Exception as exc:           # counted, never fatal: the bench reports them
            errors.append(type(exc).__name__)
        stop.wait(max(0.0, interval - (time.perf_counter() - started)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between one poller's requests")
    parser.add_argument("--seconds", type=float, default=180, help="stop polling after this long")
    parser.add_argument("--step", choices=("inspect", "test-wait"), default="inspect",
                        help="the running step: a real inspect (default) or a test-only step that only waits")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ce-bench-load-") as tmp:
        tmp = Path(tmp)
        use_inspect = args.step == "inspect" and SAMPLE.exists()
        server = ServerProcess(tmp / "server", Pki(tmp / "pki"), disks=[str(SAMPLE)] if use_inspect else [])
        server.start()
        try:
            api, step_id = server.session(), f"bench-{uuid.uuid4().hex[:8]}"
            kind, params = (("inspect", {"disk": str(SAMPLE)}) if use_inspect
                            else ("test-wait", {"seconds": args.seconds}))
            api.post(server.url + "/v1/steps", json={"id": step_id, "type": kind, "params": params},
                     timeout=30).raise_for_status()
            url = f"{server.url}/v1/steps/{step_id}"
            stop, latencies, errors = threading.Event(), [], []
            threads = [threading.Thread(target=poller, args=(server, url, args.interval, stop, latencies, errors),
                                        daemon=True) for _ in range(args.pollers)]
            started = time.monotonic()
            for t in threads:
                t.start()
            stop.wait(args.seconds)
            stop.set()
            for t in threads:
                t.join(60)
            elapsed = time.monotonic() - started
            final = api.get(url, timeout=30).json()
            if final["status"] not in TERMINAL:
                api.post(url + "/cancel", timeout=30)
        finally:
            server.stop()

    lat = sorted(x * 1000 for x in latencies)
    report = {"step": kind, "step_status": final["status"], "pollers": args.pollers, "interval_s": args.interval,
              "seconds": round(elapsed, 1), "requests": len(lat), "errors": len(errors),
              "error_kinds": sorted(set(errors)), "rps": round(len(lat) / elapsed, 1),
              "p50_ms": round(percentile(lat, 50), 1), "p90_ms": round(percentile(lat, 90), 1),
              "p99_ms": round(percentile(lat, 99), 1), "max_ms": round(lat[-1], 1) if lat else None,
              "mean_ms": round(statistics.fmean(lat), 1) if lat else None}
    print(f"{args.pollers} pollers every {args.interval} s during a running {kind} step "
          f"({report['seconds']} s, step {final['status']}): {report['requests']} requests, "
          f"{report['errors']} errors, {report['rps']} req/s, latency p50 {report['p50_ms']} ms, "
          f"p99 {report['p99_ms']} ms, max {report['max_ms']} ms")
    print(json.dumps({**report, "load_average": Path("/proc/loadavg").read_text().split()[:3]}))
    return 0 if not errors and report["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
