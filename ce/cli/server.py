"""`ce serve --bootstrap FILE` and `ce client --bootstrap FILE ... steps create|get|wait|cancel|log`."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import ClientCertMissing, InvalidParams

EXIT_OK, EXIT_ERROR = 0, 1


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the step API over mutual TLS (gunicorn), configured by a bootstrap file")
    p.add_argument("--bootstrap", required=True, help="the job's bootstrap.json")
    p.add_argument("--threads", type=int, default=64, help="request threads (default 64)")
    p.add_argument("--step-timeout", type=int, default=None,
                   help="seconds a step may run when its params give no timeout (default 7200)")
    p.add_argument("--cancel-grace", type=float, default=None,
                   help="seconds a canceled or timed-out step has to stop by itself before its processes are "
                        "killed (default 15)")
    p.set_defaults(func=cmd_serve)

    c = sub.add_parser("client", help="the connector's side of the step API (for operators and tests)")
    c.add_argument("--bootstrap", required=True, help="the job's bootstrap.json (token, server certificate, port)")
    c.add_argument("--cert", default=os.environ.get("CE_CLIENT_CERT"),
                   help="client certificate signed by the bootstrap's client CA (default $CE_CLIENT_CERT)")
    c.add_argument("--key", default=os.environ.get("CE_CLIENT_KEY"), help="its key (default $CE_CLIENT_KEY)")
    c.add_argument("--ca", help="CA (or certificate) to trust for the server (default: the bootstrap's tls.cert)")
    c.add_argument("--url", help="server URL (default https://127.0.0.1:<listen port>)")
    c.add_argument("--no-check-hostname", action="store_true", help="do not match the server name to its certificate")
    what = c.add_subparsers(dest="what", required=True)
    for name, doc in (("health", "liveness"), ("disks", "attached disks"), ("types", "step types and their params")):
        what.add_parser(name, help=doc).set_defaults(func=cmd_client, action=name)
    steps = what.add_parser("steps", help="create, get, wait for, cancel a step or read its log")
    act = steps.add_subparsers(dest="action", required=True)
    p = act.add_parser("create", help="start a step (idempotent on --id)")
    p.add_argument("--id", default=None, help="step id (default: a new UUID)")
    p.add_argument("--type", required=True, help="step type, e.g. inspect")
    p.add_argument("--params", default="{}", help="params as JSON, or @FILE to read them from a file")
    p.add_argument("--wait", action="store_true", help="then wait for it, with a progress bar")
    p.set_defaults(func=cmd_client)
    for name, doc in (("get", "a step's status"), ("wait", "wait until the step ends (progress bar)"),
                      ("cancel", "cancel a step"), ("log", "a step's log lines")):
        p = act.add_parser(name, help=doc)
        p.add_argument("id")
        if name == "wait":
            p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
            p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
        if name == "log":
            p.add_argument("--since", type=int, default=0, help="only lines after this seq")
        p.set_defaults(func=cmd_client)


def cmd_serve(args) -> int:
    from ..server.bootstrap import load
    from ..server.serve import serve
    from ..server.supervisor import CANCEL_GRACE, DEFAULT_TIMEOUT
    serve(load(args.bootstrap), threads=args.threads, default_timeout=args.step_timeout or DEFAULT_TIMEOUT,
          cancel_grace=CANCEL_GRACE if args.cancel_grace is None else args.cancel_grace, verbose=args.verbose)
    return EXIT_OK


def read_params(text: str) -> dict:
    try:
        params = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    except (OSError, ValueError) as exc:
        raise InvalidParams(f"--params: not JSON ({exc})") from None
    if not isinstance(params, dict):
        raise InvalidParams("--params must be a JSON object")
    return params


def cmd_client(args) -> int:
    from ..client import TERMINAL, Client, ProgressBar
    if not args.cert or not args.key:
        raise ClientCertMissing("a client certificate is required: --cert and --key (or $CE_CLIENT_CERT, "
                                "$CE_CLIENT_KEY)")
    client = Client.from_bootstrap(args.bootstrap, args.cert, args.key, ca=args.ca, url=args.url,
                                   check_hostname=not args.no_check_hostname)
    action = args.action
    if action in ("health", "disks", "types"):
        out = getattr(client, action)()
    elif action == "create":
        import uuid                               # only here: ce's start-up skips it
        out = client.create(args.id or str(uuid.uuid4()), args.type, read_params(args.params))
        if args.wait:
            out = client.wait(out["id"], on_update=ProgressBar())
    elif action == "get":
        out = client.get(args.id)
    elif action == "wait":
        out = client.wait(args.id, interval=args.interval, timeout=args.timeout, on_update=ProgressBar())
    elif action == "cancel":
        out = client.cancel(args.id)
    else:
        for line in client.log(args.id, args.since)["lines"]:
            print(f"{line['seq']:>5} {line['time']} {line['level']:<7} {line['message']}")
        return EXIT_OK
    print(json.dumps(out, indent=2))
    if isinstance(out, dict) and out.get("status") in TERMINAL and out["status"] != "succeeded" \
            and action in ("wait", "create"):
        return EXIT_ERROR
    sys.stdout.flush()
    return EXIT_OK
