"""What a disk is: its format (qemu-img's probe, corrected for fixed VHDs), sizes, subformat, backing file and
health, for a local file or block device (``info``, ``check``, ``measure``, ``compare``) and for an image that
qemu-img reads over NBD from elsewhere (``remote_info``); and the refusals that follow from those facts."""
from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import asdict, dataclass

from ..errors import AzureVhdInvalid, DiskError, DiskUnreadable, UnsupportedFormat
from .chains import refuse_any as refuse_any_chain, vet as vet_chain
from .extents import byte_size, disk_kind, head, tail
from .extents import read_at as read_file_at
from .formats import CHECKABLE, DISK_FORMATS, FORMAT_LABELS, MEASURABLE, qemu_format
from .headers import SECTOR, header_facts, vhd_type, vhd_virtual_size, vhdx_facts
from .qemuimg import CheckResult, Measurement
from .qemuimg import check as qemu_check, compare as qemu_compare, info as qemu_info, measure as qemu_measure

MiB = 1 << 20
NBD_URI = re.compile(r"'?nbd\+unix://[^'\s]*'?")
DAMAGED = "is damaged (copy it again or repair it at its source)"


@dataclass
class DiskInfo:
    path: str
    format: str                      # qemu-img name: raw, qcow2, vpc, vhdx, vmdk
    virtual_size: int
    actual_size: int
    subformat: str | None = None     # fixed/dynamic/differencing (vpc, vhdx), create-type (vmdk)
    backing_file: str | None = None
    backing_format: str | None = None
    is_block_device: bool = False
    cluster_size: int | None = None
    dirty: bool | None = None

    def to_json(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- formats

def probe_format(path) -> str:
    """qemu-img's probe, corrected for fixed VHDs (which it reports as raw); the image's chain is vetted first."""
    path = os.fspath(path)
    return _format_of(path, None, disk_kind(path))


def _probe(path: str) -> tuple[str, dict | None]:
    """The probed format, with qemu-img's info of the file in it when the probe is the answer (None after a
    correction: a fixed VHD's info must come from the vpc driver)."""
    probed = _info_json(path, None)
    if probed["format"] == "raw" and vhd_type(tail(path, SECTOR)):
        return "vpc", None
    if probed["format"] not in FORMAT_LABELS:
        raise UnsupportedFormat(f"{path} is a {probed['format']} image: ce handles {', '.join(DISK_FORMATS)}; "
                                "convert it with qemu-img first")
    return probed["format"], probed


def _format_of(path: str, fmt: str | None, is_block: bool) -> str:
    return _format_and_info(path, fmt, is_block)[0]


def _format_and_info(path: str, fmt: str | None, is_block: bool) -> tuple[str, dict | None]:
    """The format to open ``path`` in: ``fmt`` if given; raw for a block device (its contents never choose how it
    is read); else the probe (with its info, which saves a second qemu-img run). Whatever is not read as raw has
    its chain vetted (ce.disks.chains) before qemu-img opens it: opening follows backing files, data files and
    extents."""
    fmt = qemu_format(fmt) if fmt else "raw" if is_block else None
    if fmt == "raw":
        return fmt, None
    vet_chain(path)
    return (fmt, None) if fmt else _probe(path)


def is_raw_target(path: str) -> bool:
    """Attached disks are raw unless the file says otherwise (a probe of a block device is never trusted)."""
    return _format_of(path, None, disk_kind(path)) == "raw"


# ---------------------------------------------------------------- info, check, measure, compare

def info(path, fmt: str | None = None) -> DiskInfo:
    """Describe a disk image file or block device. Disks in use are read with force-share (-U).

    qcow2, VMDK and VHDX are also checked (metadata only: milliseconds for a 4 GiB image), because a truncated
    qcow2 or VMDK opens without complaint; damage raises DiskUnreadable with qemu-img's reason."""
    path = os.fspath(path)
    is_block = disk_kind(path)
    fmt, data = _format_and_info(path, fmt, is_block)
    data = data or _info_json(path, fmt)
    disk = DiskInfo(path=path, format=fmt, virtual_size=data["virtual-size"], actual_size=data.get("actual-size", 0),
                    subformat=_subformat(path, fmt, data), backing_file=data.get("backing-filename"),
                    backing_format=data.get("backing-filename-format"), is_block_device=is_block,
                    cluster_size=data.get("cluster-size"), dirty=data.get("dirty-flag"))
    if fmt in CHECKABLE:
        _require_undamaged(_check(path, fmt, is_block))
    return disk


def check(path, fmt: str | None = None) -> CheckResult:
    path = os.fspath(path)
    is_block = disk_kind(path)
    return _check(path, _format_of(path, fmt, is_block), is_block)


def measure(path, dst_fmt: str = "qcow2", *, src_fmt: str | None = None) -> Measurement:
    """Bytes needed to convert ``path`` to ``dst_fmt`` (qemu-img counts allocated clusters, not zero content)."""
    path = os.fspath(path)
    fmt = qemu_format(dst_fmt)
    if fmt not in MEASURABLE:
        raise UnsupportedFormat(f"qemu-img cannot measure {FORMAT_LABELS[fmt]} output (only qcow2 and raw); "
                                "measure as qcow2 for an estimate of the data to write")
    return qemu_measure(path, _format_of(path, src_fmt, disk_kind(path)), fmt)


def compare(a, b, fmt_a: str | None = None, fmt_b: str | None = None) -> bool:
    """True when both disks read the same; like qemu-img, a larger disk whose extra tail is zeros still matches."""
    a, b = os.fspath(a), os.fspath(b)
    return qemu_compare(a, _format_of(a, fmt_a, disk_kind(a)), b, _format_of(b, fmt_b, disk_kind(b)))


def verify_azure_vhd(path) -> None:
    """Azure accepts only fixed VHDs whose virtual size is a whole number of MiB (file = size + 512-byte footer)."""
    path = os.fspath(path)
    disk_kind(path)
    size = byte_size(path)
    footer = tail(path, SECTOR)
    kind = vhd_type(footer)
    virtual = vhd_virtual_size(footer) if kind else 0
    if kind is None:
        problem = "it has no VHD footer"
    elif kind != "fixed":
        problem = f"it is a {kind} VHD, not a fixed one"
    elif virtual != size - SECTOR:
        problem = f"its footer says {virtual} bytes but the file holds {size - SECTOR}"
    elif virtual % MiB:
        problem = f"its virtual size {virtual} bytes is not a whole number of MiB"
    else:
        return
    raise AzureVhdInvalid(f"{path} is not an Azure-ready VHD: {problem}; convert it with azure_fixed=True")


def refuse_differencing(source: DiskInfo) -> None:
    """qemu-img reads a differencing VHD or VHDX as if its parent were zeros: refuse it as a source."""
    if source.subformat == "differencing":
        raise UnsupportedFormat(f"{source.path} is a differencing {FORMAT_LABELS[source.format]}: qemu-img would "
                                "read it without its parent; merge the chain into one disk first")


def _info_json(path: str, fmt: str | None, what: str | None = None) -> dict:
    label = FORMAT_LABELS.get(fmt, "disk")
    return qemu_info(path, fmt, doing=f"{what or path} is not a readable {label} image "
                                         "(copy it again or repair it at its source)")


def _check(path: str, fmt: str, is_block: bool) -> CheckResult:
    return qemu_check(path, fmt, "-U", _image_alone(path, fmt, is_block), doing=f"{path} {DAMAGED}")


def _image_alone(path: str, fmt: str, is_block: bool) -> str:
    """A qemu target that opens the image without its backing file: unlike info, check opens the whole chain
    and would call a child whose parent is missing "damaged"."""
    protocol = "host_device" if is_block else "file"
    return "json:" + json.dumps({"driver": fmt, "backing": None, "file": {"driver": protocol, "filename": path}})


def _require_undamaged(result: CheckResult) -> None:
    if not result.ok:
        raise DiskUnreadable(f"{result.path} is a damaged {FORMAT_LABELS[result.format]} image "
                             f"(copy it again or repair it at its source): {result.message}")


def _subformat(path: str, fmt: str, data: dict) -> str | None:
    """The subformat, read from the file itself where qemu-img does not report it."""
    if fmt == "vmdk":
        return data.get("format-specific", {}).get("data", {}).get("create-type")
    if fmt == "vpc":
        return vhd_type(head(path, SECTOR)) or vhd_type(tail(path, SECTOR))
    if fmt == "vhdx":
        return vhdx_facts(functools.partial(read_file_at, path))[0]
    return None


# ---------------------------------------------------------------- images read over NBD

def remote_info(uri: str, fmt: str | None, what: str, read_at, size: int) -> DiskInfo:
    """Describe and check the image qemu-img reads at ``uri`` (an NBD export of a file elsewhere), as ``info``
    does a local file: ``read_at(offset, length)`` reads the file itself (``size`` bytes) for what qemu-img does
    not report; ``fmt`` None probes, correcting fixed VHDs as ``probe_format`` does. ``what`` names it in errors
    (qemu-img's own messages name the socket, which means nothing to a user). Refuses differencing images and
    images with a backing file: their parent is not part of the job."""
    try:
        return _remote_info(uri, fmt, what, read_at, size)
    except DiskError as exc:
        named = NBD_URI.sub(lambda _: what, exc.message)      # qemu-img rewrites the URI it was given
        if named == exc.message:
            raise
        raise type(exc)(named, code=exc.code) from None


def _remote_info(uri: str, fmt: str | None, what: str, read_at, size: int) -> DiskInfo:
    refuse_any_chain(read_at, size, what)
    if fmt is None:
        fmt = _info_json(uri, None, what)["format"]
        if fmt == "raw" and vhd_type(read_at(max(size - SECTOR, 0), SECTOR)):
            fmt = "vpc"
        if fmt not in FORMAT_LABELS:
            raise UnsupportedFormat(f"{what} is a {fmt} image: ce handles {', '.join(DISK_FORMATS)}")
    fmt = qemu_format(fmt)
    data = _info_json(uri, fmt, what)
    subformat = (header_facts(read_at, size)[1] if fmt in ("vpc", "vhdx")
                 else _subformat(uri, fmt, data) if fmt != "raw" else None)
    described = DiskInfo(path=what, format=fmt, virtual_size=data["virtual-size"], actual_size=size,
                         subformat=subformat, backing_file=data.get("backing-filename"))
    refuse_differencing(described)
    if described.backing_file:
        raise UnsupportedFormat(f"{what} is a {FORMAT_LABELS[fmt]} with a backing file ({described.backing_file}): "
                                "its parent is not part of the job; merge the chain into one image first")
    if fmt in CHECKABLE:
        _require_undamaged(qemu_check(what, fmt, "-f", fmt, uri, doing=f"{what} {DAMAGED}"))
    return described
