"""The disk steps (convert, export, publish, reverseImage, hash) end to end: a sample Windows disk, real qemu-img,
a real Samba smbd on 127.0.0.1, libvhdi / libvmdk as independent readers. No mocks."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ce import disks, hashing, staging
from ce.errors import CeError, TimedOut
from ce.errors import Canceled as StepCanceled
from ce.step import StepContext, Stopper, execute, step_types
from tests.support import ROOT
from tests.support.smbserver import PASSWORD, USER, SambaServer
from tests.support.steps import Recorder

MiB = 1 << 20
SAMPLE = "win2016-vda1912"
TINY_FREE, TINY_TOTAL = 64 * MiB, 100 * MiB        # samba's tiny share: less than twice the sample's 128 MiB
STEPS = step_types()

FORMATS = [("raw", None), ("qcow2", None), ("vhd", "fixed"), ("vhd", "dynamic"), ("vhdx", "dynamic"),
           ("vhdx", "fixed"), ("vmdk", "monolithicSparse"), ("vmdk", "streamOptimized")]
READERS = {"vhd": ("vhdiinfo", {"fixed": "Fixed", "dynamic": "Dynamic"}),
           "vhdx": ("vhdiinfo", {"fixed": "Fixed", "dynamic": "Dynamic"}),
           "vmdk": ("vmdkinfo", {"monolithicSparse": "Monolithic sparse", "streamOptimized": "Stream optimized"})}


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def windows(samples) -> Path:
    return samples[SAMPLE].path


@pytest.fixture(scope="module")
def windows_raw(windows, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw") / "win2016.raw"
    disks.convert(windows, out, "raw")
    return out


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    """The steps' local scratch directory, so tests can see that nothing is left in it."""
    path = tmp_path / "scratch"
    path.mkdir()
    monkeypatch.setenv(staging.SCRATCH_ENV, str(path))
    return path


def location(server: SambaServer, share: str = "share", folder: str = "", password: str = PASSWORD,
             user: str = USER) -> dict:
    return server.location(share, folder, password, user)


def run(step: str, params: dict, ctx: StepContext | None = None) -> dict:
    """The step's facts (what these tests check) with step / dryRun / seconds, after checking that the document is
    the one Plan / Result shape."""
    kind = STEPS[step]
    document = execute(kind, kind.parse(params), ctx or Recorder()).model_dump(mode="json")
    json.dumps(document)                                   # a plan / result document is plain JSON
    assert document["step"] == step
    changes = document["changes"] if document["dryRun"] else [o["change"] for o in document["outcomes"]]
    assert changes and all(c["kind"].startswith("disk_") for c in changes), changes
    return {**document["facts"], "step": step, "dryRun": document["dryRun"], "seconds": document.get("seconds")}


