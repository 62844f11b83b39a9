"""upgradePvs end to end against a real smbd: the Server 2019 BIOS PVS sample (target device 7.33.5000.18, i.e.
2203 LTSR CU5) as a vDisk on the share, upgraded to 2402 LTSR CU1 in a grown differencing child with the PVS
server's CA. Read back without ce: dissect.hypervisor merges the child, `ntfscat` takes the staged files and the
SYSTEM hive off the Windows volume, regipy reads the hive, `cryptography` the certificate. Appliance launches: the
upgrade, and a downgrade that is refused (the Windows 10 sample has 7.41 = 2402). The CA checks need no launch."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from ce.errors import InvalidParams, PvsDowngradeRefused
from ce.payloads import write_manifest
from ce.step import execute, step_types
from images.content import pe_stub
from tests.support.certs import Authority
from tests.support.steps import Recorder
from tests.support.vhdreaders import dissect_merged

pytest.importorskip("dissect.hypervisor.disk.vhdx", reason="dissect.hypervisor (the test extra)")
pytest.importorskip("nbd", reason="python3-libnbd (debian-packages.txt)")
from regipy.registry import RegistryHive  # noqa: E402

STEP = step_types()["upgradePvs"]
SYSRES, SINGLE = "win2019-vda2203-pvs-bios", "win10-vda2402-pvs-bios"
MiB = 1 << 20
INSTALLER = pe_stub("stand-in PVS_Device_x64 2402.0.1000") + b"\0" * 256
FIRSTBOOT = "Windows/Setup/ce-firstboot"


def run(params: dict) -> dict:
    return execute(STEP, STEP.parse(params), Recorder()).model_dump(mode="json")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def world(samples, samba, tmp_path_factory):
    work = tmp_path_factory.mktemp("upgrade-pvs")
    folder = samba.share_dir("share") / "pvs"
    folder.mkdir()
    shutil.copyfile(samples[SYSRES].path, folder / "gold.vhdx")
    shutil.copyfile(samples[SINGLE].path, folder / "desk.vhd")
    payloads = work / "payloads"
    payloads.mkdir()
    (payloads / "PVS_Device_x64.exe").write_bytes(INSTALLER)
    (payloads / "PVS_Device_x64_2203.exe").write_bytes(pe_stub("stand-in PVS_Device_x64 2203.0.5000"))
    write_manifest(payloads, [{"component": "pvs-target-device", "version": "2402.0.1000",
                               "file": "PVS_Device_x64.exe"},
                              {"component": "pvs-target-device", "version": "2203.0.5000",      # the downgrade's:
                               "file": "PVS_Device_x64_2203.exe"}])       # there, so the image refuses it
    ca = Authority(work / "ca", "PVS Server CA")
    return {"work": work, "folder": folder, "payloads": str(payloads), "ca": ca,
            "location": samba.location(folder="pvs")}


def params(world, name: str, output: str, **extra) -> dict:
    return {"inputStorageLocation": world["location"], "inputImageFilename": name, "outputImageFilename": output,
            "payloads": world["payloads"], **extra}


def ntfs_file(raw: Path, work: Path, path: str) -> bytes:
    """A file off the merged disk's Windows volume (its 2nd MBR partition), read by ntfs-3g's ntfscat."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]["partitions"]
    start, size = table[1]["start"] * 512, table[1]["size"] * 512
    volume = work / "windows.ntfs"
    if not volume.exists():
        with open(raw, "rb") as src, open(volume, "wb") as dst:
            src.seek(start)
            dst.write(src.read(size))
    return subprocess.run(["ntfscat", str(volume), path], capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def upgraded(world):
    parent = world["folder"] / "gold.vhdx"
    before = (sha256(parent), parent.stat().st_mtime_ns)
    result = run(params(world, "gold.vhdx", "gold.1.avhdx", outputSizeMb=224, installPvs="2402 LTSR CU1",
                        PvsSslCaCertificate=world["ca"].cert_path.read_text()))
    raw = world["work"] / "merged.raw"
    raw.write_bytes(dissect_merged(world["folder"] / "gold.1.avhdx"))
    return {"result": result, "raw": raw, "before": before, "parent": parent}


def test_upgrade_is_staged_in_a_grown_child(upgraded, world):
    result = upgraded["result"]
    assert result["error"] is None
    pvs = result["facts"]["pvs"]
    assert (pvs["action"], pvs["build"], pvs["found"]) == ("upgrade", "2402.0.1000", "7.33.5000.18")
    assert upgraded["raw"].stat().st_size == 224 * MiB == result["facts"]["child"]["virtualSize"]
    parent = upgraded["parent"]
    assert (sha256(parent), parent.stat().st_mtime_ns) == upgraded["before"]


def test_first_boot_runs_ca_then_installer_then_volume(upgraded, world):
    work = world["work"]
    plan = json.loads(ntfs_file(upgraded["raw"], work, f"/{FIRSTBOOT}/plan.json"))
    names = [a["name"] for a in plan["actions"]]
    assert names == ["import-ca-certificate", "pvs-install", "extend-system-volume"]
    installer = ntfs_file(upgraded["raw"], work, f"/{FIRSTBOOT}/payloads/PVS_Device_x64.exe")
    assert installer == INSTALLER
    der = ntfs_file(upgraded["raw"], work, f"/{FIRSTBOOT}/payloads/pvs-server-ca.cer")
    staged = x509.load_der_x509_certificate(der)
    expected = x509.load_pem_x509_certificate(world["ca"].cert_path.read_bytes())
    assert staged == expected
    thumbprint = next(a for a in plan["actions"] if a["name"] == "import-ca-certificate")["params"]["thumbprint"]
    assert thumbprint == hashlib.sha1(der).hexdigest().upper()
    system = work / "SYSTEM"
    system.write_bytes(ntfs_file(upgraded["raw"], work, "/Windows/System32/config/SYSTEM"))
    setup = {v.name: v.value for v in RegistryHive(str(system)).get_key("\\Setup").iter_values()}
    assert "ce-firstboot" in setup["CmdLine"] and setup["SetupType"] == 2


def test_a_downgrade_is_refused_and_nothing_is_written(world):
    names = sorted(p.name for p in world["folder"].iterdir())
    with pytest.raises(PvsDowngradeRefused, match="7.41"):
        run(params(world, "desk.vhd", "desk.1.avhd", installPvs="2203 LTSR CU5", dryRun=True))
    assert sorted(p.name for p in world["folder"].iterdir()) == names


@pytest.mark.parametrize("pem, message", [
    ("not a certificate", "exactly one PEM certificate"),
    ("-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n", "private key"),
])
def test_unusable_ca_is_refused_before_anything(world, pem, message):
    with pytest.raises(InvalidParams, match=message) as caught:
        STEP.parse(params(world, "gold.vhdx", "x.avhdx", installPvs="2402 LTSR CU1", PvsSslCaCertificate=pem))
    assert "MII" not in str(caught.value)


def test_a_server_certificate_is_not_a_ca(world):
    leaf = world["ca"].issue("pvs-server", "pvs.corp.example.com", server=True)
    with pytest.raises(InvalidParams, match="not a CA certificate"):
        STEP.parse(params(world, "gold.vhdx", "x.avhdx", installPvs="2402 LTSR CU1",
                          PvsSslCaCertificate=leaf.cert.read_text()))
    pair = world["ca"].cert_path.read_text() * 2
    with pytest.raises(InvalidParams, match="exactly one"):
        STEP.parse(params(world, "gold.vhdx", "x.avhdx", installPvs="2402 LTSR CU1", PvsSslCaCertificate=pair))


def test_unknown_version_and_names_are_refused_before_anything(world):
    with pytest.raises(InvalidParams, match="not a supported Citrix Provisioning version"):
        STEP.parse(params(world, "gold.vhdx", "x.avhdx", installPvs="1912 LTSR"))
    with pytest.raises(InvalidParams, match=re.escape(".vhdx or .avhdx")):
        STEP.parse(params(world, "gold.vhdx", "x.vhd", installPvs="2402 LTSR CU1"))
    with pytest.raises(InvalidParams, match="plain file name"):
        STEP.parse(params(world, "gold.vhdx", "..\\x.avhdx", installPvs="2402 LTSR CU1"))
