"""Readers of VHD / VHDX differencing children that are not ce's: libvhdi (python3-libvhdi's pyvhdi, and
``vhdiinfo``) and dissect.hypervisor. qemu-img is no verifier of children: it refuses VHDX children and reads a VHD
child's parent as zeros. Import this module only after ``pytest.importorskip`` of both (the tests say why)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pyvhdi
from dissect.hypervisor.disk import vhdx as vhdx_reader


def media(path: Path) -> tuple[int, bytes]:
    """(virtual size, bytes) of a base VHD / VHDX read by libvhdi."""
    f = pyvhdi.file()
    f.open(str(path))
    try:
        size = f.get_media_size()
        return size, f.read_buffer_at_offset(size, 0)
    finally:
        f.close()


def libvhdi_merged(child: Path, parent: Path, offset: int = 0, length: int | None = None) -> bytes:
    """The merged disk as libvhdi reads it: ``set_parent`` checks the child's parent identifier."""
    p, c = pyvhdi.file(), pyvhdi.file()
    p.open(str(parent))
    c.open(str(child))
    try:
        c.set_parent(p)
        size = c.get_media_size()
        return c.read_buffer_at_offset(size - offset if length is None else length, offset)
    finally:
        c.close()
        p.close()


def dissect_merged(child: Path) -> bytes:
    """The merged disk as dissect.hypervisor reads a VHDX child: it finds the parent by relative_path beside it."""
    disk = vhdx_reader.VHDX(child)
    return disk.read(disk.size)


def vhdiinfo(child: Path) -> str:
    return subprocess.run(["vhdiinfo", str(child)], check=True, capture_output=True, text=True).stdout
