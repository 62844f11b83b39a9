"""Disk images through qemu-img: describe, check, measure, compare, convert, create differencing children.

Every call goes through ``sh`` and turns a qemu-img failure into a ``DiskError`` whose message carries qemu-img's
own (trimmed) reason. Outputs are written to ``NAME.partial`` and renamed to ``NAME`` only after they have been read
back with the expected format and size, so a crash, a failure or a cancel never leaves a partial disk at its final
name.

qemu-img 7.2 facts this module relies on (measured, see reference/feasibility.md section 3):

* Probing reports a *fixed* VHD as ``raw`` (its only footer is at the end), with the footer counted in the size.
* ``info`` opens a truncated qcow2 or VMDK without complaint; only ``check`` notices, so ``info`` runs it too.
* The vpc and vhdx drivers ignore differencing (parent) links: a differencing VHD reads as if its parent were
  zeros, and neither format can be created with a backing file.
* ``measure`` supports only qcow2 and raw outputs; ``check`` exits 63 for formats without checks (raw, vpc).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import stat
import struct
import time
import uuid
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace

import sh

from .errors import DiskError, DiskNotFound, DiskUnreadable, EmptyDisk

log = logging.getLogger(__name__)

MiB = 1 << 20
SECTOR = 512

DISK_FORMATS = {"raw": "raw", "qcow2": "qcow2", "vhd": "vpc", "vhdx": "vhdx", "vmdk": "vmdk"}
FORMAT_LABELS = {"raw": "raw", "qcow2": "qcow2", "vpc": "VHD", "vhdx": "VHDX", "vmdk": "VMDK"}
SUBFORMATS = {                               # the first one is the default
    "vhdx": ("dynamic", "fixed"),
    "vpc": ("dynamic", "fixed"),
    "vmdk": ("monolithicSparse", "streamOptimized"),
}
CHECKABLE = {"qcow2", "vhdx", "vmdk"}
MEASURABLE = {"qcow2", "raw"}
CONVERT_FLAGS = ("-p", "-W", "-m", "8")      # fastest measured here; -t/-T none were 2-3x slower
CHECK_UNSUPPORTED = 63
NBD_URI = re.compile(r"'?nbd\+unix://[^'\s]*'?")
POLL_SECONDS = 0.1
REASON_LINES, REASON_CHARS = 2, 400

VHD_COOKIE = b"conectix"
VHD_TYPES = {2: "fixed", 3: "dynamic", 4: "differencing"}
VHDX_REGION_TABLE = 192 * 1024
VHDX_METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
VHDX_FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
VHDX_VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
VHDX_LEAVE_BLOCKS_ALLOCATED, VHDX_HAS_PARENT = 1, 2


class UnsupportedFormat(DiskError):
    code = "disk_format_unsupported"


class DestinationExists(DiskError):
    code = "disk_exists"


class ConversionFailed(DiskError):
    code = "disk_conversion_failed"


class ChildDiskFailed(DiskError):
    code = "disk_child_failed"


class AzureVhdInvalid(DiskError):
    code = "vhd_not_azure_ready"


class Canceled(DiskError):
    code = "canceled"


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


@dataclass
class CheckResult:
    path: str
    format: str
    supported: bool
    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    detail: str = ""                 # qemu-img's own lines, trimmed

    @property
    def ok(self) -> bool:
        """Leaked clusters only waste space; corruptions and check errors make the image unsafe to use."""
        return not (self.corruptions or self.check_errors)

    @property
    def message(self) -> str:
        if not self.supported:
            return f"qemu-img cannot check {FORMAT_LABELS[self.format]} images"
        counts = [f"{n} {what}" for n, what in ((self.corruptions, "corruptions"), (self.leaks, "leaked clusters"),
                                               (self.check_errors, "check errors")) if n]
        if not counts:
            return "no errors found"
        return ", ".join(counts) + (f" ({self.detail})" if self.detail else "")

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok, "message": self.message}


@dataclass
class Measurement:
    required: int                    # bytes the output needs for the allocated data
    fully_allocated: int             # bytes if every cluster were written


# ---------------------------------------------------------------- formats

def qemu_format(name: str) -> str:
    """The qemu-img name for a user-facing format name ("vhd" -> "vpc"); qemu names pass through."""
    key = name.lower()
    if key in DISK_FORMATS:
        return DISK_FORMATS[key]
    if key in DISK_FORMATS.values():
        return key
    raise UnsupportedFormat(f"unknown disk format {name!r}: use one of {', '.join(DISK_FORMATS)}")


def probe_format(path) -> str:
    """qemu-img's probe, corrected for fixed VHDs (which it reports as raw)."""
    path = os.fspath(path)
    _disk_kind(path)
    return _probe(path)


