"""The operations: one module per step type, each with its params model, plan() and apply().

``STEPS`` is the registry, explicit: the CLI and the server find the product's step types through the ``ce.steps``
entry point (pyproject.toml), which names this tuple. Importing a step module registers nothing.
"""
from . import convert, convert_to_uefi, diagnostics, export, hash, inspect, prepare, prepare_and_publish, publish, \
    reverse_image, upgrade_pvs

STEPS = (inspect.STEP, prepare.STEP, convert.STEP, export.STEP, publish.STEP, reverse_image.STEP, hash.STEP,
         prepare_and_publish.build(prepare.STEP, publish.STEP), diagnostics.STEP, convert_to_uefi.STEP,
         upgrade_pvs.STEP)
