"""Sample image specs: one TOML file per image in images/specs/.

A spec says how to build a phony-but-inspectable disk (firmware, Windows facts, Citrix components, hypervisor
tools, and the defect to inject for bad inputs) and, in its ``[truth]`` table, what ``ce inspect`` must report.
"""
from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

SPEC_DIR = Path(__file__).parent / "specs"
BUILD_DIR = Path(__file__).parent / "build"
FORMAT_SUFFIX = {"raw": "img", "qcow2": "qcow2", "vhdx": "vhdx", "vpc": "vhd", "vmdk": "vmdk"}
KINDS = ("windows", "linux", "blank")
FIRMWARES = ("bios", "uefi")


@dataclass(frozen=True)
class Spec:
    name: str
    description: str
    kind: str
    firmware: str
    format: str
    windows: dict
    vda: dict
    pvs: dict
    tools: dict
    truth: dict
    size_mib: int = 128
    hibernated: bool = False
    dirty_ntfs: bool = False
    bitlocker: bool = False
    second_root: bool = False
    corrupt_hive: str = ""
    dirty_hive: str = ""
    truncate_percent: int = 0
    system_reserved_mib: int = 32     # BIOS only: the System Reserved (boot) partition; 0 = none (Windows boots itself)
    fill_disk: bool = False           # the last partition ends at the disk's last sector (no MiB left free)
    raw_text: str = field(default="", repr=False)

    @property
    def path(self) -> Path:
        return BUILD_DIR / f"{self.name}.{FORMAT_SUFFIX[self.format]}"

    @property
    def partition_table(self) -> str:
        return "gpt" if self.firmware == "uefi" else "mbr"


def load(path: Path) -> Spec:
    text = path.read_text()
    data = tomllib.loads(text)
    kind = data.pop("kind", "windows")
    if kind not in KINDS:
        raise ValueError(f"{path.name}: kind must be one of {KINDS}, not {kind!r}")
    firmware = data.pop("firmware", "uefi")
    if firmware not in FIRMWARES:
        raise ValueError(f"{path.name}: firmware must be one of {FIRMWARES}, not {firmware!r}")
    fmt = data.pop("format", "qcow2")
    if fmt not in FORMAT_SUFFIX:
        raise ValueError(f"{path.name}: format must be one of {sorted(FORMAT_SUFFIX)}, not {fmt!r}")
    if kind == "windows" and "windows" not in data:
        raise ValueError(f"{path.name}: a Windows spec needs a [windows] table")
    known = {"description", "windows", "vda", "pvs", "tools", "truth", "size_mib", "hibernated", "bitlocker",
             "second_root", "dirty_ntfs", "corrupt_hive", "dirty_hive", "truncate_percent", "system_reserved_mib",
             "fill_disk"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{path.name}: unknown keys {sorted(unknown)}")
    if "system_reserved_mib" in data and firmware != "bios":
        raise ValueError(f"{path.name}: system_reserved_mib is for BIOS disks (a UEFI disk boots from its ESP)")
    if data.get("fill_disk") and firmware != "bios":
        raise ValueError(f"{path.name}: fill_disk is for MBR disks (GPT keeps its backup table in the last sectors)")
    return Spec(name=path.stem, kind=kind, firmware=firmware, format=fmt, raw_text=text,
                description=data.pop("description"), windows=data.pop("windows", {}), vda=data.pop("vda", {}),
                pvs=data.pop("pvs", {}), tools=data.pop("tools", {}), truth=data.pop("truth", {}), **data)


def load_all() -> dict[str, Spec]:
    return {p.stem: load(p) for p in sorted(SPEC_DIR.glob("*.toml"))}


def builder_fingerprint() -> str:
    """Hash of the code that turns specs into disks: a change to it invalidates every cached image."""
    h = hashlib.sha256()
    ce_dir = Path(__file__).parents[1] / "ce"
    writers = ("values", "header", "hive", "empty")        # what images/build uses of ce.registry (not its commit)
    sources = [*sorted(Path(__file__).parent.glob("*.py")), *(ce_dir / "registry" / f"{m}.py" for m in writers),
               ce_dir / "ntfs.py", *(ce_dir / "windows" / "bcd" / f"{m}.py" for m in ("elements", "device", "store"))]
    for src in sources:
        h.update(src.name.encode() + b"\0" + src.read_bytes())
    return h.hexdigest()


def cache_key(spec: Spec) -> str:
    return hashlib.sha256((builder_fingerprint() + spec.raw_text).encode()).hexdigest()
