"""The fixed costs of ce.smb over a WAN, where every request waited for is a round trip: qemu-img's check of a
container on a share reads it through ``ReadAhead`` (whole windows, byte-exact), and an upload's open / check /
close requests go out compounded. Counted against a real smbd; the times are bench/wan.py's."""
from __future__ import annotations

import os
import random

import pytest
from smbprotocol.connection import Connection
from smbprotocol.header import Commands

from ce import disks, nbdexport
from ce.errors import RemoteExists, TransferFailed
from ce.smb import Credentials, SmbShare
from ce.smb.reader import ReadAhead
from ce.smb.resume import ResumeKey
from ce.step import StepContext, execute, step_types
from tests.support.smbserver import PASSWORD, USER

MiB = 1 << 20
KiB = 1 << 10
WINDOW = 64 * KiB


@pytest.fixture
def share(samba, folder):
    with SmbShare(samba.unc("share", folder.name), Credentials(USER, PASSWORD), port=samba.port) as connected:
        yield connected


COMMANDS = {value: name[5:] for name, value in vars(Commands).items() if name.startswith("SMB2_")}


@pytest.fixture
def messages(monkeypatch):
    """Every message smbprotocol sends, a compound as one ("CREATE+CLOSE"); ce's own WRITEs (ce.smb.wire) bypass
    it. Each is answered before the next that depends on it is sent, so this is an upper bound of round trips."""
    sent = []
    send = Connection._send

    def counting(self, requests, *args, **kwargs):
        sent.append("+".join(COMMANDS[request.COMMAND] for request in requests))
        return send(self, requests, *args, **kwargs)
    monkeypatch.setattr(Connection, "_send", counting)
    return sent


class CountingReader:
    """A RemoteReader whose reads are counted: each read_exactly is one pipeline of SMB READs, one round trip."""

    def __init__(self, reader):
        self._reader, self.path, self.size, self.reads = reader, reader.path, reader.size, 0

    def read_exactly(self, offset, into):
        self.reads += 1
        self._reader.read_exactly(offset, into)

    def read_at(self, offset, length):
        self.reads += 1
        return self._reader.read_at(offset, length)


def test_read_ahead_returns_the_files_bytes_at_every_edge(share, folder):
    data = os.urandom(5 * WINDOW + 1234)             # the last window is short
    (folder / "file.bin").write_bytes(data)
    size, rng = len(data), random.Random(18)
    edges = [(0, 1), (WINDOW - 1, 2), (WINDOW - 10, 10), (WINDOW, WINDOW - 1), (2 * WINDOW - 100, 300),
             (size - 1, 1), (size - 1234, 1234), (size - 1300, 1300), (5 * WINDOW - 1, 1235), (size, 0)]
    reads = edges + [(offset, rng.randrange(1, WINDOW)) for offset in
                     (rng.randrange(0, size - WINDOW) for _ in range(200))]
    with share.open_read("file.bin") as remote:
        cached = ReadAhead(CountingReader(remote), window=WINDOW, keep=2)
        for offset, length in reads:
            assert cached.read_at(offset, length) == data[offset:offset + length], (offset, length)
            assert len(cached._windows) <= 2
        assert cached.read_at(size - 10, 100) == data[-10:]                  # short only at the end of the file
        assert cached.read_at(WINDOW, 3 * WINDOW) == data[WINDOW:4 * WINDOW]  # a window or more: read as it is
        with pytest.raises(TransferFailed):
            cached.read_exactly(size - 10, memoryview(bytearray(11)))


