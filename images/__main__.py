"""python -m images build [NAME ...] [--force] | list"""
from __future__ import annotations

import argparse
import logging

from .build import build, is_fresh
from .spec import load_all


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m images", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build stale sample images into images/build/")
    b.add_argument("names", nargs="*", help="spec names (default: all)")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    sub.add_parser("list", help="list specs and whether their image is built")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("sh").setLevel(logging.WARNING)
    if args.command == "build":
        build(args.names, force=args.force)
    else:
        for spec in load_all().values():
            state = "built" if is_fresh(spec) else "stale"
            print(f"{spec.name:28} {state:6} {spec.path.name:32} {spec.description}")


if __name__ == "__main__":
    main()
