"""Disk files the tests make: sparse files with random data in chosen extents, the disks a step-server module
serves, and a writable child of a sample image."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ce import disks
from ce.registry import sha256_file

MiB = 1 << 20


def write_extents(path: Path, size: int, extents: list[tuple[int, int]]) -> Path:
    """A sparse file of ``size`` bytes with random data only in ``extents`` (offset, length)."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in extents:
            f.seek(offset)
            for done in range(0, length, 8 * MiB):
                f.write(os.urandom(min(8 * MiB, length - done)))
    return path


def step_files(base: Path, size: int, extents: list[tuple[int, int]], attached: dict[str, str]) -> dict[str, Path]:
    """What a server module's steps work on, under ``base``: ``golden`` (a raw disk of ``size`` bytes with random
    data in ``extents``), an empty file for each of ``attached`` (name: file name; disks a step may write -- over
    the server a local output is an attached disk, replaced) and an empty ``scratch`` directory for the steps."""
    files = {"base": base, "golden": write_extents(base / "golden.raw", size, extents), "scratch": base / "scratch"}
    files["scratch"].mkdir()
    for name, file_name in attached.items():
        files[name] = base / file_name
        files[name].touch()
    return files


@contextmanager
def writable_child(sample, work: Path) -> Iterator[str]:
    """A qcow2 child of the sample image ``sample`` (an images.spec.Spec) in ``work``, to write to; the sample itself
    is never written (checked on the way out)."""
    before = sha256_file(sample.path)
    yield disks.create_child(str(sample.path), str(work / "child.qcow2"), parent_fmt=sample.format).path
    assert sha256_file(sample.path) == before
