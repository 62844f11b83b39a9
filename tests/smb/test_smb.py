"""ce.smb against a real Samba smbd on 127.0.0.1 (started by the fixtures below; no mocks)."""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time

import pytest

from ce import smb
from ce.errors import Canceled, DestinationExists
from ce.smb import Credentials, SmbLocation, SmbShare
from tests.support.files import write_extents
from tests.support.smbserver import PASSWORD, USER, free_port

MiB = 1 << 20
GOOD = Credentials(USER, PASSWORD)
TINY_FREE, TINY_TOTAL = 10 * MiB, 100 * MiB          # the samba fixture's tiny share (tests/conftest.py)


@pytest.fixture
def share(samba, folder):
    with SmbShare(samba.unc("share", folder.name), GOOD, port=samba.port) as connected:
        yield connected


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- locations and credentials

@pytest.mark.parametrize("text, expected", [
    (r"\\files.example.com\images\ce\exports", SmbLocation("files.example.com", "images", "ce\\exports")),
    ("//10.0.0.5/images/ce/", SmbLocation("10.0.0.5", "images", "ce")),
    ("smb://nas:4455/pvs$/store", SmbLocation("nas", "pvs$", "store", 4455)),
    ("SMB://nas/share", SmbLocation("nas", "share", "")),
])
def test_location_forms(text, expected):
    assert SmbLocation.parse(text) == expected


@pytest.mark.parametrize("text", ["nas/share", r"\\nas", "smb://nas", "http://nas/share", r"\\nas\share\..\x",
                                  r"\\nas\share\a:b", "smb://nas:99999/share", "smb://nas/share?x=1", r"\\n as\s"])
def test_location_refused(text):
    with pytest.raises(smb.SmbPathRefused):
        SmbLocation.parse(text)


def test_location_with_credentials_refused_without_echoing_them():
    with pytest.raises(smb.SmbPathRefused) as caught:
        SmbLocation.parse("smb://admin:S3cret-in-url@nas/share")
    assert "S3cret-in-url" not in str(caught.value) and "admin" not in str(caught.value)


def test_credentials_never_show_the_password():
    creds = Credentials("alice", "Hunter2-secret", "CORP")
    assert "Hunter2-secret" not in repr(creds) and "Hunter2-secret" not in str(creds)
    assert creds.principal == "CORP\\alice"


# ---------------------------------------------------------------- transfers

def test_round_trip(share, folder, tmp_path):
    src = tmp_path / "disk.img"
    src.write_bytes(os.urandom(20 * MiB + 12345))          # not a multiple of the chunk size
    seen = []
    stored = share.upload(src, "disk.vhdx", progress=lambda done, total: seen.append((done, total)))
    assert stored.size == src.stat().st_size and not stored.is_dir
    assert sha256(folder / "disk.vhdx") == sha256(src)
    assert seen[-1] == (src.stat().st_size,) * 2
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert share.listdir() == ["disk.vhdx"]

    back = tmp_path / "back.img"
    assert share.download("disk.vhdx", back) == src.stat().st_size
    assert sha256(back) == sha256(src)
    assert not (tmp_path / "back.img.partial").exists()


def test_sparse_upload_stays_sparse(share, folder, tmp_path):
    src = tmp_path / "half-empty.img"
    write_extents(src, 64 * MiB, [(0, 2 * MiB), (20 * MiB, 3 * MiB), (40 * MiB + 4096, 2 * MiB), (62 * MiB, 1 * MiB)])
    share.upload(src, "sparse.img")
    stored = folder / "sparse.img"
    assert stored.stat().st_size == 64 * MiB
    assert stored.stat().st_blocks * 512 < 12 * MiB         # 8 MiB of data, the holes were never written
    assert sha256(stored) == sha256(src)

    back = tmp_path / "back.img"
    share.download("sparse.img", back)
    assert sha256(back) == sha256(src)
    assert back.stat().st_blocks * 512 <= 32 * MiB          # all-zero chunks come back as holes