def _probe(path: str) -> str:
    probed = _info_json(path, None)["format"]
    if probed == "raw" and _vhd_type(_tail(path, SECTOR)):
        return "vpc"
    if probed not in FORMAT_LABELS:
        raise UnsupportedFormat(f"{path} is a {probed} image: ce handles {', '.join(DISK_FORMATS)}; "
                                "convert it with qemu-img first")
    return probed


def _format_of(path: str, fmt: str | None) -> str:
    return qemu_format(fmt) if fmt else _probe(path)


# ---------------------------------------------------------------- info, check, measure, compare

def info(path, fmt: str | None = None) -> DiskInfo:
    """Describe a disk image file or block device. Disks in use are read with force-share (-U).

    qcow2, VMDK and VHDX are also checked (metadata only: milliseconds for a 4 GiB image), because a truncated
    qcow2 or VMDK opens without complaint; damage raises DiskUnreadable with qemu-img's reason."""
    path = os.fspath(path)
    is_block = _disk_kind(path)
    fmt = _format_of(path, fmt)
    disk = _disk_info(path, fmt, _info_json(path, fmt), is_block)
    if fmt in CHECKABLE:
        _require_undamaged(_check(path, fmt, is_block))
    return disk


def check(path, fmt: str | None = None) -> CheckResult:
    path = os.fspath(path)
    is_block = _disk_kind(path)
    return _check(path, _format_of(path, fmt), is_block)


def measure(path, dst_fmt: str = "qcow2", *, src_fmt: str | None = None) -> Measurement:
    """Bytes needed to convert ``path`` to ``dst_fmt`` (qemu-img counts allocated clusters, not zero content)."""
    path = os.fspath(path)
    fmt = qemu_format(dst_fmt)
    if fmt not in MEASURABLE:
        raise UnsupportedFormat(f"qemu-img cannot measure {FORMAT_LABELS[fmt]} output (only qcow2 and raw); "
                                "measure as qcow2 for an estimate of the data to write")
    _disk_kind(path)
    result = _run("measure", "--output=json", "-O", fmt, "-f", _format_of(path, src_fmt), path,
                  fails_as=DiskUnreadable, doing=f"cannot measure {path}")
    data = json.loads(result.stdout)
    return Measurement(required=data["required"], fully_allocated=data["fully-allocated"])


def compare(a, b, fmt_a: str | None = None, fmt_b: str | None = None) -> bool:
    """True when both disks read the same; like qemu-img, a larger disk whose extra tail is zeros still matches."""
    a, b = os.fspath(a), os.fspath(b)
    _disk_kind(a)
    _disk_kind(b)
    result = _run("compare", "-U", "-f", _format_of(a, fmt_a), "-F", _format_of(b, fmt_b), a, b, ok=(0, 1),
                  fails_as=DiskError, doing=f"cannot compare {a} with {b}")
    return result.exit_code == 0


def verify_azure_vhd(path) -> None:
    """Azure accepts only fixed VHDs whose virtual size is a whole number of MiB (file = size + 512-byte footer)."""
    path = os.fspath(path)
    _disk_kind(path)
    size = _size(path)
    footer = _tail(path, SECTOR)
    kind = _vhd_type(footer)
    virtual = struct.unpack_from(">Q", footer, 48)[0] if kind else 0
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


def _info_json(path: str, fmt: str | None, what: str | None = None) -> dict:
    fmt_args = ("-f", fmt) if fmt else ()
    label = FORMAT_LABELS.get(fmt, "disk")
    result = _run("info", "-U", "--output=json", *fmt_args, path, fails_as=DiskUnreadable,
                  doing=f"{what or path} is not a readable {label} image (copy it again or repair it at its source)")
    return json.loads(result.stdout)


