"""SMB2 WRITE requests framed, signed and sent from one reusable buffer: the upload path of ``ce.smb``, and the
credit arithmetic every request of the package follows.

smbprotocol packs every message into fresh bytes objects and copies a write's payload five or six times (message,
header, padding, signature splice, TCP frame, partial sends); at 8 MiB per write those copies and the page faults of
the fresh allocations cost more client CPU than the transfer itself. ``FrameWriter`` reads the payload from the
local file straight into its place in a preallocated frame, signs the frame in place (OpenSSL, no copy) and hands
it to the socket as a memoryview. Everything else stays smbprotocol's: negotiation, session, credits and the
receiving thread that matches responses to requests and verifies their signatures. A request is registered in the
connection's ``outstanding_requests`` before it is sent, exactly as smbprotocol registers its own.

When the session encrypts, or the installed smbprotocol lacks the internals used here, ``writer_for`` returns a
``ProtocolWriter`` with the same interface that goes through smbprotocol's own ``Open.write``.

Wire formats: [MS-SMB2] 2.1 (4-byte Direct TCP length), 2.2.1.2 (sync header), 2.2.21 (WRITE request), 3.1.4.1
(signing: AES-128-GMAC for 3.1.1 when negotiated, AES-CMAC for 3.x, HMAC-SHA256 for 2.x).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import os
import struct
from typing import Callable

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from smbprotocol import Dialects
from smbprotocol.connection import Connection, Request, SigningAlgorithms
from smbprotocol.exceptions import SMBException
from smbprotocol.header import Commands, SMB2HeaderRequest, Smb2Flags
from smbprotocol.open import Open, SMB2WriteRequest

# Header (2.2.1.2) and WRITE request (2.2.21) up to the payload, little-endian, after the 4-byte TCP length.
WRITE_HEADER = struct.Struct("<4sHHHHHHIIQIIQ16s" "HHIQ16sIIHHI")
TCP_LENGTH = struct.Struct(">I")
FRAME_START = TCP_LENGTH.size                     # the SMB2 message starts after the TCP length
PAYLOAD_START = FRAME_START + WRITE_HEADER.size   # 4 + 112
SIGNATURE_AT = FRAME_START + 48
CREDIT_BYTES = 64 * 1024                          # one SMB2 credit pays for 64 KiB of payload
MAX_TCP_MESSAGE = 0xFFFFFF

SIGNING_NAMES = {SigningAlgorithms.AES_GMAC: "AES-GMAC", SigningAlgorithms.AES_CMAC: "AES-CMAC",
                 SigningAlgorithms.HMAC_SHA256: "HMAC-SHA256"}

Signer = Callable[[memoryview, int], bytes]


def writer_for(handle: Open, chunk: int):
    """The fastest writer the session allows: FrameWriter unless the session or share encrypts."""
    tree = handle.tree_connect
    session, connection = tree.session, handle.connection
    transport = getattr(connection, "transport", None)
    internals = all(hasattr(connection, name) for name in ("sequence_lock", "sequence_window", "outstanding_requests",
                                                           "_check_worker_running")) \
        and hasattr(transport, "_sock") and hasattr(transport, "_sock_lock")
    if session.encrypt_data or tree.encrypt_data or not internals or chunk + PAYLOAD_START > MAX_TCP_MESSAGE:
        return ProtocolWriter(handle, chunk)
    return FrameWriter(handle, chunk)


class FrameWriter:
    """Sends WRITE requests for one open file: ``read(fd, offset, length)``, then ``send(offset, length)``."""

    def __init__(self, handle: Open, chunk: int, *, sign: Signer | None = None):
        """``sign`` replaces the session's own signer (the tests forge signatures with it)."""
        tree = handle.tree_connect
        self._connection: Connection = handle.connection
        self._session_id = tree.session.session_id
        self._tree_id = tree.tree_connect_id
        self._file_id = handle.file_id
        self._flags = Smb2Flags.SMB2_FLAGS_DFS_OPERATIONS if tree.is_dfs_share else 0
        self._sign = sign or signer(self._connection, tree.session)
        if self._sign is not None:
            self._flags |= Smb2Flags.SMB2_FLAGS_SIGNED
        self._frame = memoryview(bytearray(PAYLOAD_START + chunk))

    def read(self, fd: int, offset: int, length: int) -> int:
        """Read up to ``length`` bytes of the local file into the frame; returns how many were read."""
        return os.preadv(fd, [self._frame[PAYLOAD_START:PAYLOAD_START + length]], offset)

    def read_is_zero(self, length: int) -> bool:
        return self._frame.obj.startswith(_zeros(length), PAYLOAD_START)     # a memcmp; memoryview == is slow

    def load(self, data: bytes) -> None:
        """Put ``data`` in the frame as the next payload (for bytes that are not in the local file)."""
        self._frame[PAYLOAD_START:PAYLOAD_START + len(data)] = data

    def payload(self, length: int) -> memoryview:
        """The payload last read or loaded (valid until the next read or load)."""
        return self._frame[PAYLOAD_START:PAYLOAD_START + length]

    def send(self, offset: int, length: int) -> Request:
        """Send the payload last read (``length`` bytes) as a WRITE at ``offset``; returns the pending request."""
        connection = self._connection
        charge = credit_charge(connection, length)
        message_id = self._take_message_id(charge)
        message = self._frame[FRAME_START:PAYLOAD_START + length]
        TCP_LENGTH.pack_into(self._frame, 0, len(message))
        WRITE_HEADER.pack_into(self._frame, FRAME_START, b"\xfeSMB", 64, charge, 0, 0, Commands.SMB2_WRITE, charge,
                               self._flags, 0, message_id, 0, self._tree_id, self._session_id, bytes(16),
                               49, WRITE_HEADER.size, length, offset, self._file_id, 0, 0, 0, 0, 0)
        if self._sign is not None:
            self._frame[SIGNATURE_AT:SIGNATURE_AT + 16] = self._sign(message, message_id)
        request = self._register(message_id, charge)
        connection._check_worker_running()
        transport = connection.transport
        with transport._sock_lock:
            transport._sock.sendall(self._frame[:PAYLOAD_START + length])
        return request

    def _take_message_id(self, charge: int) -> int:
        connection = self._connection
        with connection.sequence_lock:
            window = connection.sequence_window
            if charge > window["high"] - window["low"]:
                raise SMBException(f"a write needs {charge} credits but only {window['high'] - window['low']} "
                                   "are available")
            message_id = window["low"]
            window["low"] += charge
        return message_id

    def _register(self, message_id: int, charge: int) -> Request:
        """What smbprotocol keeps of a sent request: enough for its receiver to match and deliver the response."""
        header = SMB2HeaderRequest()
        header["command"] = Commands.SMB2_WRITE
        header["credit_charge"] = charge
        header["credit_request"] = charge
        header["message_id"] = message_id
        header["tree_id"] = self._tree_id
        header["session_id"] = self._session_id
        request = Request(header, SMB2WriteRequest, self._connection, session_id=self._session_id)
        self._connection.outstanding_requests[message_id] = request
        return request


