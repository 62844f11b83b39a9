"""An export under polling load: 200 connectors polling the step while it streams a 1 GiB disk to the share.

    python bench/load_export.py [--pollers 200] [--procs 4] [--interval 1.0] [--size-mb 1024] [--rounds 7]
                                [--shared-cpus]

Starts the real server (gunicorn, mutual TLS, generated certificates, as configured in production) and a real smbd
on 127.0.0.1, makes a disk of ``--size-mb`` random bytes, exports it once to warm up (not counted), then runs
``--rounds`` pairs of exports of it through the API, interleaved: one *unloaded* (only this script checks on it,
twice a second) and one *loaded*, while ``--pollers`` pollers (threads with their own TLS sessions, spread over
``--procs`` client processes, connected before the export starts) poll ``GET /v1/steps/{id}`` every ``--interval``
seconds until it ends. The unloaded run starts and connects the same pollers; they just do not poll. Reports poll errors and latency (client side: p50 / p99 / max; the server's own time from
its ``Server-Timing`` header), the server's CPU per poll, and the export's throughput loaded and unloaded (from the
step's own ``seconds``, median of the rounds) as a ratio; the issue's target is a loaded export within 10 % of the
unloaded one.

The connectors poll from other hosts, so by default the pollers run on this machine's last CPU and everything of the
CE (server, export, smbd) on the others: the clients' own TLS and HTTP work stays off the CE's CPUs, as it does in
production. ``--shared-cpus`` lets them share all CPUs instead (the load average is printed).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import percentile, server_timing  # noqa: E402
from ce.tls import OutboundPolicy, outbound_session  # noqa: E402
from tests.support.server_harness import Pki, ServerProcess  # noqa: E402
from tests.support.smbserver import PASSWORD, USER, SambaServer  # noqa: E402

MiB = 1 << 20
TERMINAL = ("succeeded", "failed", "canceled")
TARGET = 0.9


def make_disk(path: Path, size_mb: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(MiB))
        os.fsync(f.fileno())


# ---------------------------------------------------------------- pollers (in client processes)

def poller(conn: dict, interval: float, go, stop, out: dict) -> None:
    """Polls from ``go`` until ``stop`` or the step's end; every poll's latency and the server's own time."""
    session = outbound_session(OutboundPolicy(ca=Path(conn["ca"])), client_cert=(conn["cert"], conn["key"]))
    session.headers["Authorization"] = f"Bearer {conn['token']}"
    try:
        session.get(conn["base"] + "/v1/health", timeout=60)      # TCP + TLS before the export starts
    except Exception as exc:                                     # counted, never fatal
        out["errors"].append(f"connect {type(exc).__name__}")
    go.wait()
    url = f"{conn['base']}/v1/steps/{conn['step']}"
    while not stop.is_set():
        started = time.perf_counter()
        try:
            response = session.get(url, timeout=60)
            out["latencies"].append(time.perf_counter() - started)
            out["handled"].append(server_timing(response))
            if response.status_code != 200:
                out["errors"].append(f"HTTP {response.status_code}")
            elif response.json()["status"] in TERMINAL:
                stop.set()
        except Exception as exc:
            out["errors"].append(type(exc).__name__)
        stop.wait(max(0.0, interval - (time.perf_counter() - started)))