def _disk_info(path: str, fmt: str, data: dict, is_block: bool) -> DiskInfo:
    return DiskInfo(path=path, format=fmt, virtual_size=data["virtual-size"], actual_size=data.get("actual-size", 0),
                    subformat=_subformat(path, fmt, data), backing_file=data.get("backing-filename"),
                    backing_format=data.get("backing-filename-format"), is_block_device=is_block,
                    cluster_size=data.get("cluster-size"), dirty=data.get("dirty-flag"))


def _check(path: str, fmt: str, is_block: bool) -> CheckResult:
    result = _run("check", "-U", "--output=json", _image_alone(path, fmt, is_block), ok=(0, 2, 3, CHECK_UNSUPPORTED),
                  fails_as=DiskUnreadable, doing=f"{path} is damaged (copy it again or repair it at its source)")
    if result.exit_code == CHECK_UNSUPPORTED:
        return CheckResult(path, fmt, supported=False)
    data = json.loads(result.stdout)
    return CheckResult(path, fmt, supported=True, corruptions=data.get("corruptions", 0),
                       leaks=data.get("leaks", 0), check_errors=data.get("check-errors", 0),
                       detail=_reason(result.stderr))


def _image_alone(path: str, fmt: str, is_block: bool) -> str:
    """A qemu target that opens the image without its backing file: unlike info, check opens the whole chain
    and would call a child whose parent is missing "damaged"."""
    protocol = "host_device" if is_block else "file"
    return "json:" + json.dumps({"driver": fmt, "backing": None, "file": {"driver": protocol, "filename": path}})


def _require_undamaged(result: CheckResult) -> None:
    if not result.ok:
        raise DiskUnreadable(f"{result.path} is a damaged {FORMAT_LABELS[result.format]} image "
                             f"(copy it again or repair it at its source): {result.message}")


# ---------------------------------------------------------------- subformats (read from the file itself)

def _subformat(path: str, fmt: str, data: dict) -> str | None:
    if fmt == "vmdk":
        return data.get("format-specific", {}).get("data", {}).get("create-type")
    if fmt == "vpc":
        return _vhd_type(_head(path, SECTOR)) or _vhd_type(_tail(path, SECTOR))
    if fmt == "vhdx":
        return _vhdx_type(path)
    return None


def _vhd_type(footer: bytes) -> str | None:
    if len(footer) < SECTOR or footer[:8] != VHD_COOKIE:
        return None
    return VHD_TYPES.get(struct.unpack_from(">I", footer, 60)[0], "unknown")


def _vhdx_type(path: str) -> str | None:
    return _vhdx_facts(functools.partial(_read_at, path))[0]


def _vhdx_facts(read_at) -> tuple[str | None, int | None]:
    """(fixed / dynamic / differencing, virtual size) from the VHDX metadata items (MS-VHDX 2.6.2)."""
    metadata = _vhdx_metadata_offset(read_at(VHDX_REGION_TABLE, 64 * 1024))
    if metadata is None:
        return None, None
    items = vhdx_metadata_items(read_at, metadata)
    kind = size = None
    if VHDX_FILE_PARAMETERS in items:
        flags = struct.unpack("<I", read_at(items[VHDX_FILE_PARAMETERS] + 4, 4))[0]
        kind = ("differencing" if flags & VHDX_HAS_PARENT
                else "fixed" if flags & VHDX_LEAVE_BLOCKS_ALLOCATED else "dynamic")
    if VHDX_VIRTUAL_DISK_SIZE in items:
        size = struct.unpack("<Q", read_at(items[VHDX_VIRTUAL_DISK_SIZE], 8))[0]
    return kind, size


def vhdx_metadata_items(read_at, metadata: int) -> dict[bytes, int]:
    """{item GUID (bytes_le): absolute file offset of its data} from the metadata table at ``metadata``."""
    table = read_at(metadata, 64 * 1024)
    if table[:8] != b"metadata":
        return {}
    entries = (table[32 + 32 * i:64 + 32 * i] for i in range(struct.unpack_from("<H", table, 10)[0]))
    return {entry[:16]: metadata + struct.unpack_from("<I", entry, 16)[0] for entry in entries}


