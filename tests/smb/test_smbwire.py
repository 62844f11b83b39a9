"""ce.smb.wire against a real Samba smbd on 127.0.0.1, which verifies the signature of every request it accepts."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

import pytest
from smbprotocol import Dialects
from smbprotocol.connection import Connection
from smbprotocol.exceptions import AccessDenied
from smbprotocol.file_info import FileAttributes
from smbprotocol.open import (CreateDisposition, CreateOptions, FilePipePrinterAccessMask, ImpersonationLevel, Open,
                              ShareAccess, SMB2WriteResponse)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from ce.smb import wire
from tests.support.smbserver import PASSWORD, USER

MiB = 1 << 20
CHUNK = 1 * MiB


@contextmanager
def opened(samba, dialect: int, name: str):
    """A file created on the share through a session that signs every request, negotiated at ``dialect``."""
    connection = Connection(uuid.uuid4(), samba.host, samba.port, require_signing=True)
    connection.connect(dialect=dialect, timeout=10)
    try:
        session = Session(connection, USER, PASSWORD, require_encryption=False)
        session.connect()
        connection.echo(sid=session.session_id, credit_request=64)       # enough credits for a few 1 MiB writes
        tree = TreeConnect(session, samba.unc("share"))
        tree.connect()
        handle = Open(tree, name)
        handle.create(ImpersonationLevel.Impersonation, FilePipePrinterAccessMask.GENERIC_WRITE,
                      FileAttributes.FILE_ATTRIBUTE_NORMAL, ShareAccess.FILE_SHARE_READ,
                      CreateDisposition.FILE_OVERWRITE_IF, CreateOptions.FILE_NON_DIRECTORY_FILE)
        yield handle
        handle.close()
    finally:
        connection.disconnect()


def upload(handle: Open, path, writer) -> None:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        for offset in range(0, size, CHUNK):
            length = writer.read(f.fileno(), offset, CHUNK)
            response = handle.connection.receive(writer.send(offset, length))
            written = SMB2WriteResponse()
            written.unpack(response["data"].get_value())
            assert written["count"].get_value() == length


@pytest.mark.parametrize("dialect, algorithm", [(Dialects.SMB_2_1_0, "HMAC-SHA256"),
                                                (Dialects.SMB_3_0_2, "AES-CMAC"),
                                                (Dialects.SMB_3_1_1, "AES-GMAC")])
def test_signed_writes_arrive_intact(samba, tmp_path, dialect, algorithm):
    src = tmp_path / "disk.img"
    src.write_bytes(os.urandom(3 * MiB + 4321))                  # the last write is short
    with opened(samba, dialect, f"wire-{algorithm}.img") as handle:
        assert wire.signing_algorithm_name(handle.connection) == algorithm
        writer = wire.writer_for(handle, CHUNK)
        assert isinstance(writer, wire.FrameWriter)
        upload(handle, src, writer)
    assert (samba.share_dir("share") / f"wire-{algorithm}.img").read_bytes() == src.read_bytes()


def test_a_wrong_signature_is_refused_by_the_server(samba, tmp_path):
    """Proves the test above can fail: Samba checks the signatures FrameWriter computes."""
    src = tmp_path / "disk.img"
    src.write_bytes(os.urandom(CHUNK))
    with pytest.raises(AccessDenied):                               # Samba answers a bad signature so
        with opened(samba, Dialects.SMB_3_1_1, "forged.img") as handle:
            writer = wire.FrameWriter(handle, CHUNK, sign=lambda message, message_id: bytes(16))
            upload(handle, src, writer)
    assert (samba.share_dir("share") / "forged.img").stat().st_size == 0


def test_read_is_zero_sees_one_nonzero_byte(tmp_path):
    src = tmp_path / "zeros.img"
    src.write_bytes(bytes(CHUNK) + bytes(CHUNK - 1) + b"\x01")
    writer = wire.ProtocolWriter(None, CHUNK)
    with open(src, "rb") as f:
        assert writer.read(f.fileno(), 0, CHUNK) == CHUNK and writer.read_is_zero(CHUNK)
        assert writer.read(f.fileno(), CHUNK, CHUNK) == CHUNK and not writer.read_is_zero(CHUNK)
