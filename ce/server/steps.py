"""The step types the server offers: the product's (``ce.step.step_types``), plus the ``STEPS`` of each module
named in ``CE_EXTRA_STEP_MODULES`` (comma-separated; site-specific steps, or the test suite's own test steps)."""
from __future__ import annotations

import os

from ..step import StepType
from ..step import step_types as product_step_types

EXTRA_ENV = "CE_EXTRA_STEP_MODULES"


def step_types() -> dict[str, StepType]:
    extra = tuple(filter(None, (m.strip() for m in os.environ.get(EXTRA_ENV, "").split(","))))
    return product_step_types(extra)