def header_facts(read_at, size: int) -> tuple[str, str, int]:
    """(qemu format, subformat, virtual size) of a VHD or VHDX read through ``read_at(offset, length)``.

    For images that are not on a local disk (a share): reads only the footer or the metadata region."""
    if read_at(0, 8) == b"vhdxfile":
        kind, virtual = _vhdx_facts(read_at)
        if kind and virtual:
            return "vhdx", kind, virtual
        raise DiskUnreadable("the VHDX has no readable metadata (file parameters and virtual disk size)")
    footer = read_at(max(size - SECTOR, 0), SECTOR)
    kind = _vhd_type(footer)
    if kind is None:
        raise DiskUnreadable("it is neither a VHD (no 'conectix' footer) nor a VHDX (no 'vhdxfile' signature)")
    return "vpc", kind, struct.unpack_from(">Q", footer, 48)[0]


def _vhdx_metadata_offset(regions: bytes) -> int | None:
    if regions[:4] != b"regi":
        return None
    for i in range(struct.unpack_from("<I", regions, 8)[0]):
        entry = regions[16 + 32 * i:48 + 32 * i]
        if entry[:16] == VHDX_METADATA_REGION:
            return struct.unpack_from("<Q", entry, 16)[0]
    return None


# ---------------------------------------------------------------- convert and create

