"""How deep the fault suite (tests/faults) goes. tests/conftest.py sets ``DEPTH`` from the pytest options
``--fault-points``, ``--fault-bytes`` and ``--fault-requests``, whose defaults are the CE_FAULT_POINTS,
CE_FAULT_BYTES and CE_FAULT_REQUESTS variables; the fault modules read it when they are collected."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

SAMPLE, ALL = "sample", "all"


@dataclass
class Depth:
    points: str = "3"          # a prepare killed at N libguestfs calls of its apply, spread evenly; "all": every second
    bytes: str = SAMPLE        # byte moves: one kill per kind of phase at 50 %; "all": every phase at 10/50/90 %
    requests: str = SAMPLE     # hostile values: a sample of those that reach a running step; "all": every one

    def every(self, kind: str) -> bool:
        """True when the ``kind`` ("points", "bytes", "requests") of faults is to be run in full."""
        return getattr(self, kind) == ALL


DEPTH = Depth()


def points(text: str) -> str:
    """``all`` or a positive number of kill points."""
    if text != ALL and not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected 'all' or a positive number")
    return text


def add_options(parser) -> None:
    group = parser.getgroup("faults", "depth of the fault suite (tests/faults)")
    group.addoption("--fault-points", type=points, default=os.environ.get("CE_FAULT_POINTS", Depth.points),
                    metavar="N|all", help="kill points of a prepare's apply: N spread evenly, or all (every second "
                                          "libguestfs call, >= 50; ~1 h). Default: $CE_FAULT_POINTS or 3")
    for name, what in (("bytes", "byte moves killed: one per kind of phase at 50 %, or every phase at 10/50/90 %"),
                       ("requests", "hostile values run to their end: a sample, or every one")):
        variable = f"CE_FAULT_{name.upper()}"
        group.addoption(f"--fault-{name}", choices=(SAMPLE, ALL), default=ALL if os.environ.get(variable) == ALL
                        else SAMPLE, help=f"{what}. Default: all if ${variable}=all, else sample")


def configure(config) -> None:
    DEPTH.points = config.getoption("fault_points")
    DEPTH.bytes = config.getoption("fault_bytes")
    DEPTH.requests = config.getoption("fault_requests")