def test_read_ahead_reads_each_window_once_while_it_is_kept(share, folder):
    data = os.urandom(3 * WINDOW)
    (folder / "file.bin").write_bytes(data)
    with share.open_read("file.bin") as remote:
        counted = CountingReader(remote)
        cached = ReadAhead(counted, window=WINDOW, keep=2)
        for offset in range(0, len(data) - 512, 512):
            assert cached.read_at(offset, 1024) == data[offset:offset + 1024]
        assert counted.reads == 3          # each window once, for 383 reads
        assert cached.read_at(0, 10) == data[:10] and counted.reads == 4     # window 0 was dropped: two are kept
        assert cached.read_at(2 * WINDOW - 5, 10) == data[2 * WINDOW - 5:2 * WINDOW + 5]
        assert counted.reads == 5          # window 1 again (dropped for window 0); window 2 was still kept
        assert cached.read_at(2 * WINDOW - 5, 10) == data[2 * WINDOW - 5:2 * WINDOW + 5] and counted.reads == 5


def test_qemu_imgs_check_of_a_vhdx_on_the_share_costs_one_read(share, folder, tmp_path):
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.write(os.urandom(MiB))
        f.seek(40 * MiB)
        f.write(os.urandom(MiB))
    disks.convert(raw, folder / "disk.vhdx", "vhdx", src_fmt="raw")
    with share.open_read("disk.vhdx") as remote:
        counted = CountingReader(remote)
        nbdexport.verify(tmp_path, "vhdx", "dynamic", 41 * MiB, "disk.vhdx", counted)
    assert counted.reads == 1               # was 26: one SMB round trip per piece qemu-img and ce's probes read


def test_an_upload_makes_eleven_requests_besides_its_writes(samba, folder, tmp_path, messages):
    local = tmp_path / "file.bin"
    local.write_bytes(os.urandom(3 * MiB))
    with SmbShare(samba.unc("share", folder.name), Credentials(USER, PASSWORD), port=samba.port) as share:
        share.upload(local, "file.bin")
    assert (folder / "file.bin").read_bytes() == local.read_bytes()
    assert messages == [
        "NEGOTIATE", "SESSION_SETUP", "SESSION_SETUP", "TREE_CONNECT", "ECHO", "CREATE+CLOSE",   # the folder
        "CREATE+CLOSE", "CREATE+QUERY_INFO+CLOSE", "CREATE+CLOSE",       # the name, free space, a stale partial
        "CREATE+IOCTL",                                                  # the partial file, sparse
        "SET_INFO+QUERY_INFO",                                           # its end of file, read back
        "SET_INFO+CLOSE",                                                # the rename; the close gives the stat
        "TREE_DISCONNECT+LOGOFF"]                                        # 13 (was 21: 19 and the folder's 2)


def test_a_resumable_upload_adds_its_record_to_the_same_round_trips(share, folder, tmp_path, messages):
    local = tmp_path / "file.bin"
    local.write_bytes(os.urandom(MiB))
    key = ResumeKey(job="j", source_size=MiB, source_format="raw", first="a", last="b", container="raw")
    messages.clear()
    share.upload(local, "file.bin", resume=key)
    assert messages == ["CREATE+CLOSE", "CREATE+QUERY_INFO+CLOSE", "CREATE+CLOSE", "CREATE+READ+CLOSE",
                        "CREATE+IOCTL", "CREATE+WRITE+SET_INFO+CLOSE",   # the record, sent before the open's answer
                        "SET_INFO+QUERY_INFO", "SET_INFO+CLOSE", "CREATE+CLOSE"]       # ... deleted with the rename
    assert os.listdir(folder) == ["file.bin"]


def test_a_name_taken_during_the_upload_fails_the_rename_and_leaves_no_partial(share, folder, tmp_path):
    local = tmp_path / "file.bin"
    local.write_bytes(os.urandom(2 * MiB))
    key = ResumeKey(job="j", source_size=2 * MiB, source_format="raw", first="a", last="b", container="raw")

    def someone_else_writes_it(reader):
        (folder / "file.bin").write_bytes(b"theirs")

    with pytest.raises(RemoteExists):
        share.upload(local, "file.bin", resume=key, verify=someone_else_writes_it)
    assert os.listdir(folder) == ["file.bin"]           # neither the partial file nor its record
    assert (folder / "file.bin").read_bytes() == b"theirs"
    share.upload(local, "other.bin", overwrite=True)     # the session still works
    assert (folder / "other.bin").read_bytes() == local.read_bytes()


