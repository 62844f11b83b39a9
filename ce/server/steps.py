"""The step types the server offers: every module under ``steps/`` (each registers itself), plus the modules named
in ``CE_EXTRA_STEP_MODULES`` (comma-separated; site-specific steps, or test-only steps in the test suite)."""
from __future__ import annotations

import importlib
import os

from ..step import StepType, load_all

EXTRA_ENV = "CE_EXTRA_STEP_MODULES"


def step_types() -> dict[str, StepType]:
    for name in filter(None, (m.strip() for m in os.environ.get(EXTRA_ENV, "").split(","))):
        importlib.import_module(name)
    return load_all()
