"""The step server under polling load: >= 100 connectors polling one running step.

    python bench/load.py [--pollers 100] [--interval 1.0] [--seconds 180]

Starts the real server (gunicorn, mutual TLS, generated certificates) on 127.0.0.1, starts a real ``inspect`` of
the sample image (``--step test-wait``, or when the image is not built: a test-only step that only waits), and runs ``--pollers`` threads, each with
its own TLS session, polling ``GET /v1/steps/{id}`` every ``--interval`` seconds while the step runs (for at most
``--seconds``), spread over ``--procs`` client processes. Reports requests, errors, throughput and latency
p50/p90/p99/max as the clients see it and in the server's handler (its Server-Timing header), and whether the step
still succeeded. Clients, server and appliance share the machine's CPUs, so
latencies are an upper bound (the load average is printed with the figures).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ce.tls import OutboundPolicy, outbound_session  # noqa: E402
from tests.support.server_harness import Pki, ServerProcess  # noqa: E402

SAMPLE = ROOT / "images/build/win2019-vda2203-pvs.qcow2"
TERMINAL = ("succeeded", "failed", "canceled")


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))]


def server_timing(response) -> float | None:
    """The server's own time for a request in ms, from its ``Server-Timing: app;dur=...`` header."""
    for metric in response.headers.get("Server-Timing", "").split(","):
        name, _, params = metric.strip().partition(";")
        if name == "app" and params.startswith("dur="):
            return float(params[4:])
    return None


def poller(conn: dict, interval: float, stop, deadline: float, latencies: list, errors: list,
           connects: list, handled: list) -> None:
    """Polls until the step ends; a session's first request (TCP + TLS handshake) is timed apart."""
    session = outbound_session(OutboundPolicy(ca=Path(conn["ca"])), client_cert=(conn["cert"], conn["key"]))
    session.headers["Authorization"] = f"Bearer {conn['token']}"
    warm = False
    while not stop.is_set() and time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            response = session.get(conn["url"], timeout=30)
            took = time.perf_counter() - started
            if response.status_code != 200:
                errors.append(f"HTTP {response.status_code}")
            else:
                (latencies if warm else connects).append(took)
                handled.append(server_timing(response))
                warm = True
                if response.json()["status"] in TERMINAL:
                    stop.set()
        except Exception as exc:           # counted, never fatal: the bench reports them
            errors.append(type(exc).__name__)
        stop.wait(max(0.0, interval - (time.perf_counter() - started)))


def poller_process(conn: dict, threads: int, interval: float, seconds: float, stop, results) -> None:
    """``threads`` pollers in one process (several processes keep one GIL from serialising all clients)."""
    latencies, errors, connects, handled, deadline = [], [], [], [], time.monotonic() + seconds
    workers = [threading.Thread(target=poller, args=(conn, interval, stop, deadline, latencies, errors, connects,
                                                     handled))
               for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    results.put((latencies, errors, connects, handled))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument("--procs", type=int, default=4, help="client processes the pollers are spread over")
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
            conn = {"url": url, "ca": str(server.pki.ca.cert_path), "cert": str(server.pki.client.cert),
                    "key": str(server.pki.client.key), "token": server.token}
            mp = multiprocessing.get_context("spawn")
            stop, results = mp.Event(), mp.Queue()
            shares = [args.pollers // args.procs + (i < args.pollers % args.procs) for i in range(args.procs)]
            procs = [mp.Process(target=poller_process, args=(conn, n, args.interval, args.seconds, stop, results))
                     for n in shares if n]
            started = time.monotonic()
            for p in procs:
                p.start()
            latencies, errors, connects, handled = [], [], [], []
            for _ in procs:
                got_latencies, got_errors, got_connects, got_handled = results.get()
                latencies += got_latencies
                errors += got_errors
                connects += got_connects
                handled += [ms for ms in got_handled if ms is not None]
            for p in procs:
                p.join()
            elapsed = time.monotonic() - started
            final = api.get(url, timeout=30).json()
            if final["status"] not in TERMINAL:
                api.post(url + "/cancel", timeout=30)
        finally:
            server.stop()
        handled.sort()

    lat = sorted(x * 1000 for x in latencies)
    first = sorted(x * 1000 for x in connects)
    report = {"step": kind, "step_status": final["status"], "pollers": args.pollers, "interval_s": args.interval,
              "seconds": round(elapsed, 1), "requests": len(lat) + len(first), "errors": len(errors),
              "error_kinds": sorted(set(errors)), "rps": round((len(lat) + len(first)) / elapsed, 1),
              "p50_ms": round(percentile(lat, 50), 1), "p90_ms": round(percentile(lat, 90), 1),
              "p99_ms": round(percentile(lat, 99), 1), "max_ms": round(lat[-1], 1) if lat else None,
              "mean_ms": round(statistics.fmean(lat), 1) if lat else None,
              "server_p50_ms": round(percentile(handled, 50), 2), "server_p99_ms": round(percentile(handled, 99), 2),
              "server_max_ms": handled[-1] if handled else None,
              "first_request_p50_ms": round(percentile(first, 50), 1),
              "first_request_max_ms": round(first[-1], 1) if first else None}
    print(f"{args.pollers} pollers every {args.interval} s during a running {kind} step "
          f"({report['seconds']} s, step {final['status']}): {report['requests']} requests, "
          f"first request (TCP + TLS handshake) p50 {report['first_request_p50_ms']} ms; then "
          f"{report['errors']} errors, {report['rps']} req/s, latency p50 {report['p50_ms']} ms, "
          f"p99 {report['p99_ms']} ms, max {report['max_ms']} ms; in the server's handler p50 "
          f"{report['server_p50_ms']} ms, p99 {report['server_p99_ms']} ms")
    print(json.dumps({**report, "load_average": Path("/proc/loadavg").read_text().split()[:3]}))
    return 0 if not errors and lat else 1


if __name__ == "__main__":
    sys.exit(main())