def test_an_export_step_signs_in_once_for_its_plan_and_its_write(samba, folder, tmp_path, monkeypatch, messages):
    monkeypatch.setenv("CE_SCRATCH", str(tmp_path))
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(3 * MiB) + bytes(2 * MiB) + os.urandom(MiB))
    export = step_types()["export"]
    params = export.parse({"disk": str(disk), "SmbDiskName": "one",
                           "outputStorageLocation": samba.location(folder=folder.name)})
    execute(export, params, StepContext())
    assert os.listdir(folder) == ["one.vhdx"]
    assert disks.compare(disk, folder / "one.vhdx", fmt_a="raw", fmt_b="vhdx")
    survey = ["CREATE+CLOSE", "CREATE+QUERY_INFO+CLOSE", "CREATE+CLOSE", "CREATE+READ+CLOSE"]   # one round trip
    assert messages == ["NEGOTIATE", "SESSION_SETUP", "SESSION_SETUP", "TREE_CONNECT", "ECHO", "CREATE+CLOSE",
                        *survey,                                          # the plan
                        *survey, "CREATE+IOCTL", "CREATE+WRITE+SET_INFO+CLOSE", "SET_INFO+QUERY_INFO",
                        "READ", "READ", "READ", "READ",                   # qemu-img's check: one 4 MiB window
                        "SET_INFO+CLOSE", "CREATE+CLOSE", "TREE_DISCONNECT+LOGOFF"]
    # 12 round trips; before: 36 messages, each waited for, and 26 READs one at a time


def test_a_publish_step_signs_in_once(samba, folder, tmp_path, monkeypatch, messages):
    monkeypatch.setenv("CE_SCRATCH", str(tmp_path))
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(MiB) + bytes(MiB))
    publish = step_types()["publish"]
    params = publish.parse({"disk": str(disk), "vDiskName": "golden",
                           "outputStorageLocation": samba.location(folder=folder.name)})
    execute(publish, params, StepContext())
    assert os.listdir(folder) == ["golden.vhdx"]
    assert messages.count("NEGOTIATE") == 1 and messages[-1] == "TREE_DISCONNECT+LOGOFF"    # was 3 connections


def test_a_streamed_convert_to_a_share_signs_in_once(samba, folder, tmp_path, monkeypatch, messages):
    """A local raw disk converted to a VHDX on a share: the plan's survey (name, space, partial, record in one
    round trip) and the stream go over one connection, as an export's do."""
    monkeypatch.setenv("CE_SCRATCH", str(tmp_path))
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(2 * MiB) + bytes(MiB))
    convert = step_types()["convert"]
    params = convert.parse({"source": str(disk), "outputFormat": "vhdx", "outputImageFilename": "out.vhdx",
                            "outputStorageLocation": samba.location(folder=folder.name)})
    result = execute(convert, params, StepContext())
    assert result.facts["output"]["method"] == "stream" and os.listdir(folder) == ["out.vhdx"]
    assert disks.compare(disk, folder / "out.vhdx", fmt_a="raw", fmt_b="vhdx")
    survey = ["CREATE+CLOSE", "CREATE+QUERY_INFO+CLOSE", "CREATE+CLOSE", "CREATE+READ+CLOSE"]   # one round trip
    assert messages == ["NEGOTIATE", "SESSION_SETUP", "SESSION_SETUP", "TREE_CONNECT", "ECHO", "CREATE+CLOSE",
                        *survey,                                          # the plan
                        *survey, "CREATE+IOCTL", "CREATE+WRITE+SET_INFO+CLOSE", "SET_INFO+QUERY_INFO",
                        "READ", "READ", "READ", "READ", "SET_INFO+CLOSE", "CREATE+CLOSE", "TREE_DISCONNECT+LOGOFF"]
    # the export's list; before: two connections, and the plan's three lookups one after the other