def convert(src, dst, dst_fmt: str, *, src_fmt: str | None = None, subformat: str | None = None,
            progress=None, cancel=None, azure_fixed: bool = False, overwrite: bool = False,
            durable: bool = True) -> DiskInfo:
    """Convert ``src`` to ``dst`` in ``dst_fmt`` ("vhd" or "vpc", "vhdx", "vmdk", "qcow2", "raw").

    ``progress(percent)`` is called with increasing values ending at 100; ``cancel`` is a threading.Event or a
    callable polled while qemu-img runs. ``azure_fixed`` writes a fixed VHD whose virtual size is rounded up to a
    whole MiB (the padding reads as zeros; the source is never modified). ``durable=False`` skips flushing the
    output to stable storage, for scratch files that do not outlive the step (a flush of a 1 GiB file costs seconds).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    fmt = qemu_format(dst_fmt)
    subformat = _choose_subformat(fmt, subformat, azure_fixed)
    source = info(src, src_fmt)
    _refuse_differencing(source)
    size = _round_up(source.virtual_size, MiB) if azure_fixed else source.virtual_size
    _require_destination(dst, overwrite)
    _stop_if_canceled(cancel)
    doing = f"converting {src} to {FORMAT_LABELS[fmt]} failed"
    with _partial_output(dst, overwrite, durable) as partial:
        options = _create_options(fmt, subformat)
        from . import layouts             # layouts builds on this module
        if not azure_fixed and layouts.streamable(source, fmt, subformat):
            create_empty(partial, fmt, size, subformat, doing)
            layouts.fill(src, partial, fmt, subformat, progress=progress,
                         cancel=functools.partial(_stop_if_canceled, cancel))
        else:
            if azure_fixed:
                # Pre-create the larger target and fill it: qemu-img convert cannot pad, and resizing the source
                # would modify a disk this step does not own.
                _run("create", "-q", "-f", fmt, "-o", options, partial, str(size), fails_as=ConversionFailed,
                     doing=doing)
                target_args = ["-n", "--target-is-zero"]
            else:
                target_args = ["-O", fmt, *(("-o", options) if options else ())]
            _run_watched(["convert", *CONVERT_FLAGS, "-f", source.format, *target_args, src, partial],
                         progress=progress, cancel=cancel, doing=doing)
        result = _verify_output(partial, fmt, subformat, size)
        if azure_fixed:
            verify_azure_vhd(partial)
    return replace(result, path=dst)


def create_empty(path, fmt: str, size: int, subformat: str | None = None, doing: str | None = None) -> DiskInfo:
    """An empty disk of ``size`` bytes (fixed subformats are sparse files, so this costs no space or time); the
    streamed export fills one in (ce.layouts)."""
    path, fmt = os.fspath(path), qemu_format(fmt)
    subformat = _choose_subformat(fmt, subformat, False)
    options = _create_options(fmt, subformat)
    _run("create", "-q", "-f", fmt, *(("-o", options) if options else ()), path, str(size),
         fails_as=ConversionFailed, doing=doing or f"cannot create an empty {FORMAT_LABELS[fmt]} of {size} bytes")
    return _verify_output(path, fmt, subformat, size)


def create_overlay(backing: str, backing_fmt: str, path, size: int) -> None:
    """A local qcow2 of ``size`` bytes over ``backing`` (a URI qemu-img opens, such as an NBD export): it reads as
    the backing image and as zeros past its end. Nothing of the backing image is copied."""
    _run("create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", qemu_format(backing_fmt), os.fspath(path),
         str(size), fails_as=ConversionFailed, doing=f"cannot create an overlay of {size} bytes")


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
    if fmt is None:
        fmt = _info_json(uri, None, what)["format"]
        if fmt == "raw" and _vhd_type(read_at(max(size - SECTOR, 0), SECTOR)):
            fmt = "vpc"
        if fmt not in FORMAT_LABELS:
            raise UnsupportedFormat(f"{what} is a {fmt} image: ce handles {', '.join(DISK_FORMATS)}")
    fmt = qemu_format(fmt)
    data = _info_json(uri, fmt, what)
    subformat = (header_facts(read_at, size)[1] if fmt in ("vpc", "vhdx")
                 else _subformat(uri, fmt, data) if fmt != "raw" else None)
    described = DiskInfo(path=what, format=fmt, virtual_size=data["virtual-size"], actual_size=size,
                         subformat=subformat, backing_file=data.get("backing-filename"))
    _refuse_differencing(described)
    if described.backing_file:
        raise UnsupportedFormat(f"{what} is a {FORMAT_LABELS[fmt]} with a backing file ({described.backing_file}): "
                                "its parent is not part of the job; merge the chain into one image first")
    if fmt in CHECKABLE:
        result = _run("check", "--output=json", "-f", fmt, uri, ok=(0, 2, 3, CHECK_UNSUPPORTED),
                      fails_as=DiskUnreadable, doing=f"{what} is damaged (copy it again or repair it at its source)")
        if result.exit_code != CHECK_UNSUPPORTED:
            found = json.loads(result.stdout)
            _require_undamaged(CheckResult(what, fmt, supported=True, corruptions=found.get("corruptions", 0),
                                           leaks=found.get("leaks", 0), check_errors=found.get("check-errors", 0),
                                           detail=_reason(result.stderr)))
    return described


def create_child(parent, child, parent_fmt: str | None = None, child_fmt: str = "qcow2", size: int | None = None,
                 *, overwrite: bool = False) -> DiskInfo:
    """Create a differencing disk ``child`` backed by ``parent`` (stored as a path relative to the child).

    qemu-img 7.2 can only create qcow2 (and vmdk-on-vmdk) children: for vhdx and vpc it refuses with
    "Backing file not supported", which is reported as ChildDiskFailed.
    """
    parent, child = os.fspath(parent), os.fspath(child)
    base = info(parent, parent_fmt)
    fmt = qemu_format(child_fmt)
    backing = os.path.relpath(os.path.abspath(parent), os.path.dirname(os.path.abspath(child)))
    _require_destination(child, overwrite)
    with _partial_output(child, overwrite) as partial:
        _run("create", "-q", "-f", fmt, "-b", backing, "-F", base.format, partial, *([str(size)] if size else []),
             fails_as=ChildDiskFailed, doing=f"cannot create a {FORMAT_LABELS[fmt]} child of {parent}")
        result = _verify_output(partial, fmt, None, size or base.virtual_size)
        if result.backing_file != backing:
            raise ChildDiskFailed(f"{child} was written with backing file {result.backing_file!r}, not {backing!r}")
    return replace(result, path=child)


def write_onto(src, target, *, src_fmt: str | None = None, progress=None, cancel=None,
               label: str | None = None) -> DiskInfo:
    """Write the contents of ``src`` over the existing disk ``target`` (a file or block device), in ``target``'s
    own format, from offset 0; ``target`` must be at least as large. Areas that are zero in ``src`` are zeroed in
    ``target`` (qemu-img uses write-zeroes / discard), so stale data never shows through. ``label`` names ``src``
    in errors.

    There is no partial name for an attached disk: a failure or cancel leaves it partly written, and the error
    says so."""
    src, target = os.fspath(src), os.fspath(target)
    source = info(src, src_fmt)
    _refuse_differencing(source)
    dest = info(target, "raw" if _is_raw_target(target) else None)
    if dest.virtual_size < source.virtual_size:
        raise DiskError(f"{target} holds {dest.virtual_size} bytes but the image needs {source.virtual_size}",
                        code="disk_too_small")
    _stop_if_canceled(cancel)
    doing = f"writing {label or src} onto {target} failed (the disk is now partly written)"
    _run_watched(["convert", *CONVERT_FLAGS, "-n", "-f", source.format, "-O", dest.format, src, target],
                 progress=progress, cancel=cancel, doing=doing, canceled_message="writing onto the disk was "
                 "canceled; the disk is partly written: run the step again before using it")
    return dest


def _is_raw_target(path: str) -> bool:
    """Attached disks are raw unless the file says otherwise (a probe of a block device is never trusted)."""
    return _disk_kind(path) or _probe(path) == "raw"


def _choose_subformat(fmt: str, subformat: str | None, azure_fixed: bool) -> str | None:
    if azure_fixed:
        if fmt != "vpc" or subformat not in (None, "fixed"):
            raise UnsupportedFormat("azure_fixed output must be a fixed VHD (format vhd, subformat fixed)")
        return "fixed"
    choices = SUBFORMATS.get(fmt, ())
    if subformat is None:
        return choices[0] if choices else None
    if subformat not in choices:
        allowed = ", ".join(choices) or "none"
        raise UnsupportedFormat(f"{FORMAT_LABELS[fmt]} has no subformat {subformat!r} (choose: {allowed})")
    return subformat


def _create_options(fmt: str, subformat: str | None) -> str | None:
    if fmt == "vpc":
        return f"subformat={subformat},force_size=on"     # without force_size qemu rounds to CHS geometry
    return f"subformat={subformat}" if subformat else None


def _refuse_differencing(source: DiskInfo) -> None:
    if source.subformat == "differencing":
        raise UnsupportedFormat(f"{source.path} is a differencing {FORMAT_LABELS[source.format]}: qemu-img would "
                                "read it without its parent; merge the chain into one disk first")


def _verify_output(path: str, fmt: str, subformat: str | None, size: int) -> DiskInfo:
    # Probe rather than pass -f, so a wrong format is noticed; raw is the exception since anything probes as raw.
    result = info(path, "raw" if fmt == "raw" else None)
    problems = []
    if result.format != fmt:
        problems.append(f"format {result.format}, expected {fmt}")
    if result.virtual_size != size:
        problems.append(f"virtual size {result.virtual_size}, expected {size}")
    if subformat and result.subformat != subformat:
        problems.append(f"subformat {result.subformat}, expected {subformat}")
    if problems:
        raise ConversionFailed(f"the {FORMAT_LABELS[fmt]} written for {path} reads back wrong: {'; '.join(problems)}")
    return result


@contextmanager
def _partial_output(dst: str, overwrite: bool, durable: bool = True):
    """Yield ``dst.partial``; rename it to ``dst`` when the block succeeds, remove it on any failure."""
    partial = dst + ".partial"
    try:
        yield partial
        _require_destination(dst, overwrite)
        if durable:
            _fsync(partial)             # qemu-img leaves its output in the page cache: a power loss after the
        os.replace(partial, dst)        # rename could otherwise show a partly written disk at the final name
        if durable:
            _fsync(os.path.dirname(os.path.abspath(dst)))
    except BaseException:
        with suppress(FileNotFoundError):
            os.remove(partial)
        raise


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _require_destination(dst: str, overwrite: bool) -> None:
    directory = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(directory):
        raise DiskError(f"cannot write {dst}: directory {directory} does not exist", code="output_dir_missing")
    if not os.path.lexists(dst):
        return
    if not overwrite:
        raise DestinationExists(f"{dst} already exists: remove it or ask to overwrite it")
    if not os.path.isfile(dst):
        raise DestinationExists(f"{dst} exists and is not a regular file: refusing to replace it")


# ---------------------------------------------------------------- running qemu-img

@functools.cache
def _qemu_img() -> sh.Command:
    try:
        return sh.Command("qemu-img").bake(_tty_out=False, _decode_errors="replace")
    except sh.CommandNotFound:
        raise DiskError("qemu-img is not installed: install the qemu-utils package", code="qemu_img_missing") from None


def _run(*args: str, ok=(0,), fails_as: type[DiskError], doing: str):
    log.debug("qemu-img %s", " ".join(args))
    try:
        return _qemu_img()(*args, _ok_code=list(ok), _return_cmd=True)
    except sh.ErrorReturnCode as exc:
        raise fails_as(f"{doing}: {_reason(exc.stderr)}") from None


def _run_watched(args: list[str], *, progress, cancel, doing: str, canceled_message: str | None = None) -> None:
    """Run a long qemu-img command, reporting its -p progress; kill it on cancel or when ``progress`` raises."""
    log.debug("qemu-img %s", " ".join(args))
    meter = _ProgressMeter(progress)
    proc = _qemu_img()(*args, _bg=True, _bg_exc=False, _out=meter.feed, _out_bufsize=0, _return_cmd=True)
    try:
        while proc.is_alive() and not (_is_set(cancel) or meter.error):
            time.sleep(POLL_SECONDS)
    finally:
        if proc.is_alive():
            proc.kill()
            with suppress(sh.ErrorReturnCode):
                proc.wait()
    if meter.error:
        raise meter.error
    _stop_if_canceled(cancel, canceled_message)
    try:
        proc.wait()
    except sh.ErrorReturnCode as exc:
        raise ConversionFailed(f"{doing}: {_reason(exc.stderr)}") from None
    meter.finish()


class _ProgressMeter:
    """Parses qemu-img's "    (12.34/100%)\\r" stream, which arrives in arbitrary chunks."""

    PATTERN = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")

    def __init__(self, callback):
        self.callback = callback
        self.last = -1.0
        self.tail = ""
        self.error: BaseException | None = None

    def feed(self, chunk: str) -> None:
        text = self.tail + chunk
        self.tail = text[text.rfind(")") + 1:][-32:]
        for value in self.PATTERN.findall(text):
            self._report(float(value))

    def finish(self) -> None:
        self._report(100.0)

    def _report(self, percent: float) -> None:
        if percent <= self.last or self.error:
            return
        self.last = percent
        if self.callback:
            try:
                self.callback(percent)
            except Exception as exc:     # runs in sh's reader thread: hand it to the caller's thread
                self.error = exc