def test_all_zero_file_sends_nothing_and_keeps_its_size(share, folder, tmp_path):
    src = tmp_path / "zeros.img"
    with open(src, "wb") as f:
        f.write(bytes(9 * MiB))                             # allocated zeros: SEEK_DATA sees data, we see zeros
    share.upload(src, "zeros.img")
    assert (folder / "zeros.img").stat().st_size == 9 * MiB
    assert (folder / "zeros.img").stat().st_blocks == 0


def test_cancel_from_progress_leaves_nothing(share, folder, tmp_path):
    src = tmp_path / "disk.img"
    src.write_bytes(os.urandom(32 * MiB))
    cancel = threading.Event()
    seen_on_server = []

    def cancel_midway(done, total):
        seen_on_server.append(sorted(os.listdir(folder)))
        cancel.set()

    with pytest.raises(Canceled) as caught:
        share.upload(src, "disk.vhdx", progress=cancel_midway, cancel=cancel)
    assert caught.value.code == "canceled"
    assert seen_on_server == [["disk.vhdx.partial"]]       # canceled after the first chunk, while partial
    assert os.listdir(folder) == []


def test_failing_progress_callback_removes_the_partial_file(share, folder, tmp_path):
    src = tmp_path / "disk.img"
    src.write_bytes(os.urandom(16 * MiB))

    def explode(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        share.upload(src, "disk.vhdx", progress=explode)
    assert os.listdir(folder) == []


def test_cancel_download_leaves_no_local_file(share, folder, tmp_path):
    (folder / "remote.img").write_bytes(os.urandom(16 * MiB))
    with pytest.raises(Canceled):
        share.download("remote.img", tmp_path / "local.img", cancel=lambda: True)
    assert os.listdir(tmp_path) == []


def test_overwrite_rules(share, folder, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"first" * 1000)
    second.write_bytes(b"second" * 1000)
    share.upload(first, "disk.vhd")

    with pytest.raises(smb.RemoteExists) as caught:
        share.upload(second, "disk.vhd")
    assert caught.value.code == "smb_exists"
    assert (folder / "disk.vhd").read_bytes() == first.read_bytes()

    share.upload(second, "disk.vhd", overwrite=True)
    assert (folder / "disk.vhd").read_bytes() == second.read_bytes()
    assert os.listdir(folder) == ["disk.vhd"]

    with pytest.raises(DestinationExists):
        share.download("disk.vhd", first)
    share.download("disk.vhd", first, overwrite=True)
    assert first.read_bytes() == second.read_bytes()


def test_rename_delete_mkdir_listdir_stat(share, folder, tmp_path):
    share.mkdir("sub")
    share.mkdir("sub", exist_ok=True)
    with pytest.raises(smb.RemoteExists):
        share.mkdir("sub")
    (folder / "sub" / "a.vhdx").write_bytes(b"a" * 100)
    (folder / "b.vhdx").write_bytes(b"b" * 10)

    assert share.listdir() == ["b.vhdx", "sub"]
    assert share.listdir("sub") == ["a.vhdx"]
    assert share.stat("sub/a.vhdx").size == 100 and share.stat("sub").is_dir
    assert share.exists("sub\\a.vhdx") and not share.exists("nope.vhdx")

    with pytest.raises(smb.RemoteExists):
        share.rename("sub/a.vhdx", "b.vhdx")
    share.rename("sub/a.vhdx", "b.vhdx", overwrite=True)
    assert (folder / "b.vhdx").read_bytes() == b"a" * 100

    share.delete("b.vhdx")
    share.delete("sub")
    assert share.listdir() == []
    with pytest.raises(smb.RemoteNotFound) as caught:
        share.delete("b.vhdx")
    assert caught.value.code == "smb_not_found"


def test_open_read_seeks_and_reads(share, folder):
    data = os.urandom(3 * MiB)
    (folder / "disk.vhd").write_bytes(data)
    with share.open_read("disk.vhd") as remote:
        assert remote.size == len(data)
        remote.seek(-512, os.SEEK_END)
        assert remote.read() == data[-512:]
        remote.seek(1000)
        assert remote.read(10) == data[1000:1010]
        remote.seek(0)
        assert b"".join(iter(lambda: remote.read(64 * MiB), b"")) == data     # big reads come back in chunks


@pytest.mark.parametrize("share_name, encrypt", [("sealed", False), ("share", True)])
def test_encryption_when_the_share_or_the_caller_requires_it(samba, tmp_path, caplog, share_name, encrypt):
    caplog.set_level(logging.INFO, logger="ce.smb")
    src = tmp_path / "disk.img"
    src.write_bytes(os.urandom(3 * MiB))
    with SmbShare(samba.unc(share_name), GOOD, port=samba.port, encrypt=encrypt) as sealed:
        sealed.upload(src, "sealed.img", overwrite=True)
        sealed.download("sealed.img", tmp_path / "back.img")
        sealed.delete("sealed.img")
    assert sha256(tmp_path / "back.img") == sha256(src)
    assert "encrypted" in caplog.text


# ---------------------------------------------------------------- path safety

PATH_TRICKS = [
    "..", "../escape.vhdx", "sub/../../escape.vhdx", "..\\escape.vhdx", "sub\\..\\..\\escape.vhdx",
    "/etc/passwd", "\\Windows\\escape.vhdx", "\\\\evil\\share\\escape.vhdx", "//evil/share/escape.vhdx",
    "C:\\escape.vhdx", "c:escape.vhdx", "nul\0byte.vhdx", "new\nline.vhdx", "tab\there.vhdx",
    "disk.vhdx:hidden", "disk.vhdx::$DATA", "CON", "nul.txt", "COM1", "lpt9.vhdx", "AUX .vhdx",
    "", ".", "a//b.vhdx", "wild*.vhdx", "what?.vhdx", "pipe|.vhdx", "trailing.", "trailing ",
]


@pytest.mark.parametrize("trick", PATH_TRICKS, ids=repr)
def test_path_tricks_refused(samba, share, folder, tmp_path, trick):
    src = tmp_path / "payload"
    src.write_bytes(b"payload")
    calls = [
        lambda: share.upload(src, trick), lambda: share.download(trick, tmp_path / "out"), lambda: share.stat(trick),
        lambda: share.exists(trick), lambda: share.listdir(trick), lambda: share.open_read(trick),
        lambda: share.delete(trick), lambda: share.mkdir(trick), lambda: share.rename(trick, "ok.vhdx"),
        lambda: share.rename("ok.vhdx", trick),
    ]
    for call in calls:
        with pytest.raises(smb.SmbPathRefused) as caught:
            call()
        assert caught.value.code == "smb_path_refused" and "refused" in caught.value.message
    assert os.listdir(folder) == [] and sorted(os.listdir(samba.share_dir("share").parent)) == ["sealed", "share",
                                                                                                "tiny"]


# ---------------------------------------------------------------- failures

def test_wrong_password(samba):
    with pytest.raises(smb.SmbAuthFailed) as caught:
        SmbShare(samba.unc("share"), Credentials(USER, "Wrong-Pass-7q2"), port=samba.port).connect()
    assert caught.value.code == "smb_auth_failed"
    assert "Wrong-Pass-7q2" not in caught.value.message and USER not in caught.value.message


def test_unknown_user(samba):
    with pytest.raises(smb.SmbAuthFailed):
        SmbShare(samba.unc("share"), Credentials("nobody-here", PASSWORD), port=samba.port).connect()


def test_missing_share(samba):
    with pytest.raises(smb.ShareNotFound) as caught:
        SmbShare(samba.unc("no-such-share"), GOOD, port=samba.port).connect()
    assert caught.value.code == "smb_share_not_found" and "no-such-share" in caught.value.message


def test_missing_folder(samba):
    with pytest.raises(smb.RemoteNotFound) as caught:
        SmbShare(samba.unc("share", "no\\such\\folder"), GOOD, port=samba.port).connect()
    assert "no\\such\\folder" in caught.value.message


def test_closed_port_fails_fast():
    """Fast, and worded like any other unreachable server: no cause (tests/faults/test_faults_limits.py)."""
    start = time.monotonic()
    port = free_port()
    with pytest.raises(smb.SmbUnreachable) as caught:
        SmbShare(r"\\127.0.0.1\share", GOOD, port=port, timeout=2).connect()
    assert caught.value.code == "smb_unreachable"
    assert caught.value.message.startswith(f"could not reach an SMB server at 127.0.0.1 (port {port});")
    assert "refused" not in caught.value.message
    assert time.monotonic() - start < 5


def test_not_connected_is_a_clear_error(samba):
    with pytest.raises(smb.SmbError, match="not connected"):
        SmbShare(samba.unc("share"), GOOD, port=samba.port).stat("x")


# ---------------------------------------------------------------- space

def test_free_space_matches_the_server_filesystem(share, folder):
    free, total = share.free_space()
    fs = os.statvfs(folder)
    assert 0 < free <= total
    assert abs(total - fs.f_blocks * fs.f_frsize) <= 0.01 * total
    assert abs(free - fs.f_bavail * fs.f_frsize) <= 0.01 * total      # Samba reports f_bavail


def test_upload_refused_when_the_share_reports_too_little_space(samba, tmp_path):
    src = tmp_path / "disk.img"
    write_extents(src, 64 * MiB, [(0, 12 * MiB)])          # 12 MiB of data > 10 MiB free
    with SmbShare(samba.unc("tiny"), GOOD, port=samba.port) as tiny:
        assert tiny.free_space() == (TINY_FREE, TINY_TOTAL)
        with pytest.raises(smb.ShareFull) as caught:
            tiny.upload(src, "disk.img")
    assert caught.value.code == "smb_share_full" and "10 MiB free" in caught.value.message
    assert os.listdir(samba.share_dir("tiny")) == []


def test_a_stale_partial_file_counts_as_free_space(samba, tmp_path):
    """A killed upload's NAME.partial is truncated and reused by the next upload of NAME: the space check counts it
    as free (the tiny share reports 10 MiB free whatever is on it; the stale file holds 4 MiB)."""
    src = tmp_path / "disk.img"
    write_extents(src, 64 * MiB, [(0, 12 * MiB)])          # 12 MiB of data > 10 MiB free, < 10 + 4
    stale = samba.share_dir("tiny") / "disk.img.partial"
    stale.write_bytes(os.urandom(4 * MiB))
    try:
        with SmbShare(samba.unc("tiny"), GOOD, port=samba.port) as tiny:
            assert tiny.stale_partial("disk.img") >= 4 * MiB and tiny.stale_partial("other.img") == 0
            tiny.upload(src, "disk.img")
            assert sha256(samba.share_dir("tiny") / "disk.img") == sha256(src) and not stale.exists()
    finally:
        for leftover in samba.share_dir("tiny").iterdir():
            leftover.unlink()


def test_sparse_upload_fits_where_its_size_would_not(samba, tmp_path):
    src = tmp_path / "disk.img"
    write_extents(src, 64 * MiB, [(0, 1 * MiB)])           # 64 MiB file, 1 MiB of data, 10 MiB free
    with SmbShare(samba.unc("tiny"), GOOD, port=samba.port) as tiny:
        tiny.upload(src, "disk.img")
        tiny.delete("disk.img")


def test_share_running_full_mid_upload(full_samba, tmp_path):
    src = tmp_path / "disk.img"
    src.write_bytes(os.urandom(16 * MiB))
    with SmbShare(full_samba.unc("share"), GOOD, port=full_samba.port) as full:
        with pytest.raises(smb.ShareFull) as caught:
            full.upload(src, "disk.vhdx")
        assert full.listdir() == []
    assert caught.value.code == "smb_share_full"
    assert os.listdir(full_samba.share_dir("share")) == []


# ---------------------------------------------------------------- secrets

def test_no_credentials_in_logs_or_messages(samba, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "Leak-Canary-Pass-5x9"
    messages = []
    for creds, share_name in ((Credentials(USER, secret), "share"), (GOOD, "no-such-share"), (GOOD, "share")):
        try:
            with SmbShare(samba.unc(share_name), creds, port=samba.port) as connected:
                src = tmp_path / "disk.img"
                src.write_bytes(os.urandom(MiB))
                connected.upload(src, "secrets-test.img", overwrite=True)
                with pytest.raises(smb.SmbError) as caught:
                    connected.stat("missing.img")
                messages.append(caught.value.message)
                connected.delete("secrets-test.img")
        except smb.SmbError as exc:
            messages.append(exc.message)
    assert len(messages) == 3 and caplog.records
    for text in [caplog.text, *messages]:
        assert secret not in text and PASSWORD not in text and USER not in text
