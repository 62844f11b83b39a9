"""Polls beside slow and hostile clients being dropped (issue 16, item 2), with ce's worker and gunicorn's stock one.

    python bench/slowclients.py [--plain 10] [--certified 10] [--seconds 45] [--quiet-seconds 15]
                                [--request-seconds S] [--workers ce,gthread]

For each worker (``ce``: ce/server/gthread.py, what ``ce serve`` runs; ``gthread``: gunicorn's stock gthread worker,
``CE_SERVE_WORKER=gthread``) starts the real server (gunicorn, mutual TLS, generated certificates) on 127.0.0.1 and
polls ``GET /v1/health`` on one kept-alive connection (the connector's way) every 0.1 s: first for
``--quiet-seconds`` with no other client, then for ``--seconds`` while ``--plain`` clients trickle bytes that are not
TLS and ``--certified`` clients (the connector's certificate) trickle a request that never ends, a byte every 0.1 s
each, connecting again whenever the server drops them (tests/support/slowclients.py). The server drops the plain
ones at once (their handshake fails) and the certified ones at its request deadline (ce/server/slowclients.py:
30 s; ``--request-seconds`` shortens it, so that they are dropped more often). Reports each case's polls p50 / p99
/ max (ms) side by side and the clients the server dropped. Clients and server share the machine's CPUs (the load
average is printed with the figures).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ce.server import slowclients as deadlines  # noqa: E402
from ce.server.serve import WORKER_ENV  # noqa: E402
from tests.support.server_harness import Pki, ServerProcess  # noqa: E402
from tests.support.slowclients import SlowClients, percentile, polls  # noqa: E402

WORKERS = {"ce": "ce (ce/server/gthread.py)", "gthread": "gunicorn's stock gthread"}


def figures(took: list[float]) -> dict:
    ms = [t * 1000 for t in took]
    return {"polls": len(ms), "p50_ms": round(percentile(ms, 50), 1), "p99_ms": round(percentile(ms, 99), 1),
            "max_ms": round(max(ms), 1)}


def measure(worker: str, pki: Pki, workdir: Path, args) -> dict:
    env = {WORKER_ENV: "gthread"} if worker == "gthread" else {}
    if args.request_seconds is not None:
        env["CE_SERVE_REQUEST_SECONDS"] = str(args.request_seconds)
    with ServerProcess(workdir / worker, pki, env=env) as server:
        quiet = polls(server, args.quiet_seconds)
        clients = SlowClients(server, plain=args.plain, certified=args.certified).start()
        try:
            time.sleep(2)                  # every slow client connected and trickling
            loaded = polls(server, args.seconds)
            dropped, connects = dict(clients.dropped), dict(clients.connects)
        finally:
            clients.stop()
    return {"quiet": figures(quiet), "slow_clients": figures(loaded), "dropped": dropped, "connections": connects}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", type=int, default=10, help="clients trickling bytes that are not TLS")
    parser.add_argument("--certified", type=int, default=10, help="clients with a certificate trickling a request")
    parser.add_argument("--seconds", type=float, default=45, help="polling beside the slow clients")
    parser.add_argument("--quiet-seconds", type=float, default=15, help="polling with no other client")
    parser.add_argument("--request-seconds", type=float, default=None,
                        help=f"the server's request deadline (default its own, {deadlines.REQUEST_SECONDS:g} s)")
    parser.add_argument("--workers", default="ce,gthread", help="comma-separated: ce, gthread")
    args = parser.parse_args()
    workers = [w for w in args.workers.split(",") if w]
    if not workers or set(workers) - set(WORKERS):
        parser.error(f"--workers: choose among {', '.join(WORKERS)}")

    results = {}
    with tempfile.TemporaryDirectory(prefix="ce-bench-slow-") as tmp:
        pki = Pki(Path(tmp) / "pki")
        for worker in workers:
            results[worker] = measure(worker, pki, Path(tmp), args)

    slow = f"{args.plain} plain + {args.certified} certified slow clients"
    deadline = args.request_seconds if args.request_seconds is not None else deadlines.REQUEST_SECONDS
    print(f"GET /v1/health on one kept-alive connection every 0.1 s; {slow} trickling a byte every 0.1 s and "
          f"dropped by the server (plain at their TLS handshake, certified at the {deadline:g} s request deadline)")
    print(f"{'worker':<28} {'beside':<40} {'polls':>6} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for worker, result in results.items():
        for case, beside in (("quiet", "no other client"), ("slow_clients", slow)):
            f = result[case]
            print(f"{WORKERS[worker]:<28} {beside:<40} {f['polls']:>6} {f['p50_ms']:>9} {f['p99_ms']:>9} "
                  f"{f['max_ms']:>9}")
        print(f"{'':<28} dropped by the server: {result['dropped']} of {result['connections']} connections")
    if {"ce", "gthread"} <= results.keys():
        stock, ours = results["gthread"]["slow_clients"], results["ce"]["slow_clients"]
        print(f"beside slow clients, the stock worker's polls p99 is {stock['p99_ms'] / ours['p99_ms']:.0f}x ce's "
              f"({stock['p99_ms']} ms vs {ours['p99_ms']} ms)")
    print(json.dumps({"workers": results, "plain": args.plain, "certified": args.certified,
                      "request_seconds": deadline, "load_average": Path("/proc/loadavg").read_text().split()[:3]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