def _is_set(cancel) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if hasattr(cancel, "is_set") else bool(cancel())


def _stop_if_canceled(cancel, message: str | None = None) -> None:
    if _is_set(cancel):
        raise Canceled(message or "the disk operation was canceled; no output was kept")


def _reason(stderr: bytes) -> str:
    """qemu-img's message without its prefixes and repeats, at most a couple of lines."""
    lines: list[str] = []
    for line in stderr.decode(errors="replace").splitlines():
        line = re.sub(r"^(qemu-img: |ERROR: )", "", line.strip())
        line = re.sub(r"(Could not open '[^']*': )\1+", r"\1", line)
        if line and line not in lines:
            lines.append(line)
    text = "; ".join(lines[:REASON_LINES])
    if len(lines) > REASON_LINES:
        text += f" (+{len(lines) - REASON_LINES} more)"
    return (text or "no reason given")[:REASON_CHARS]


# ---------------------------------------------------------------- files and block devices

def _disk_kind(path: str) -> bool:
    """True for a block device, False for a regular file; raises if it is neither, missing, or empty."""
    try:
        mode = os.stat(path).st_mode
        is_block = stat.S_ISBLK(mode)
        if not (is_block or stat.S_ISREG(mode)):
            raise DiskUnreadable(f"{path} is not a disk image file or block device")
        size = _size(path)
    except FileNotFoundError:
        raise DiskNotFound(f"{path} does not exist: check the path, or that the disk is attached") from None
    except OSError as exc:
        raise DiskUnreadable(f"cannot read {path}: {exc.strerror}") from None
    if size == 0:
        raise EmptyDisk(f"{path} is empty (0 bytes): the copy or the attach did not complete")
    return is_block


def byte_size(path) -> int:
    """The length of a file or block device in bytes (qemu-img rounds a raw file's size up to whole sectors)."""
    return _size(os.fspath(path))


def _size(path: str) -> int:
    with open(path, "rb") as f:          # st_size is 0 for block devices; seeking works for both
        return f.seek(0, os.SEEK_END)


def _read_at(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _head(path: str, length: int) -> bytes:
    return _read_at(path, 0, length)


def _tail(path: str, length: int) -> bytes:
    return _read_at(path, max(_size(path) - length, 0), length)


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit
