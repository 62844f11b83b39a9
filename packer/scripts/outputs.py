"""The per-platform outputs of one CE image build, converted with ce's own disks module (Packer post-processor).

    python packer/scripts/outputs.py build/image/out/ce.qcow2 qcow2 azure-vhd vsphere-vmdk gce-tar xenserver-vhd

Each output is written as NAME.partial and renamed when it reads back right (ce.disks does that for disks; the
Google tarball is checked here). ``outputs.json`` beside them lists file, format and sizes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # ce from this checkout when run from it

from ce import disks  # noqa: E402

# platform -> (file name, ce format, subformat, note)
PLATFORMS = {
    "qcow2": ("ce.qcow2", "qcow2", None, "KVM, Nutanix AHV"),
    "azure-vhd": ("ce-azure.vhd", "vhd", "fixed", "Azure: fixed VHD, virtual size a whole number of MiB"),
    "vsphere-vmdk": ("ce-vsphere.vmdk", "vmdk", "streamOptimized", "vSphere (OVF/content library upload)"),
    "gce-tar": ("ce-gce.tar.gz", "raw", None, "Google Compute Engine: disk.raw in a sparse (oldgnu) tar.gz"),
    "xenserver-vhd": ("ce-xenserver.vhd", "vhd", "dynamic", "XenServer / Citrix Hypervisor"),
}
GCE_MEMBER = "disk.raw"


def build_outputs(image: Path, platforms: list[str]) -> list[dict]:
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown:
        raise SystemExit(f"outputs: unknown platform(s) {', '.join(unknown)}; choose from {', '.join(PLATFORMS)}")
    source = disks.info(image, "qcow2")
    records = []
    for platform in platforms:
        name, fmt, subformat, note = PLATFORMS[platform]
        target = image.parent / name
        started = time.monotonic()
        if platform == "qcow2":
            if target != image:
                raise SystemExit(f"outputs: the qcow2 output is the Packer image itself; name it {name}")
            result = source
        elif platform == "gce-tar":
            result = _gce_tarball(image, target)
        else:
            result = disks.convert(image, target, fmt, src_fmt="qcow2", subformat=None if subformat == "fixed" else subformat,
                                   azure_fixed=platform == "azure-vhd", overwrite=True)
        seconds = time.monotonic() - started
        records.append({"platform": platform, "file": name, "format": fmt, "subformat": subformat, "for": note,
                        "virtual_size": result.virtual_size, "file_bytes": target.stat().st_size,
                        "allocated_bytes": target.stat().st_blocks * 512, "seconds": round(seconds, 1)})
        print(f"outputs: {name:20} {target.stat().st_blocks * 512 / 2**20:8.0f} MiB allocated  ({seconds:.0f} s)",
              flush=True)
    return records


def _gce_tarball(image: Path, target: Path) -> disks.DiskInfo:
    """Google's import format: a gzip'd tar whose only member is disk.raw, stored sparse (GNU oldgnu format)."""
    with tempfile.TemporaryDirectory(dir=image.parent, prefix=".gce-") as tmp:
        raw = Path(tmp) / GCE_MEMBER
        result = disks.convert(image, raw, "raw", src_fmt="qcow2")
        partial = target.with_name(target.name + ".partial")
        subprocess.run(["tar", "--format=oldgnu", "--sparse", "-czf", str(partial), "-C", tmp, GCE_MEMBER],
                       check=True)
        with tarfile.open(partial, "r:gz") as tar:
            members = tar.getmembers()
        if [(m.name, m.size) for m in members] != [(GCE_MEMBER, result.virtual_size)]:
            partial.unlink()
            raise SystemExit(f"outputs: {target.name} holds {[(m.name, m.size) for m in members]}, "
                             f"expected only {GCE_MEMBER} of {result.virtual_size} bytes")
        os.replace(partial, target)
    return result


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    image = Path(argv[0]).resolve()
    records = build_outputs(image, argv[1:])
    manifest = image.parent / "outputs.json"
    manifest.write_text(json.dumps({"image": image.name, "outputs": records}, indent=2) + "\n")
    print(f"outputs: {len(records)} outputs listed in {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
