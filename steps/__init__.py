"""The operations: one module per step type, each with its params model, plan() and apply().

``STEPS`` is the registry, explicit: the CLI and the server find the product's step types through the ``ce.steps``
entry point (pyproject.toml), which names this tuple. Importing a step module registers nothing, and importing this
package imports no step module: ``STEPS`` is built on first use.

``COMMANDS`` is the command line's index of the step commands ``STEPS`` holds, in its order (by step name):
``{command: (help, load)}``, ``load()`` giving that one step type. With it ``ce --help`` imports no step module and
``ce hash`` only the hash step's (ce/cli/lazy.py); tests/unit/test_startup.py checks it against ``STEPS``.
"""
from __future__ import annotations

import importlib

MODULES = ("convert", "convert_to_uefi", "diagnostics", "export", "hash", "inspect", "prepare", "prepare_and_publish",
           "publish", "reverse_image", "upgrade_pvs")


def _step(module: str):
    return importlib.import_module(f"{__name__}.{module}").STEP


def _prepare_and_publish():
    return importlib.import_module(f"{__name__}.prepare_and_publish").build(_step("prepare"), _step("publish"))


def _steps() -> tuple:
    return (_step("inspect"), _step("prepare"), _step("convert"), _step("export"), _step("publish"),
            _step("reverse_image"), _step("hash"), _prepare_and_publish(), _step("diagnostics"),
            _step("convert_to_uefi"), _step("upgrade_pvs"))


COMMANDS = {
    "convert": ("convert a disk between raw, qcow2, vhd, vhdx and vmdk (local or SMB)", lambda: _step("convert")),
    "convert-to-uefi": ("convert a BIOS/MBR vDisk on a share to UEFI/GPT (a differencing child beside it)",
                        lambda: _step("convert_to_uefi")),
    "diagnostics": ("collect logs and data into a zip file on an SMB share", lambda: _step("diagnostics")),
    "export": ("export a disk to a VHDX (or VHD) file on an SMB share", lambda: _step("export")),
    "hash": ("md5 / sha256 of a disk's contents (or of the file with --file)", lambda: _step("hash")),
    "prepare-and-publish": ("prepare a disk, then publish it as a vDisk in a PVS store on SMB", _prepare_and_publish),
    "publish": ("publish a prepared disk as a vDisk in a PVS store on SMB", lambda: _step("publish")),
    "reverse-image": ("write a VHD(X) from an SMB share onto a disk as raw blocks", lambda: _step("reverse_image")),
    "upgrade-pvs": ("stage a PVS target device upgrade in a vDisk on a share (a differencing child beside it)",
                    lambda: _step("upgrade_pvs")),
}


def __getattr__(name: str):
    """``STEPS`` built once, on first use; ``steps.convert`` and the like imported when first named."""
    if name == "STEPS":
        globals()["STEPS"] = found = _steps()
        return found
    if name in MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