class ProtocolWriter:
    """The same interface through smbprotocol's own message building (used for encrypted sessions)."""

    def __init__(self, handle: Open, chunk: int):
        self._handle = handle
        self._buffer = memoryview(bytearray(chunk))

    def read(self, fd: int, offset: int, length: int) -> int:
        return os.preadv(fd, [self._buffer[:length]], offset)

    def read_is_zero(self, length: int) -> bool:
        return self._buffer.obj.startswith(_zeros(length))

    def load(self, data: bytes) -> None:
        self._buffer[:len(data)] = data

    def payload(self, length: int) -> memoryview:
        return self._buffer[:length]

    def send(self, offset: int, length: int) -> Request:
        handle = self._handle
        message, _ = handle.write(self._buffer[:length].tobytes(), offset, send=False)
        tree = handle.tree_connect
        return handle.connection.send(message, tree.session.session_id, tree.tree_connect_id)


def signer(connection: Connection, session) -> Signer | None:
    """signature(message, message_id) as smbprotocol signs requests, or None when the session does not sign."""
    key = session.signing_key
    if not (session.signing_required and key):
        return None
    algorithm = _signing_algorithm(connection)
    if algorithm == SigningAlgorithms.AES_GMAC:
        return functools.partial(_gmac, algorithms.AES(key))
    if algorithm == SigningAlgorithms.AES_CMAC:
        return functools.partial(_cmac, algorithms.AES(key))
    return lambda message, _: hmac.new(key, message, hashlib.sha256).digest()[:16]


def signing_algorithm_name(connection: Connection) -> str:
    return SIGNING_NAMES.get(_signing_algorithm(connection), "unknown")


def _signing_algorithm(connection: Connection) -> int:
    if connection.dialect >= Dialects.SMB_3_1_1 and connection.signing_algorithm_id is not None:
        return connection.signing_algorithm_id
    if connection.dialect >= Dialects.SMB_3_0_0:
        return SigningAlgorithms.AES_CMAC
    return SigningAlgorithms.HMAC_SHA256


def _gmac(aes: algorithms.AES, message: memoryview, message_id: int) -> bytes:
    """AES-GCM's tag over ``message`` as additional data (AESGCM.encrypt wants bytes in cryptography 38: a copy).
    The nonce is the message id and 4 bytes of flags (bit 0: response, bit 1: cancel), all 0 for a request."""
    context = Cipher(aes, modes.GCM(message_id.to_bytes(8, "little") + bytes(4))).encryptor()
    context.authenticate_additional_data(message)
    context.finalize()
    return context.tag


def _cmac(aes: algorithms.AES, message: memoryview, _message_id: int) -> bytes:
    mac = cmac.CMAC(aes)
    try:
        mac.update(message)
    except TypeError:                 # cryptography < 39 takes only bytes
        mac.update(message.tobytes())
    return mac.finalize()


@functools.lru_cache(maxsize=4)
def _zeros(length: int) -> bytes:
    return bytes(length)


def credits(connection: Connection) -> int:
    """The credits the server has granted and no request has spent yet."""
    return connection.sequence_window["high"] - connection.sequence_window["low"]


def credit_charge(connection: Connection, length: int) -> int:
    """The credits a request carrying ``length`` bytes costs (one per 64 KiB once the dialect allows more than one)."""
    return (length - 1) // CREDIT_BYTES + 1 if connection.supports_multi_credit else 1


def has_credits(connection: Connection, length: int) -> bool:
    """smbprotocol raises instead of waiting when a request needs more credits than the server granted so far."""
    return credits(connection) >= credit_charge(connection, length)
