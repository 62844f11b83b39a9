"""Disk images whose headers name other files (issue 16, item 1): qcow2 backing files (a path, a relative name, an
NBD server), a qcow2 external data file and VMDK descriptors with extents -- each pointing at a secret that is not an
attached disk. Built with qemu-img itself where it can make them, by hand where it cannot."""
from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
from pathlib import Path

MiB = 1 << 20


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def secret_file(folder: Path) -> Path:
    """1 MiB that must never be read through a disk: its md5 is the canary."""
    path = folder / "secret.raw"
    path.write_bytes(b"CE-CANARY " + os.urandom(64).hex().encode() + b"\n")
    os.truncate(path, MiB)
    return path


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def hostile_images(folder: Path, secret: Path, nbd_port: int | None = None) -> dict[str, Path]:
    """{name: image} of images that make qemu read ``secret`` (or connect to ``nbd_port``)."""
    made = {}

    def qcow2_over(name: str, backing: str, fmt: str = "raw") -> None:
        made[name] = folder / f"{name}.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", fmt, str(made[name]), "1M")

    qcow2_over("backing-absolute", str(secret))
    qcow2_over("backing-relative", os.path.relpath(secret, folder))
    qcow2_over("backing-file-protocol", f"file:{secret}")
    qcow2_over("backing-json", f'json:{{"driver": "file", "filename": "{secret}"}}')
    if nbd_port:
        qcow2_over("backing-nbd", f"nbd://127.0.0.1:{nbd_port}")
    # an external data file: qemu-img create makes (and empties) the data file, so name a decoy of the secret's
    # length and point the header at the secret afterwards
    made["data-file"] = folder / "data-file.qcow2"
    decoy = folder / ("d" * len(secret.name))
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={decoy},data_file_raw=on", str(made["data-file"]), "1M")
    header = made["data-file"].read_bytes().replace(str(decoy).encode(), str(secret).encode())
    made["data-file"].write_bytes(header)
    decoy.unlink()
    made["vmdk-flat-extent"] = folder / "flat.vmdk"
    made["vmdk-flat-extent"].write_text(descriptor(f'RW 2048 FLAT "{secret.name}" 0'))
    made["vmdk-absolute-extent"] = folder / "absolute.vmdk"
    made["vmdk-absolute-extent"].write_text(descriptor(f'RW 2048 FLAT "{secret}" 0'))
    return made


def descriptor(*extents: str, comment: str = "# Disk DescriptorFile\n") -> str:
    return (f'{comment}version=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
            + "".join(f"{line}\n" for line in extents))


@contextlib.contextmanager
def listening_socket():
    """A TCP port on 127.0.0.1 that records whether anything connected (an NBD backing file would)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def connected(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
        return True
    except BlockingIOError:
        return False