def content_hashes(path: Path, fmt: str | None = None) -> dict:
    """Independent of ce.hashing: qemu-img writes the raw contents, hashlib reads them."""
    raw = path.parent / (path.name + ".check.raw")
    subprocess.run(["qemu-img", "convert", *(["-f", fmt] if fmt else []), "-O", "raw", str(path), str(raw)],
                   check=True)
    try:
        data = raw.read_bytes()
    finally:
        raw.unlink()
    return {"md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}


def reader_report(fmt: str, path: Path) -> str:
    tool = READERS[fmt][0]
    if not shutil.which(tool):
        pytest.skip(f"{tool} not installed (Debian libvhdi-utils / libvmdk-utils)")
    return subprocess.run([tool, str(path)], capture_output=True, text=True, check=True).stdout


def assert_readable_by_independent_reader(fmt: str, subformat: str | None, path: Path, size: int) -> None:
    if fmt not in READERS:
        return
    report = reader_report(fmt, path)
    assert re.search(rf"Disk type\s*:\s*{READERS[fmt][1][subformat]}\b", report), report
    assert f"({size} bytes)" in report, report


def file_name(fmt: str, subformat: str | None) -> str:
    return f"disk-{fmt}-{subformat or 'plain'}.{fmt}"


# ---------------------------------------------------------------- convert: every pair of formats

@pytest.fixture(scope="module")
def windows_as(windows, tmp_path_factory):
    """The Windows sample in every format, written by the convert step."""
    out = tmp_path_factory.mktemp("formats")
    made = {}
    for fmt, subformat in FORMATS:
        path = out / file_name(fmt, subformat)
        result = run("convert", {"source": str(windows), "output": str(path), "outputFormat": fmt,
                                 "subformat": subformat})
        assert result["output"]["format"] == fmt and result["output"]["subformat"] == subformat
        made[(fmt, subformat)] = path
    return made


@pytest.mark.parametrize("fmt,subformat", FORMATS)
def test_convert_writes_each_format_readable_by_an_independent_reader(windows, windows_as, fmt, subformat):
    path = windows_as[(fmt, subformat)]
    size = disks.info(windows).virtual_size
    described = disks.info(path, "raw" if fmt == "raw" else None)
    assert (described.format, described.subformat, described.virtual_size) == \
        (disks.qemu_format(fmt), subformat, size)
    assert_readable_by_independent_reader(fmt, subformat, path, size)
    assert disks.compare(windows, path)


def test_every_format_pair_converts_to_identical_content(windows, windows_as, tmp_path):
    expected = content_hashes(windows)
    for (src, dst) in itertools.permutations(FORMATS, 2):
        out = tmp_path / ("pair-" + file_name(*dst))
        result = run("convert", {"source": str(windows_as[src]), "output": str(out), "outputFormat": dst[0],
                                 "subformat": dst[1], "sourceFormat": "raw" if src[0] == "raw" else None})
        assert result["output"]["subformat"] == dst[1], (src, dst)
        assert disks.compare(windows, out, fmt_b="raw" if dst[0] == "raw" else None), (src, dst)
        if dst[0] in ("vhdx", "vmdk"):          # one hash per pair family is enough to prove compare's verdict
            assert hashing.hash_disk(out).hashes == expected, (src, dst)
        out.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_convert_refuses_an_existing_output_unless_overwrite(windows, tmp_path):
    out = tmp_path / "kept.vhdx"
    out.write_bytes(b"precious")
    with pytest.raises(CeError) as refused:
        run("convert", {"source": str(windows), "output": str(out), "outputFormat": "vhdx"})
    assert refused.value.code == "disk_exists" and out.read_bytes() == b"precious"
    run("convert", {"source": str(windows), "output": str(out), "outputFormat": "vhdx", "overwriteOutput": True})
    assert disks.compare(windows, out)


def test_convert_azure_fixed_vhd(windows, tmp_path):
    out = tmp_path / "azure.vhd"
    result = run("convert", {"source": str(windows), "output": str(out), "outputFormat": "vhd", "azureFixed": True})
    disks.verify_azure_vhd(out)
    assert result["output"]["virtualSize"] % MiB == 0 and (out.stat().st_size - 512) % MiB == 0


def test_convert_dry_run_writes_nothing(windows, tmp_path):
    out = tmp_path / "never.vmdk"
    plan = run("convert", {"source": str(windows), "output": str(out), "outputFormat": "vmdk", "dryRun": True})
    assert plan["dryRun"] and plan["output"]["path"] == str(out) and not out.exists()


def test_convert_to_and_from_smb(samba, folder, windows, tmp_path, scratch):
    up = run("convert", {"source": str(windows), "outputStorageLocation": location(samba, folder=folder.name),
                         "outputImageFilename": "win.vhdx", "outputFormat": "vhdx"})
    assert up["bytesSent"] and disks.compare(windows, folder / "win.vhdx")
    back = tmp_path / "back.vmdk"
    down = run("convert", {"inputStorageLocation": location(samba, folder=folder.name),
                           "inputImageFilename": "win.vhdx", "output": str(back), "outputFormat": "vmdk"})
    assert down["source"]["format"] == "vhdx" and disks.compare(windows, back)
    both = run("convert", {"inputStorageLocation": location(samba, folder=folder.name), "inputImageFilename": "win.vhdx",
                           "outputStorageLocation": location(samba, folder=folder.name),
                           "outputImageFilename": "win.vhd", "outputFormat": "vhd", "subformat": "fixed"})
    assert both["output"]["subformat"] == "fixed" and disks.compare(windows, folder / "win.vhd", fmt_b="vpc")
    assert sorted(p.name for p in folder.iterdir()) == ["win.vhd", "win.vhdx"]
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("fmt,subformat", [("vhdx", "dynamic"), ("vhd", "dynamic"), ("vhd", "fixed")])
def test_convert_streams_a_raw_disk_to_a_share(samba, folder, windows, windows_raw, scratch, fmt, subformat):
    result = run("convert", {"source": str(windows_raw), "outputStorageLocation": location(samba, folder=folder.name),
                             "outputImageFilename": f"win.{fmt}", "outputFormat": fmt, "subformat": subformat})
    stored = folder / f"win.{fmt}"
    assert result["output"]["method"] == "stream" and result["output"]["fileSize"] == stored.stat().st_size
    assert disks.compare(windows, stored, fmt_b=disks.qemu_format(fmt))
    assert disks.info(stored, disks.qemu_format(fmt)).subformat == subformat
    assert list(scratch.iterdir()) == [] and [p.name for p in folder.iterdir()] == [stored.name]


def test_convert_from_a_share_probes_the_format_and_reads_in_place(samba, folder, windows, tmp_path, scratch):
    """No extension and no sourceFormat: the format is probed over the share (a fixed VHD probes as raw to qemu-img;
    its footer tells), and nothing of the image's size lands in the scratch space."""
    disks.convert(windows, folder / "golden", "vhd", subformat="fixed")
    planned = run("convert", {"inputStorageLocation": location(samba, folder=folder.name), "inputImageFilename": "golden",
                              "output": str(tmp_path / "out.qcow2"), "outputFormat": "qcow2", "dryRun": True})
    assert (planned["source"]["format"], planned["source"]["subformat"]) == ("vhd", "fixed")
    assert planned["source"]["virtualSize"] == disks.info(windows).virtual_size
    assert planned["scratch"]["needed"] < 32 * MiB and not (tmp_path / "out.qcow2").exists()
    run("convert", {"inputStorageLocation": location(samba, folder=folder.name), "inputImageFilename": "golden",
                    "output": str(tmp_path / "out.qcow2"), "outputFormat": "qcow2"})
    assert disks.compare(windows, tmp_path / "out.qcow2")
    assert list(scratch.iterdir()) == []


def test_convert_from_a_share_refuses_an_image_whose_parent_is_elsewhere(samba, folder, windows, scratch):
    disks.create_child(windows, folder / "child.qcow2")
    with pytest.raises(CeError) as refused:
        run("convert", {"inputStorageLocation": location(samba, folder=folder.name),
                        "inputImageFilename": "child.qcow2", "output": str(folder / "out.raw"), "outputFormat": "raw"})
    assert refused.value.code == "disk_chain_refused" and "backing file" in refused.value.message
    assert list(scratch.iterdir()) == []


def test_convert_params_need_one_source_and_one_output():
    for params in ({"outputFormat": "vhdx", "output": "/tmp/x"},
                   {"outputFormat": "vhdx", "source": "/tmp/a"},
                   {"outputFormat": "vdi", "source": "/tmp/a", "output": "/tmp/b"}):
        with pytest.raises(CeError) as refused:
            STEPS["convert"].parse(params)
        assert refused.value.code == "invalid_params"


# ---------------------------------------------------------------- export

@pytest.mark.parametrize("fmt,ext,subformat", [("VhdxDiskFormat", "vhdx", "dynamic"),
                                               ("VhdxDiskFormat", "vhdx", "fixed"),
                                               ("VhdDiskFormat", "vhd", "dynamic"),
                                               ("VhdDiskFormat", "vhd", "fixed")])
@pytest.mark.parametrize("kind,method", [("qcow2", "convert_then_upload"), ("raw", "stream")])
def test_export_writes_the_final_name_with_the_right_hash(samba, folder, windows, windows_raw, scratch, fmt, ext,
                                                          subformat, kind, method):
    ctx = Recorder()
    disk = windows if kind == "qcow2" else windows_raw
    result = run("export", {"disk": str(disk), "outputStorageLocation": location(samba, folder=folder.name),
                            "SmbDiskName": "golden", "SmbDiskFormat": fmt, "SmbDiskSubformat": subformat,
                            "hashDisk": True}, ctx)
    stored = folder / f"golden.{ext}"
    assert result["target"]["method"] == method
    assert sorted(p.name for p in folder.iterdir()) == [stored.name]
    assert result["target"]["name"] == stored.name and result["target"]["fileSize"] == stored.stat().st_size
    fmt_b = "vpc" if ext == "vhd" else "vhdx"
    assert result["hashes"] == content_hashes(windows) == content_hashes(stored, fmt_b)
    assert disks.compare(windows, stored, fmt_b=fmt_b)
    assert disks.info(stored, fmt_b).subformat == subformat
    assert_readable_by_independent_reader(ext, subformat, stored, result["source"]["virtualSize"])
    percents = [p for p, _ in ctx.reports]
    assert percents == sorted(percents) and percents[-1] == 100
    assert list(scratch.iterdir()) == []
    if subformat == "dynamic":               # holes were skipped: far less than the 128 MiB virtual size was sent
        assert result["bytesSent"] < 32 * MiB


def test_a_streamed_container_qemu_img_cannot_read_is_never_renamed(samba, folder, dense_disk, scratch, monkeypatch):
    """The check before the rename is qemu-img's, not the writer's: a BAT entry pointing past the end is caught."""
    from ce.disks import layouts
    honest = layouts.VhdxLayout.metadata

    def broken(layout):
        (at, head), = honest(layout)
        head = bytearray(head)
        struct.pack_into("<Q", head, layout.bat_offset, (1 << 40) | layouts.VHDX_BLOCK_FULLY_PRESENT)
        return [(at, bytes(head))]

    monkeypatch.setattr(layouts.VhdxLayout, "metadata", broken)
    with pytest.raises(CeError) as refused:
        run("export", {"disk": str(dense_disk), "outputStorageLocation": location(samba, folder=folder.name),
                       "SmbDiskName": "broken"})
    assert refused.value.code == "disk_unreadable", refused.value.to_dict()
    assert "broken.vhdx" in refused.value.message and "nbd" not in refused.value.message    # named as the user knows it
    assert list(folder.iterdir()) == [] and list(scratch.iterdir()) == []


def test_export_streams_a_raw_disk_whose_size_is_not_whole_sectors_through_a_conversion(samba, folder, tmp_path,
                                                                                        scratch):
    odd = tmp_path / "odd.raw"
    odd.write_bytes(os.urandom(3 * MiB + 100))
    result = run("export", {"disk": str(odd), "outputStorageLocation": location(samba, folder=folder.name),
                            "SmbDiskName": "odd"})
    assert result["target"]["method"] == "convert_then_upload"      # qemu-img pads the last sector with zeros
    assert disks.info(folder / "odd.vhdx", "vhdx").virtual_size == 3 * MiB + 512


def test_export_from_a_block_device(samba, folder, windows_raw, scratch):
    device = subprocess.run(["losetup", "--read-only", "--find", "--show", str(windows_raw)], capture_output=True,
                            text=True)
    if device.returncode:
        pytest.skip(f"no loop device here: {device.stderr.strip()}")
    try:
        result = run("export", {"disk": device.stdout.strip(), "SmbDiskName": "from-device", "hashDisk": True,
                                "outputStorageLocation": location(samba, folder=folder.name)})
    finally:
        subprocess.run(["losetup", "--detach", device.stdout.strip()], check=True)
    assert result["source"]["isBlockDevice"] and result["target"]["method"] == "stream"
    assert result["hashes"] == content_hashes(windows_raw, "raw")
    assert disks.compare(windows_raw, folder / "from-device.vhdx", fmt_a="raw")


def test_export_refuses_an_existing_file_before_any_work(samba, folder, windows, scratch):
    (folder / "taken.vhdx").write_bytes(b"someone else's disk")
    params = {"disk": str(windows), "outputStorageLocation": location(samba, folder=folder.name),
              "SmbDiskName": "taken.vhdx"}
    with pytest.raises(CeError) as refused:
        run("export", params)
    assert refused.value.code == "smb_exists" and "overwriteTargetFile" in refused.value.message
    assert (folder / "taken.vhdx").read_bytes() == b"someone else's disk"
    run("export", {**params, "overwriteTargetFile": True})
    assert disks.compare(windows, folder / "taken.vhdx")
    assert sorted(p.name for p in folder.iterdir()) == ["taken.vhdx"]


@pytest.mark.parametrize("change, code", [
    ({"password": "wrong-password"}, "smb_auth_failed"),
    ({"share": "no-such-share"}, "smb_share_not_found"),
    ({"folder": "missing-folder"}, "smb_not_found"),
    ({"share": "tiny"}, "smb_share_full"),
])
def test_export_location_errors_are_clear_and_leave_nothing(samba, windows, scratch, change, code):
    where = location(samba, **change)
    with pytest.raises(CeError) as refused:
        run("export", {"disk": str(windows), "outputStorageLocation": where, "SmbDiskName": "never"})
    assert refused.value.code == code
    assert PASSWORD not in refused.value.message and "wrong-password" not in refused.value.message
    assert not list(samba.share_dir("tiny").iterdir()) and not (samba.share_dir("share") / "never.vhdx").exists()
    assert list(scratch.iterdir()) == []


def test_too_little_space_names_the_rule(samba, windows, scratch):
    with pytest.raises(CeError) as refused:
        run("export", {"disk": str(windows), "outputStorageLocation": location(samba, "tiny"), "SmbDiskName": "x"})
    assert "twice its virtual size" in refused.value.message


@pytest.mark.parametrize("name", ["..\\escape", "../escape", "\\\\evil\\share\\x", "/etc/x", "C:\\x", "a\\b",
                                  "CON", "x:stream", "bad?name"])
def test_export_refuses_path_tricks_in_the_name(samba, folder, windows, name):
    with pytest.raises(CeError) as refused:
        STEPS["export"].parse({"disk": str(windows), "SmbDiskName": name,
                               "outputStorageLocation": location(samba, folder=folder.name)})
    assert refused.value.code in ("smb_path_refused", "invalid_params")
    assert list(folder.iterdir()) == [] and not list(samba.share_dir("share").glob("escape*"))


def test_export_refuses_a_location_with_credentials_in_it(samba, windows):
    where = {**location(samba), "Location": f"smb://{USER}:{PASSWORD}@127.0.0.1/share"}
    with pytest.raises(CeError) as refused:
        STEPS["export"].parse({"disk": str(windows), "SmbDiskName": "x", "outputStorageLocation": where})
    assert refused.value.code == "invalid_params" and PASSWORD not in refused.value.message


def test_cancel_in_the_middle_of_the_upload_leaves_nothing(samba, folder, dense_disk, scratch):
    ctx = Recorder(cancel_when=lambda percent, message: message.startswith("streaming") and percent > 50)
    with pytest.raises(StepCanceled):
        run("export", {"disk": str(dense_disk), "outputStorageLocation": location(samba, folder=folder.name),
                       "SmbDiskName": "canceled"}, ctx)
    assert any(m.startswith("streaming") and p > 50 for p, m in ctx.reports)
    assert list(folder.iterdir()) == [] and list(scratch.iterdir()) == []


def test_cancel_while_converting_leaves_nothing(samba, folder, dense_disk, scratch):
    dense_qcow2 = dense_disk.with_suffix(".qcow2")          # a raw disk would be streamed, not converted
    if not dense_qcow2.exists():
        disks.convert(dense_disk, dense_qcow2, "qcow2")
    ctx = Recorder(cancel_when=lambda percent, message: message.startswith("converting"))
    with pytest.raises(StepCanceled):
        run("export", {"disk": str(dense_qcow2), "outputStorageLocation": location(samba, folder=folder.name),
                       "SmbDiskName": "canceled", "SmbDiskFormat": "VhdDiskFormat"}, ctx)
    assert not any(m.startswith("uploading") for _, m in ctx.reports)
    assert list(folder.iterdir()) == [] and list(scratch.iterdir()) == []


def test_timeout_is_reported_as_such(windows, tmp_path):
    stop = Stopper(StepContext(), 10, "export")
    stop.deadline = time.monotonic() - 1                  # the step's time is already up
    with pytest.raises(TimedOut, match="10 s timeout"), stop.translating():
        disks.convert(windows, tmp_path / "late.vhdx", "vhdx", cancel=stop)
    assert list(tmp_path.iterdir()) == []


def test_share_running_full_mid_upload_leaves_nothing(full_samba, dense_disk, scratch):
    with pytest.raises(CeError) as refused:
        run("export", {"disk": str(dense_disk), "outputStorageLocation": location(full_samba),
                       "SmbDiskName": "too-big"})
    assert refused.value.code == "smb_share_full"
    assert list(full_samba.share_dir("share").iterdir()) == [] and list(scratch.iterdir()) == []


def test_local_scratch_too_small_is_refused_before_any_work(samba, folder, windows, tmp_path, monkeypatch):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=False, capture_output=True)
    if not os.path.ismount(small):
        pytest.skip("cannot mount a small tmpfs here")
    try:
        monkeypatch.setenv(staging.SCRATCH_ENV, str(small))
        with pytest.raises(CeError) as refused:
            run("export", {"disk": str(windows), "outputStorageLocation": location(samba, folder=folder.name),
                           "SmbDiskName": "nope", "SmbDiskSubformat": "fixed"})
        assert refused.value.code == "local_space_short" and staging.SCRATCH_ENV in refused.value.message
        assert list(folder.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_export_dry_run_plans_without_writing(samba, folder, windows, scratch):
    plan = run("export", {"disk": str(windows), "outputStorageLocation": location(samba, folder=folder.name),
                          "SmbDiskName": "planned", "hashDisk": True, "dryRun": True})
    assert plan["dryRun"] and plan["target"]["path"].endswith("\\planned.vhdx")
    assert plan["space"]["required"] == 2 * plan["source"]["virtualSize"] and plan["hash"] == ["md5", "sha256"]
    assert list(folder.iterdir()) == [] and list(scratch.iterdir()) == []


def test_password_never_appears_in_results_or_logs(samba, folder, windows, scratch, caplog):
    caplog.set_level("DEBUG")
    kind = STEPS["export"]
    params = kind.parse({"disk": str(windows), "outputStorageLocation": location(samba, folder=folder.name),
                         "SmbDiskName": "secret-check"})
    result = execute(kind, params, Recorder()).model_dump(mode="json")
    for text in (json.dumps(result), repr(params), str(params), params.model_dump_json(), caplog.text):
        assert PASSWORD not in text


@pytest.fixture(scope="module")
def dense_disk(tmp_path_factory) -> Path:
    """64 MiB of random data: big enough that an upload reports progress many times."""
    path = tmp_path_factory.mktemp("dense") / "dense.raw"
    with open(path, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(MiB))
    return path


# ---------------------------------------------------------------- publish

def test_publish_names_the_vdisk_and_leaves_the_pvp_to_pvs(samba, folder, windows, scratch):
    result = run("publish", {"disk": str(windows), "outputStorageLocation": location(samba, folder=folder.name),
                             "vDiskName": "Win2016 VDA", "hashDisk": True})
    assert sorted(p.name for p in folder.iterdir()) == ["Win2016 VDA.vhdx"]
    assert result["target"]["vDiskName"] == "Win2016 VDA" and result["target"]["pvp"] == "none"
    assert result["hashes"] == content_hashes(folder / "Win2016 VDA.vhdx")
    assert disks.compare(windows, folder / "Win2016 VDA.vhdx")


def test_publish_refuses_a_vdisk_pvs_has_open_or_with_versions(samba, folder, windows, scratch):
    params = {"disk": str(windows), "outputStorageLocation": location(samba, folder=folder.name),
              "vDiskName": "base", "overwriteTargetFile": True}
    (folder / "base.vhdx").write_bytes(b"old base")
    (folder / "base.lok").write_bytes(b"")
    with pytest.raises(CeError) as refused:
        run("publish", params)
    assert refused.value.code == "vdisk_in_use"
    (folder / "base.lok").unlink()
    (folder / "base.1.avhdx").write_bytes(b"a version")
    with pytest.raises(CeError) as refused:
        run("publish", params)
    assert refused.value.code == "smb_exists" and "base.1.avhdx" in refused.value.message
    assert (folder / "base.vhdx").read_bytes() == b"old base"
    (folder / "base.1.avhdx").unlink()
    (folder / "base.pvp").write_text("[General]\n")
    result = run("publish", params)
    assert result["target"]["pvp"] == "kept" and (folder / "base.pvp").read_text() == "[General]\n"
    assert disks.compare(windows, folder / "base.vhdx")


@pytest.mark.parametrize("name", ["with.dot", "..", "a\\b", "", "x" * 101])
def test_publish_refuses_unusable_vdisk_names(samba, windows, name):
    with pytest.raises(CeError) as refused:
        STEPS["publish"].parse({"disk": str(windows), "outputStorageLocation": location(samba), "vDiskName": name})
    assert refused.value.code == "invalid_params"


# ---------------------------------------------------------------- reverseImage

@pytest.fixture(scope="module")
def image_on_share(samba, windows):
    """The Windows sample exported once as VHDX and once as a fixed VHD to its own folder."""
    folder = samba.share_dir("share") / "reverse-source"
    folder.mkdir()
    for fmt, subformat in (("VhdxDiskFormat", "dynamic"), ("VhdDiskFormat", "fixed")):
        run("export", {"disk": str(windows), "outputStorageLocation": location(samba, folder=folder.name),
                       "SmbDiskName": "golden", "SmbDiskFormat": fmt, "SmbDiskSubformat": subformat})
    return folder


def reverse(samba, disk, name="golden.vhdx", **extra) -> dict:
    return run("reverseImage", {"disk": str(disk), "inputStorageLocation": location(samba, folder="reverse-source"),
                                "inputImageFilename": name, **extra})


def test_reverse_image_onto_a_new_file_creates_it(samba, image_on_share, windows, tmp_path, scratch):
    """A path that does not exist yet (in a folder that does) is a new thin disk; a dry run creates nothing."""
    target = tmp_path / "new.raw"
    planned = reverse(samba, target, dryRun=True)
    assert planned["target"]["creates"] and not target.exists()
    result = reverse(samba, target)
    assert result["target"]["creates"] and target.stat().st_size == result["target"]["outputSize"]
    assert disks.compare(windows, target, fmt_b="raw")
    with pytest.raises(CeError) as refused:
        reverse(samba, tmp_path / "no-such-folder" / "new.raw")
    assert refused.value.code == "output_dir_missing"


@pytest.mark.parametrize("name", ["golden.vhdx", "golden.vhd"])
def test_reverse_image_writes_the_disk(samba, image_on_share, windows, tmp_path, scratch, name):
    size = disks.info(windows).virtual_size
    target = tmp_path / "attached.raw"
    target.write_bytes(b"")
    os.truncate(target, size)
    result = reverse(samba, target, name)
    assert result["target"]["outputSize"] == size and target.stat().st_size == size
    assert hashing.hash_disk(target).hashes == content_hashes(windows)
    assert list(scratch.iterdir()) == []


def test_reverse_image_grows_a_file_to_output_size_with_zeros(samba, image_on_share, windows, tmp_path, scratch):
    target = tmp_path / "thin.raw"
    target.write_bytes(bytes(4096))
    size_mb = disks.info(windows).virtual_size // MiB + 16
    reverse(samba, target, outputSizeMb=size_mb)
    assert target.stat().st_size == size_mb * MiB
    assert disks.compare(windows, target, fmt_b="raw")       # equal, and the 16 MiB tail reads as zeros


def test_reverse_image_refuses_a_non_empty_disk_unless_overwrite(samba, image_on_share, windows, tmp_path, scratch):
    size = disks.info(windows).virtual_size
    target = tmp_path / "used.raw"
    with open(target, "wb") as f:                             # old data everywhere, a boot sector first
        for _ in range(size // MiB + 8):
            f.write(os.urandom(MiB))
    before = hashlib.sha256(target.read_bytes()).hexdigest()
    with pytest.raises(CeError) as refused:
        reverse(samba, target)
    assert refused.value.code == "disk_not_empty" and "overwriteOutput" in refused.value.message
    assert hashlib.sha256(target.read_bytes()).hexdigest() == before
    reverse(samba, target, overwriteOutput=True, outputSizeMb=size // MiB + 8)
    assert disks.compare(windows, target, fmt_b="raw")       # no old byte shows through, tail included


def scratch_bytes(scratch: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in scratch.rglob("*") if p.is_file())


def test_reverse_image_reads_the_image_in_place_without_a_local_copy(samba, folder, dense_disk, tmp_path, scratch):
    """64 MiB of random data: the scratch space never holds more than the overlay's metadata."""
    run("export", {"disk": str(dense_disk), "outputStorageLocation": location(samba, folder=folder.name),
                   "SmbDiskName": "dense"})
    target = tmp_path / "attached.raw"
    target.touch()
    seen: list[int] = []
    ctx = Recorder(cancel_when=lambda percent, message: seen.append(scratch_bytes(scratch)) and False)
    result = run("reverseImage", {"disk": str(target), "inputStorageLocation": location(samba, folder=folder.name),
                                  "inputImageFilename": "dense.vhdx"}, ctx)
    assert result["scratch"]["needed"] < 32 * MiB
    assert disks.compare(dense_disk, target, fmt_a="raw", fmt_b="raw")
    assert len(seen) > 3 and max(seen) < 4 * MiB, seen
    assert list(scratch.iterdir()) == []


def test_reading_in_place_works_from_a_scratch_directory_too_deep_for_a_socket(samba, image_on_share, windows,
                                                                                tmp_path, monkeypatch):
    """A Unix socket path holds at most 107 bytes: a deep scratch directory gets a short socket directory of its
    own in /tmp, removed afterwards."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setenv(staging.SCRATCH_ENV, str(deep))
    target = tmp_path / "attached.raw"
    target.touch()
    before = set(Path("/tmp").glob(f"ce-nbd-{os.getpid()}-*"))
    reverse(samba, target)
    assert disks.compare(windows, target, fmt_b="raw")
    assert set(Path("/tmp").glob(f"ce-nbd-{os.getpid()}-*")) == before and list(deep.iterdir()) == []


def test_reverse_image_reports_a_share_that_fails_mid_write(dense_disk, tmp_path, scratch):
    with SambaServer(tmp_path / "samba-dies") as server:
        run("export", {"disk": str(dense_disk), "outputStorageLocation": location(server), "SmbDiskName": "dense"})
        target = tmp_path / "attached.raw"
        target.touch()
        ctx = Recorder(cancel_when=lambda percent, message: percent > 20 and server.stop())
        with pytest.raises(CeError) as failed:
            run("reverseImage", {"disk": str(target), "inputStorageLocation": location(server),
                                 "inputImageFilename": "dense.vhdx"}, ctx)
    assert failed.value.code.startswith("smb_"), failed.value.to_dict()
    assert "partly written" in failed.value.message
    assert list(scratch.iterdir()) == []


def test_reverse_image_size_and_format_rules(samba, image_on_share, windows, tmp_path):
    target = tmp_path / "small.raw"
    target.write_bytes(b"")
    os.truncate(target, MiB)
    too_small = disks.info(windows).virtual_size // MiB - 1
    for extra, code in (({"outputSizeMb": too_small}, "disk_too_small"),
                        ({"inputImageFormat": "VhdDiskFormat"}, "image_format_mismatch")):
        with pytest.raises(CeError) as refused:
            reverse(samba, target, **extra)
        assert refused.value.code == code
    with pytest.raises(CeError) as refused:
        reverse(samba, target, name="missing.vhdx")
    assert refused.value.code == "smb_not_found"


def test_reverse_image_onto_a_block_device(samba, image_on_share, windows, tmp_path, scratch):
    size = disks.info(windows).virtual_size
    backing = tmp_path / "lun.raw"
    backing.write_bytes(b"")
    os.truncate(backing, size + 8 * MiB)
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True)
    if device.returncode:
        pytest.skip(f"no loop device here: {device.stderr.strip()}")
    try:
        result = reverse(samba, device.stdout.strip(), outputSizeMb=size // MiB + 8)
        assert result["target"]["isBlockDevice"]
        with pytest.raises(CeError) as refused:               # the device is no longer empty
            reverse(samba, device.stdout.strip())
        assert refused.value.code == "disk_not_empty"
        with pytest.raises(CeError) as refused:               # a block device cannot grow
            reverse(samba, device.stdout.strip(), overwriteOutput=True, outputSizeMb=size // MiB + 9)
        assert refused.value.code == "disk_too_small"
    finally:
        subprocess.run(["losetup", "--detach", device.stdout.strip()], check=True)
    assert disks.compare(windows, backing, fmt_b="raw")


# ---------------------------------------------------------------- hash

def test_content_hash_is_the_same_in_every_format(windows, windows_as):
    expected = content_hashes(windows)
    for (fmt, subformat), path in windows_as.items():
        result = run("hash", {"disk": str(path), "format": fmt if fmt in ("raw", "vhd") else None})
        assert result["hashes"] == expected, (fmt, subformat)
        assert result["size"] == disks.info(windows).virtual_size


def test_file_hash_and_expected_values(windows_as):
    path = windows_as[("vhdx", "dynamic")]
    data = path.read_bytes()
    result = run("hash", {"disk": str(path), "of": "file", "algorithms": ["sha256"]})
    assert result["hashes"] == {"sha256": hashlib.sha256(data).hexdigest()} and result["size"] == len(data)
    md5 = content_hashes(path)["md5"]
    assert run("hash", {"disk": str(path), "algorithms": ["md5"], "expected": {"md5": md5.upper()}})["verified"] == ["md5"]
    with pytest.raises(CeError) as refused:
        run("hash", {"disk": str(path), "algorithms": ["md5"], "expected": {"md5": "0" * 32}})
    assert refused.value.code == "hash_mismatch" and md5 in refused.value.message


def test_hash_of_a_file_on_a_share_checks_an_export_where_it_landed(samba, image_on_share, windows, scratch):
    """The contents hash of a VHDX / fixed VHD read in place on the share equals the local disk's; its file hash
    equals the file's bytes; a wrong expectation fails; the command line takes the UNC path."""
    expected = content_hashes(windows)
    for name in ("golden.vhdx", "golden.vhd"):
        on_share = {"inputStorageLocation": location(samba, folder="reverse-source"), "inputImageFilename": name}
        result = run("hash", on_share)
        assert result["hashes"] == expected and result["size"] == disks.info(windows).virtual_size, name
        data = (image_on_share / name).read_bytes()
        as_file = run("hash", {**on_share, "of": "file", "algorithms": ["sha256"]})
        assert as_file["hashes"] == {"sha256": hashlib.sha256(data).hexdigest()} and as_file["size"] == len(data)
    with pytest.raises(CeError) as refused:
        run("hash", {**on_share, "algorithms": ["md5"], "expected": {"md5": "0" * 32}})
    assert refused.value.code == "hash_mismatch" and expected["md5"] in refused.value.message
    with pytest.raises(CeError) as both:
        run("hash", {**on_share, "disk": str(windows)})
    assert both.value.code == "invalid_params"
    assert list(scratch.iterdir()) == []
    env = {**os.environ, "CE_SMB_PASSWORD": PASSWORD}
    cli = subprocess.run([sys.executable, "-m", "ce.cli", "hash", "-q", "-a", "md5", "--user", USER, "--port",
                          str(samba.port), samba.unc("share", "reverse-source") + "\\golden.vhdx"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert cli.returncode == 0 and f"md5     {expected['md5']}" in cli.stdout, cli.stderr


def test_content_hasher_treats_gaps_as_zeros_and_keeps_its_own_copy():
    """What a streamed export feeds it: chunks at increasing offsets, holes skipped, one buffer reused."""
    size = 20 * MiB + 512
    disk = bytearray(size)
    pieces = [(MiB, os.urandom(3 * MiB)), (9 * MiB - 7, os.urandom(100)), (12 * MiB, os.urandom(8 * MiB))]
    buffer = bytearray(8 * MiB)
    with hashing.ContentHasher("disk", size) as hasher:
        for offset, data in pieces:
            disk[offset:offset + len(data)] = data
            buffer[:len(data)] = data
            hasher.feed(offset, memoryview(buffer)[:len(data)])
            buffer[:] = bytes(len(buffer))            # the caller reuses its buffer at once
        result = hasher.finish()
    assert result.size == size
    assert result.hashes == {"md5": hashlib.md5(disk).hexdigest(), "sha256": hashlib.sha256(disk).hexdigest()}


def test_hash_of_a_sparse_raw_file_reads_holes_as_zeros(tmp_path):
    path = tmp_path / "sparse.raw"
    with open(path, "wb") as f:
        f.truncate(40 * MiB)
        f.seek(17 * MiB + 3)
        f.write(b"middle")
        f.seek(40 * MiB - 5)
        f.write(b"end!!")
    data = path.read_bytes()
    assert hashing.hash_disk(path).hashes == {"md5": hashlib.md5(data).hexdigest(),
                                             "sha256": hashlib.sha256(data).hexdigest()}


def test_hash_across_several_slices(tmp_path, monkeypatch):
    """Images larger than one decoding slice are hashed slice by slice, in order."""
    monkeypatch.setattr(hashing, "SLICE", 3 * MiB)
    raw = tmp_path / "d.raw"
    raw.write_bytes(os.urandom(10 * MiB + 512))
    vhdx = tmp_path / "d.vhdx"
    disks.convert(raw, vhdx, "vhdx")
    assert hashing.hash_disk(vhdx).hashes == hashing.hash_disk(raw).hashes
    assert hashing.hash_disk(vhdx).hashes["md5"] == hashlib.md5(raw.read_bytes()).hexdigest()


def test_hash_cancel(windows_as):
    ctx = Recorder(cancel_when=lambda percent, message: True)
    with pytest.raises(StepCanceled):
        run("hash", {"disk": str(windows_as[("vhdx", "dynamic")])}, ctx)


# ---------------------------------------------------------------- command line

def ce(*args, env=None, input_text=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ce.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, input=input_text, cwd=ROOT)


def test_cli_export_reads_the_password_from_the_environment(samba, folder, windows, scratch):
    where = f"smb://127.0.0.1:{samba.port}/share/{folder.name}"
    run_ = ce("export", str(windows), where, "--user", USER, "--name", "cli", "--hash", "--json",
              env={"CE_SMB_PASSWORD": PASSWORD})
    assert run_.returncode == 0, run_.stderr
    result = json.loads(run_.stdout)
    assert result["facts"]["hashes"] == content_hashes(windows) and (folder / "cli.vhdx").exists()
    assert PASSWORD not in run_.stdout + run_.stderr


def test_cli_never_takes_a_password_argument_and_fails_clearly_without_one(samba, windows):
    assert "--password" not in ce("export", "--help").stdout
    env = {k: v for k, v in os.environ.items() if k != "CE_SMB_PASSWORD"}
    run_ = subprocess.run([sys.executable, "-m", "ce.cli", "export", str(windows), samba.unc("share"), "--user", USER],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    assert run_.returncode == 1 and "CE_SMB_PASSWORD" in run_.stderr


def test_cli_convert_and_reverse_image_round_trip(samba, folder, windows, tmp_path, scratch):
    env = {"CE_SMB_PASSWORD": PASSWORD, "CE_SMB_USER": USER}
    remote = f"smb://127.0.0.1:{samba.port}/share/{folder.name}/disk.vhd"
    run_ = ce("convert", str(windows), remote, "-O", "vhd", env=env)
    assert run_.returncode == 0, run_.stderr
    assert "applied       write" in run_.stdout and disks.compare(windows, folder / "disk.vhd", fmt_b="vpc")
    target = tmp_path / "attached.raw"
    target.write_bytes(b"")
    run_ = ce("reverse-image", remote, str(target), env=env)
    assert run_.returncode == 0, run_.stderr
    assert disks.compare(windows, target, fmt_b="raw")
    run_ = ce("hash", str(target), "--json")
    assert json.loads(run_.stdout)["facts"]["hashes"] == content_hashes(windows)
    run_ = ce("reverse-image", remote, str(target), env=env)
    assert run_.returncode == 1 and "[disk_not_empty]" in run_.stderr


def test_cli_dry_run_and_errors(samba, windows, scratch):
    env = {"CE_SMB_PASSWORD": "not-the-password", "CE_SMB_USER": USER}
    run_ = ce("publish", str(windows), f"smb://127.0.0.1:{samba.port}/share", "--vdisk", "x", "--dry-run", env=env)
    assert run_.returncode == 1 and "[smb_auth_failed]" in run_.stderr and "not-the-password" not in run_.stderr
    run_ = ce("publish", str(windows), f"smb://127.0.0.1:{samba.port}/share", "--vdisk", "planned", "--dry-run",
              env={**env, "CE_SMB_PASSWORD": PASSWORD})
    assert run_.returncode == 0, run_.stderr
    assert "would write" in run_.stdout and "planned.vhdx" in run_.stdout and not (samba.share_dir("share") / "planned.vhdx").exists()