def poller_process(conn: dict, threads: int, interval: float, ready, go, stop, results, cpus=None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    out = {"latencies": [], "errors": [], "handled": []}
    workers = [threading.Thread(target=poller, args=(conn, interval, go, stop, out)) for _ in range(threads)]
    for t in workers:
        t.start()
    ready.release()
    for t in workers:
        t.join()
    results.put(out)


# ---------------------------------------------------------------- exports

def export_params(disk: Path, samba: SambaServer, name: str) -> dict:
    return {"disk": str(disk), "SmbDiskName": name,
            "outputStorageLocation": {"Location": samba.unc("share"), "port": samba.port,
                                      "credentials": {"username": USER, "password": PASSWORD}}}


def run_export(server: ServerProcess, api, disk: Path, samba: SambaServer, step_id: str, before_start=None) -> dict:
    for previous in samba.share_dir("share").glob("*.vhdx"):
        previous.unlink()                 # just before: the next writer reuses its memory at once (see below)
    response = api.post(server.url + "/v1/steps", json={"id": step_id, "type": "export",
                                                        "params": export_params(disk, samba, step_id)}, timeout=60)
    response.raise_for_status()
    if before_start:
        before_start()
    while True:
        doc = api.get(f"{server.url}/v1/steps/{step_id}", timeout=60).json()
        if doc["status"] in TERMINAL:
            break
        time.sleep(0.5)
    if doc["status"] != "succeeded":
        raise SystemExit(f"export {step_id} {doc['status']}: {doc['error']}")
    return doc["result"]


def server_cpu_seconds(server: ServerProcess) -> float:
    """CPU time so far of the gunicorn worker (every thread; not its step processes): the arbiter's one child."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(") ")[2].split()
        except OSError:
            continue
        if int(fields[1]) == server.proc.pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def export_beside_pollers(server: ServerProcess, api, disk: Path, samba: SambaServer, args,
                          polling: bool) -> tuple[dict, dict]:
    """One export with the pollers' processes started and connected; they poll it only when ``polling``.

    The unloaded run goes through the same set-up (processes, handshakes, the same pause) so that the only
    difference is the polling. It matters here: this machine hands freed memory back to its host after about two
    seconds (virtio-balloon free page reporting), and refilling it costs the next writer -- smbd, writing the file
    into the page cache -- up to twice its CPU. So the previous export's file is deleted just before the next
    export starts, as a CE's page cache is recycled in place when it exports a real disk."""
    step_id = f"{'loaded' if polling else 'unloaded'}-{uuid.uuid4().hex[:8]}"
    conn = {"base": server.url, "step": step_id, "ca": str(server.pki.ca.cert_path),
            "cert": str(server.pki.client.cert), "key": str(server.pki.client.key), "token": server.token}
    mp = multiprocessing.get_context("spawn")
    ready, go, stop, results = mp.Semaphore(0), mp.Event(), mp.Event(), mp.Queue()
    shares = [args.pollers // args.procs + (i < args.pollers % args.procs) for i in range(args.procs)]
    procs = [mp.Process(target=poller_process, args=(conn, n, args.interval, ready, go, stop, results,
                                                                   args.poller_cpus))
             for n in shares if n]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    time.sleep(2)                                     # the pollers' first requests (handshakes) are done
    cpu = server_cpu_seconds(server)
    result = run_export(server, api, disk, samba, step_id, before_start=go.set if polling else None)
    stop.set()
    go.set()
    load = {"latencies": [], "errors": [], "handled": []}
    for _ in procs:
        got = results.get()
        for key in load:
            load[key] += got[key]
    for p in procs:
        p.join()
    load["server_cpu"] = server_cpu_seconds(server) - cpu
    return result, load


def default_dir(size_mb: int) -> str | None:
    """Memory (/dev/shm) when it holds the disk and two exports: the question is what polls cost the export, and
    a disk file system adds its own noise -- here ext4 mounted ``discard`` trims each deleted 1 GiB export in the
    next one's time, which moved single runs by up to 2x."""
    shm = Path("/dev/shm")
    try:
        free = os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize
    except OSError:
        return None
    return str(shm) if free > 4 * size_mb * MiB else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--procs", type=int, default=4, help="client processes the pollers are spread over")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between one poller's requests")
    parser.add_argument("--size-mb", type=int, default=1024, help="the disk's size (random bytes)")
    parser.add_argument("--rounds", type=int, default=7,
                        help="pairs of unloaded + loaded exports (odd: a true median; single runs vary by 20-40 % here)")
    parser.add_argument("--dir", help="where the disk and the share live (default: /dev/shm when it has room)")
    parser.add_argument("--shared-cpus", action="store_true",
                        help="pollers, server, export and smbd on all CPUs (by default the pollers get the last CPU "
                             "to themselves, as when the connectors poll from other hosts)")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    args.poller_cpus = None
    if not args.shared_cpus and len(cpus) > 1:
        args.poller_cpus = {cpus[-1]}
        os.sched_setaffinity(0, set(cpus[:-1]))

    with tempfile.TemporaryDirectory(prefix="ce-bench-load-export-", dir=args.dir or default_dir(args.size_mb)) as tmp:
        tmp = Path(tmp)
        disk, scratch = tmp / "golden.raw", tmp / "scratch"
        scratch.mkdir()
        make_disk(disk, args.size_mb)
        samba = SambaServer(tmp / "samba").start()
        os.environ["CE_SCRATCH"] = str(scratch)
        server = ServerProcess(tmp / "server", Pki(tmp / "pki"), disks=[str(disk)])
        try:
            server.start()
            api = server.session()
            warmup = run_export(server, api, disk, samba, f"warmup-{uuid.uuid4().hex[:8]}")
            unloaded, loaded, loads = [], [], []
            for _ in range(args.rounds):
                unloaded.append(export_beside_pollers(server, api, disk, samba, args, polling=False)[0])
                result, load = export_beside_pollers(server, api, disk, samba, args, polling=True)
                loaded.append(result)
                loads.append(load)
        finally:
            server.stop()
            samba.stop()
    handled = sorted(ms for load in loads for ms in load["handled"] if ms is not None)
    cpu_per_poll = sum(load["server_cpu"] for load in loads) * 1000 / max(1, sum(len(ld["latencies"]) for ld in loads))

    latencies = sorted(x * 1000 for load in loads for x in load["latencies"])
    errors = [e for load in loads for e in load["errors"]]
    size = args.size_mb * MiB
    rate_unloaded = statistics.median(size / r["seconds"] / 1e6 for r in unloaded)
    rate_loaded = statistics.median(size / r["seconds"] / 1e6 for r in loaded)
    ratio = rate_loaded / rate_unloaded
    pairs = sorted(u["seconds"] / ld["seconds"] for u, ld in zip(unloaded, loaded))
    where = ("sharing all CPUs with the CE" if args.poller_cpus is None
             else f"on CPU {min(args.poller_cpus)}, the CE on CPU {', '.join(map(str, cpus[:-1]))}")
    print(f"export of a {args.size_mb} MiB random disk to smbd on 127.0.0.1 (VHDX), {args.rounds} rounds, "
          f"median; {args.pollers} pollers every {args.interval} s during the loaded runs, {where}; "
          f"warm-up export {warmup['seconds']:.1f} s (not counted)")
    print(f"{'':<24}{'seconds':>9}{'MB/s':>8}")
    for label, results, rate in (("unloaded", unloaded, rate_unloaded), ("loaded", loaded, rate_loaded)):
        print(f"{'export ' + label:<24}{statistics.median(r['seconds'] for r in results):>9.1f}{rate:>8.0f}")
    print(f"{'loaded / unloaded':<24}{'':>9}{ratio:>8.2f}  target >= {TARGET} "
          f"({'met' if ratio >= TARGET else 'MISSED'}); round by round {pairs[0]:.2f} .. {pairs[-1]:.2f}, unloaded "
          f"runs alone {min(r['seconds'] for r in unloaded):.1f} .. {max(r['seconds'] for r in unloaded):.1f} s")
    print(f"polls {len(latencies)}, errors {len(errors)}{' ' + str(sorted(set(errors))) if errors else ''}; "
          f"latency ms p50 {percentile(latencies, 50):.1f}  p99 {percentile(latencies, 99):.1f}  "
          f"max {latencies[-1] if latencies else float('nan'):.1f}; in the server's handler p50 "
          f"{percentile(handled, 50):.3f}  p99 {percentile(handled, 99):.3f}; server CPU {cpu_per_poll:.2f} ms per poll")
    print(json.dumps({"pollers": args.pollers, "interval_s": args.interval, "size_mb": args.size_mb,
                      "rounds": args.rounds, "polls": len(latencies), "errors": len(errors),
                      "p50_ms": round(percentile(latencies, 50), 1), "p99_ms": round(percentile(latencies, 99), 1),
                      "server_p50_ms": round(percentile(handled, 50), 2),
                      "server_p99_ms": round(percentile(handled, 99), 2),
                      "server_cpu_ms_per_poll": round(cpu_per_poll, 3), "pollers_own_cpu": args.poller_cpus is not None,
                      "unloaded_seconds": [r["seconds"] for r in unloaded],
                      "loaded_seconds": [r["seconds"] for r in loaded], "throughput_ratio": round(ratio, 3),
                      "round_ratios": [round(x, 3) for x in pairs],
                      "load_average": Path("/proc/loadavg").read_text().split()[:3]}))
    return 0 if not errors and latencies else 1


if __name__ == "__main__":
    sys.exit(main())
