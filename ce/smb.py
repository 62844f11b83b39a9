"""SMB2/3 file shares through smbprotocol: the byte path for exports, publishes and reverse images.

The CE cannot rely on the kernel (no CIFS mount in the sandbox) nor on qemu-img (no smb:// driver), so every byte to
or from a share goes through this module. Each ``SmbShare`` owns its own connection, session and tree: nothing is
registered process-wide, so two jobs never share credentials.

Rules this module enforces:

* Every remote path is relative to the location's folder; ``..``, absolute paths, drive letters, UNC prefixes,
  control characters, alternate data streams, wildcards and reserved device names are refused (``SmbPathRefused``).
* Uploads go to ``NAME.partial`` and are renamed to ``NAME`` only after the size on the share was verified; a
  failure or a cancel deletes the partial file. The share's free space is checked before the first byte is sent.
* Uploads skip the holes of sparse local files (SEEK_DATA / SEEK_HOLE) and all-zero chunks, and mark the remote
  file sparse, so a half-empty disk does not send (or store) its empty half.
* Neither the user name nor the password ever appears in an error message or a log line. smbprotocol logs the
  user name at INFO and whole messages at DEBUG, so its loggers are capped at WARNING.
"""
from __future__ import annotations

import collections
import functools
import io
import logging
import os
import re
import urllib.parse
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterator

from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBAuthenticationError, SMBException, SMBResponseException
from smbprotocol.file_info import (FileAttributes, FileDispositionInformation, FileEndOfFileInformation,
                                   FileFsFullSizeInformation, FileNamesInformation, FileRenameInformation,
                                   FileStandardInformation)
from smbprotocol.header import NtStatus
from smbprotocol.ioctl import CtlCode, IOCTLFlags, SMB2IOCTLRequest, SMB2IOCTLResponse
from smbprotocol.open import (CreateDisposition, CreateOptions, DirectoryAccessMask, FilePipePrinterAccessMask,
                              ImpersonationLevel, Open, QueryDirectoryFlags, ShareAccess, SMB2QueryInfoRequest,
                              SMB2QueryInfoResponse, SMB2ReadResponse, SMB2SetInfoRequest, SMB2SetInfoResponse,
                              SMB2WriteResponse)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from . import layouts, smbwire
from .layouts import chunks, data_extents
from .disks import DestinationExists
from .errors import CeError

log = logging.getLogger(__name__)
for _noisy in ("smbprotocol", "spnego"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

MiB = 1 << 20
DEFAULT_PORT = 445
CONNECT_TIMEOUT = 10.0
# Downloads go through smbprotocol, which copies each message several times into fresh allocations: measured here
# (256 MiB to Samba 4.17 on 127.0.0.1, SMB 3.1.1 signed, 2 vCPUs, 4 requests in flight) 1 MiB reads ran at
# 520-610 MB/s, 4 MiB at 540-580, 8 MiB at ~310 (page faults dominate). Uploads build their WRITE requests in one
# reusable buffer (ce.smbwire), so they use the largest write the server allows, up to 8 MiB as smbclient does.
READ_CHUNK = 1 * MiB
WRITE_CHUNK = 8 * MiB
IN_FLIGHT = 4
CREDIT_BYTES = 64 * 1024          # one SMB2 credit pays for 64 KiB of payload
PARTIAL_SUFFIX = ".partial"
ZERO_CHUNK = bytes(READ_CHUNK)

Progress = Callable[[int, int], None]

RESERVED_NAMES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$",
                  *(f"{dev}{n}" for dev in ("COM", "LPT") for n in "123456789¹²³")}
FORBIDDEN_CHARS = set('<>"|?*')
HOST_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$")

STATUS_QUOTA_EXCEEDED = 0xC0000044            # NTSTATUS values smbprotocol's NtStatus does not name follow
ACCOUNT_REFUSED = {0xC000006E: "STATUS_ACCOUNT_RESTRICTION", 0xC000006F: "STATUS_INVALID_LOGON_HOURS",
                   0xC0000070: "STATUS_INVALID_WORKSTATION", 0xC0000072: "STATUS_ACCOUNT_DISABLED",
                   0xC0000193: "STATUS_ACCOUNT_EXPIRED", 0xC0000224: "STATUS_PASSWORD_MUST_CHANGE",
                   0xC0000234: "STATUS_ACCOUNT_LOCKED_OUT"}
AUTH_STATUSES = {NtStatus.STATUS_LOGON_FAILURE, NtStatus.STATUS_WRONG_PASSWORD, NtStatus.STATUS_PASSWORD_EXPIRED,
                 *ACCOUNT_REFUSED}
NOT_FOUND_STATUSES = {NtStatus.STATUS_OBJECT_NAME_NOT_FOUND, NtStatus.STATUS_OBJECT_PATH_NOT_FOUND,
                      NtStatus.STATUS_NO_SUCH_FILE}
FULL_STATUSES = {NtStatus.STATUS_DISK_FULL, STATUS_QUOTA_EXCEEDED}
SPARSE_UNSUPPORTED = {NtStatus.STATUS_INVALID_DEVICE_REQUEST, NtStatus.STATUS_NOT_SUPPORTED,
                      NtStatus.STATUS_INVALID_PARAMETER}
STATUS_NAMES = {**{value: name for name, value in vars(NtStatus).items() if name.startswith("STATUS_")},
                **ACCOUNT_REFUSED, STATUS_QUOTA_EXCEEDED: "STATUS_QUOTA_EXCEEDED"}

SHARE_ALL = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
READ_ATTRIBUTES = FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
FILE_READ = FilePipePrinterAccessMask.GENERIC_READ
FILE_WRITE = (FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE
              | FilePipePrinterAccessMask.DELETE)
DELETE = FilePipePrinterAccessMask.DELETE | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
LIST_DIR = DirectoryAccessMask.FILE_LIST_DIRECTORY | DirectoryAccessMask.FILE_READ_ATTRIBUTES


class SmbError(CeError):
    code = "smb_error"


class SmbUnreachable(SmbError):
    code = "smb_unreachable"


class SmbAuthFailed(SmbError):
    code = "smb_auth_failed"


class ShareNotFound(SmbError):
    code = "smb_share_not_found"


class SmbAccessDenied(SmbError):
    code = "smb_access_denied"


class SmbPathRefused(SmbError):
    code = "smb_path_refused"


class RemoteNotFound(SmbError):
    code = "smb_not_found"


class RemoteExists(SmbError):
    code = "smb_exists"


class ShareFull(SmbError):
    code = "smb_share_full"


class TransferFailed(SmbError):
    code = "smb_transfer_failed"


class TransferCanceled(SmbError):
    code = "canceled"


# ---------------------------------------------------------------- locations, credentials, paths

@dataclass(frozen=True)
class Credentials:
    """A job's SMB account. The password stays out of repr() and str(), so out of logs and error reports."""
    username: str
    password: str = field(repr=False)
    domain: str = ""

    @property
    def principal(self) -> str:
        return f"{self.domain}\\{self.username}" if self.domain else self.username


@dataclass(frozen=True)
class SmbLocation:
    """A folder on a share: ``host``, ``share`` and ``folder`` (backslash-separated, "" for the share root)."""
    host: str
    share: str
    folder: str = ""
    port: int | None = None

    @classmethod
    def parse(cls, location: str) -> "SmbLocation":
        r"""Accepts ``\\host\share\folder``, ``//host/share/folder`` and ``smb://host[:port]/share/folder``."""
        text = location.strip()
        if "@" in text:
            # Do not echo the text: it may be user:password@host.
            raise SmbPathRefused("an SMB location must not carry credentials or '@'; give "
                                 r"\\host\share\folder and pass the user name and password as credentials")
        if text[:6].lower() == "smb://":
            host, port, parts = _split_url(text.rstrip("/"))
        elif text[:2] in ("\\\\", "//"):
            host, *parts = re.split(r"[\\/]", text[2:].rstrip("\\/"))
            port = None
        else:
            raise SmbPathRefused(rf"{location!r} is not an SMB location: use \\host\share\folder, "
                                 "//host/share/folder or smb://host[:port]/share/folder")
        if not HOST_RE.match(host) or not parts:
            raise SmbPathRefused(f"{location!r} needs a host name and a share name, as in \\\\host\\share\\folder")
        share, folder = parts[0], "\\".join(parts[1:])
        _check_component(share, location)
        return cls(host, share, normalize_path(folder) if folder else "", port)

    @property
    def share_unc(self) -> str:
        return f"\\\\{self.host}\\{self.share}"

    def __str__(self) -> str:
        return self.share_unc + (f"\\{self.folder}" if self.folder else "")


def _split_url(text: str) -> tuple[str, int | None, list[str]]:
    url = urllib.parse.urlsplit(text)
    if url.query or url.fragment:
        raise SmbPathRefused(f"{text!r}: an smb:// location has no query or fragment")
    try:
        port = url.port
    except ValueError:
        raise SmbPathRefused(f"{text!r} has an invalid port") from None
    return url.hostname or "", port, urllib.parse.unquote(url.path).split("/")[1:]


def normalize_path(path: str) -> str:
    r"""``path`` relative to a location's folder, '/' or '\' separated, as a backslash path; refuses escapes."""
    if not isinstance(path, str) or not path:
        raise SmbPathRefused("refused an empty remote path: name a file or folder inside the location's folder")
    if path[:2] in ("\\\\", "//", "\\/", "/\\"):
        raise SmbPathRefused(f"refused remote path {path!r}: UNC paths are not allowed, give a path relative to "
                             "the location's folder")
    if path[0] in "\\/":
        raise SmbPathRefused(f"refused remote path {path!r}: absolute paths are not allowed, give a path relative "
                             "to the location's folder")
    if re.match(r"^[A-Za-z]:", path):
        raise SmbPathRefused(f"refused remote path {path!r}: drive letters are not allowed, give a path relative "
                             "to the location's folder")
    parts = re.split(r"[\\/]", path)
    for part in parts:
        _check_component(part, path)
    return "\\".join(parts)


def _check_component(part: str, path: str) -> None:
    problem = _component_problem(part)
    if problem:
        raise SmbPathRefused(f"refused remote path {path!r}: {problem}")


def _component_problem(part: str) -> str | None:
    if part == "..":
        return "'..' is not allowed: paths must stay inside the location's folder"
    if part in ("", "."):
        return "empty and '.' components are not allowed"
    if any(ord(c) < 32 or ord(c) == 127 for c in part):
        return "control characters (NUL, newline, ...) are not allowed"
    if ":" in part:
        return "':' is not allowed (drive letters and alternate data streams)"
    if FORBIDDEN_CHARS & set(part):
        return "the characters < > \" | ? * are not allowed in Windows file names"
    if part[-1] in ". ":
        return "a name may not end with a dot or a space (Windows strips them)"
    if part.split(".")[0].rstrip(" ").upper() in RESERVED_NAMES:
        return f"{part!r} is a reserved Windows device name"
    if len(part) > 255:
        return "a name may have at most 255 characters"
    return None


# ---------------------------------------------------------------- the share

@dataclass
class RemoteStat:
    path: str                # relative to the location's folder
    size: int
    allocated: int           # bytes the server reports as allocated
    is_dir: bool
    modified: datetime
    sent: int | None = None  # after an upload: bytes that went over the wire (holes and zero chunks are skipped)


class SmbShare:
    """One authenticated connection to one share folder; use as a context manager."""

    def __init__(self, location: SmbLocation | str, credentials: Credentials, *, port: int | None = None,
                 encrypt: bool = False, timeout: float = CONNECT_TIMEOUT):
        self.location = SmbLocation.parse(location) if isinstance(location, str) else location
        self.port = port or self.location.port or DEFAULT_PORT
        self._credentials = credentials
        self._encrypt = encrypt
        self._timeout = timeout
        self._connection: Connection | None = None
        self._tree: TreeConnect | None = None
        self._chunk = READ_CHUNK
        self._write_chunk = WRITE_CHUNK

    def __repr__(self) -> str:
        return f"SmbShare({str(self.location)!r}, port={self.port})"

    @property
    def where(self) -> str:
        port = "" if self.port == DEFAULT_PORT else f" (port {self.port})"
        return f"{self.location}{port}"

    # ------------------------------------------------ connect / close

    def __enter__(self) -> "SmbShare":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> "SmbShare":
        self._connection = self._negotiate()
        try:
            session = self._authenticate(self._connection)
            self._tree = self._connect_tree(session)
            if self.location.folder:
                self._require_folder()
            self._chunk, self._write_chunk = self._reserve_credits(session)
        except BaseException:
            self.close()
            raise
        log.info("connected to %s (%s)", self.where, self.protection)
        return self

    @property
    def protection(self) -> str:
        """What protects the bytes on the wire, e.g. "SMB 3.1.1, signed (AES-GMAC)"."""
        if self._tree is None:
            return "not connected"
        connection, session = self._connection, self._tree.session
        dialect = connection.dialect
        version = f"SMB {dialect >> 8}.{(dialect >> 4) & 0xF}.{dialect & 0xF}"
        if session.encrypt_data or self._tree.encrypt_data:
            return f"{version}, encrypted"
        if smbwire.signer(connection, session) is None:
            return f"{version}, not signed"
        return f"{version}, signed ({smbwire.signing_algorithm_name(connection)})"

    def close(self) -> None:
        connection, self._connection, self._tree = self._connection, None, None
        if connection is None:
            return
        try:
            connection.disconnect(close=True, timeout=self._timeout)
        except (SMBException, OSError, ValueError) as exc:
            log.debug("ignoring an error while disconnecting from %s: %s", self.where, type(exc).__name__)

    def _negotiate(self) -> Connection:
        # require_signing=False is refused by Samba 4.17 at tree connect (feasibility.md): always sign.
        connection = Connection(uuid.uuid4(), self.location.host, self.port, require_signing=True)
        try:
            connection.connect(timeout=self._timeout)
        except (ValueError, OSError, SMBException) as exc:
            _disconnect_quietly(connection)
            raise SmbUnreachable(f"cannot reach an SMB server at {self.location.host}:{self.port} "
                                 f"({_reason(exc)}); check the host name, the port and the firewall") from None
        return connection

    def _authenticate(self, connection: Connection) -> Session:
        session = Session(connection, self._credentials.principal, self._credentials.password,
                          require_encryption=self._encrypt)
        try:
            session.connect()
        except SMBAuthenticationError:
            raise self._auth_failed("authentication failed") from None
        except SMBResponseException as exc:
            if exc.status in AUTH_STATUSES:
                raise self._auth_failed(_status_name(exc.status)) from None
            raise self._error(exc, "signing in") from None
        except SMBException as exc:
            raise SmbError(f"cannot sign in to {self.where}: {_reason(exc)}") from None
        return session

    def _auth_failed(self, reason: str) -> SmbAuthFailed:
        return SmbAuthFailed(f"the SMB server {self.location.host} refused the sign-in for {self.location.share_unc} "
                             f"({reason}); check the job's SMB user name, password and domain")

    def _connect_tree(self, session: Session) -> TreeConnect:
        tree = TreeConnect(session, self.location.share_unc)
        try:
            tree.connect()
        except SMBResponseException as exc:
            if exc.status == NtStatus.STATUS_BAD_NETWORK_NAME:
                raise ShareNotFound(f"the server {self.location.host} has no share named "
                                    f"{self.location.share!r}; check the location") from None
            raise self._error(exc, f"connecting to {self.location.share_unc}") from None
        return tree

    def _reserve_credits(self, session: Session) -> tuple[int, int]:
        """Ask for enough credits to keep IN_FLIGHT writes on the wire; returns the (read, write) chunk sizes.

        A session starts with a few credits and smbprotocol fails a request it has no credits for rather than
        waiting, so an echo asks for more up front. Samba grants what is asked; a server that grants less gets
        smaller chunks."""
        connection = self._connection
        read_chunk = min(READ_CHUNK, connection.max_read_size)
        write_chunk = min(WRITE_CHUNK, connection.max_write_size)
        wanted = (IN_FLIGHT + 1) * _credit_charge(connection, write_chunk)
        if _credits(connection) < wanted:
            with self._failures("asking the server for I/O credits", ""):
                connection.echo(sid=session.session_id, timeout=self._timeout,
                                credit_request=wanted - _credits(connection) + 1)
        affordable = max(1, _credits(connection) - 1) * CREDIT_BYTES
        return min(read_chunk, affordable), min(write_chunk, affordable)

    def _require_folder(self) -> None:
        try:
            is_dir = self._stat(self.location.folder, "").is_dir
        except RemoteNotFound:
            is_dir = None
        if not is_dir:
            problem = "does not exist" if is_dir is None else "is a file, not a folder"
            raise RemoteNotFound(f"the folder {self.location} {problem}; create it or fix the location")

    # ------------------------------------------------ queries

    def stat(self, path: str) -> RemoteStat:
        return self._stat(self._full(path), path)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except RemoteNotFound:
            return False
        return True

    def listdir(self, path: str | None = None) -> list[str]:
        """Names in the location's folder (or in ``path`` below it), sorted, without '.' and '..'."""
        full = self.location.folder if path is None else self._full(path)
        with self._failures("listing the folder", path or ""), \
                self._opened(full, LIST_DIR, options=CreateOptions.FILE_DIRECTORY_FILE) as handle:
            names = [name for name in self._directory_names(handle) if name not in (".", "..")]
        return sorted(names)

    def free_space(self) -> tuple[int, int]:
        """(bytes free for this user, total bytes) of the share, from FileFsFullSizeInformation."""
        with self._failures("reading the free space", ""), \
                self._opened(self.location.folder, READ_ATTRIBUTES) as handle:
            info = self._query_info(handle, FileFsFullSizeInformation)
        unit = info["sectors_per_unit"].get_value() * info["bytes_per_sector"].get_value()
        return info["caller_available_units"].get_value() * unit, info["total_allocation_units"].get_value() * unit

    # ------------------------------------------------ changes

    def mkdir(self, path: str, *, exist_ok: bool = False) -> None:
        full = self._full(path)
        disposition = CreateDisposition.FILE_OPEN_IF if exist_ok else CreateDisposition.FILE_CREATE
        with self._failures(f"creating the folder {path!r}", path), \
                self._opened(full, READ_ATTRIBUTES, disposition=disposition,
                             options=CreateOptions.FILE_DIRECTORY_FILE):
            pass

    def delete(self, path: str) -> None:
        """Delete a file or an empty folder."""
        with self._failures(f"deleting {path!r}", path), \
                self._opened(self._full(path), DELETE, options=CreateOptions.FILE_DELETE_ON_CLOSE):
            pass

    def rename(self, src: str, dst: str, *, overwrite: bool = False) -> None:
        full_dst = self._full(dst)
        with self._failures(f"renaming {src!r} to {dst!r}", dst), self._opened(self._full(src), DELETE) as handle:
            self._rename_handle(handle, full_dst, overwrite)

    # ------------------------------------------------ transfers

    def open_read(self, path: str) -> "RemoteReader":
        with self._failures(f"opening {path!r}", path):
            handle = self._open(self._full(path), FILE_READ, options=CreateOptions.FILE_NON_DIRECTORY_FILE)
        return RemoteReader(handle, path, self._chunk, self._failures, self._send)

    def upload(self, local_path, remote_name: str, progress: Progress | None = None, cancel=None,
               overwrite: bool = False, layout=None, tap=None, verify=None) -> RemoteStat:
        """Copy a local file (or block device) to ``remote_name``; returns the stored file's stat.

        ``layout`` (ce.layouts) places the local bytes inside a VHD / VHDX container and supplies the
        container's metadata, so a raw disk is streamed into its final format; by default the file is copied as
        it is. ``progress(bytes_done, total)`` follows the position in the local file (holes count as done);
        ``cancel`` is a threading.Event or a callable polled between chunks. ``tap(offset, data)`` sees every chunk
        read from the local file, in order, zero ones included (holes are not read: a tap treats gaps as zeros).
        ``verify(reader)`` gets a RemoteReader on the complete ``NAME.partial`` and raises to refuse it (the file is
        then removed) before it is renamed to ``NAME``."""
        final = self._full(remote_name)
        with self._failures(f"uploading {remote_name!r}", remote_name), open(local_path, "rb") as src:
            fd = src.fileno()
            size = os.lseek(fd, 0, os.SEEK_END)      # st_size is 0 for block devices
            layout = layout or layouts.Identity(size)
            if layout.source_size != size:
                raise TransferFailed(f"{os.fspath(local_path)} holds {size} bytes but its container was made for "
                                     f"{layout.source_size}")
            extents = list(data_extents(fd, size))
            data_bytes = sum(length for _, length in extents)
            if not overwrite and self.exists(remote_name):
                raise RemoteExists(f"{remote_name!r} already exists in {self.location}; "
                                   "allow overwriting or choose another name")
            self._require_space(data_bytes + layout.overhead, remote_name)
            sent = self._upload_to_partial(fd, size, extents, final, overwrite, progress, cancel, layout, tap,
                                           verify)
        log.info("uploaded %s to %s\\%s (%d bytes, %d in data extents, %d sent, file of %d bytes)",
                 os.fspath(local_path), self.location, remote_name, size, data_bytes, sent, layout.size)
        stored = self.stat(remote_name)
        stored.sent = sent
        return stored

    def download(self, remote_name: str, local_path, progress: Progress | None = None, cancel=None,
                 overwrite: bool = False) -> int:
        """Copy ``remote_name`` to a local file (written as ``local_path.partial``, renamed when complete); all-zero
        chunks become holes. Returns the number of bytes."""
        local_path = os.fspath(local_path)
        if os.path.exists(local_path) and not overwrite:
            raise DestinationExists(f"{local_path} already exists; allow overwriting or choose another path")
        partial = local_path + PARTIAL_SUFFIX
        with self._failures(f"downloading {remote_name!r}", remote_name), \
                self._opened(self._full(remote_name), FILE_READ, options=CreateOptions.FILE_NON_DIRECTORY_FILE) \
                as handle, open(partial, "wb") as dst:
            size = handle.end_of_file
            try:
                self._receive_chunks(handle, size, dst.fileno(), progress, cancel)
                os.ftruncate(dst.fileno(), size)
                os.fsync(dst.fileno())
            except BaseException:
                os.unlink(partial)
                raise
        os.replace(partial, local_path)
        log.info("downloaded %s\\%s to %s (%d bytes)", self.location, remote_name, local_path, size)
        return size

    # ------------------------------------------------ upload internals

    def _require_space(self, needed: int, remote_name: str) -> None:
        free, total = self.free_space()
        free += self.stale_partial(remote_name)
        if free < needed:
            raise ShareFull(f"{self.location} has {_size(free)} free of {_size(total)} but {remote_name!r} needs "
                            f"{_size(needed)}; free space on the share or choose another location")

    def stale_partial(self, remote_name: str) -> int:
        """The space a ``NAME.partial`` left by an interrupted upload holds: the next upload of ``NAME`` truncates
        and reuses it, so it counts as free."""
        partial = remote_name + PARTIAL_SUFFIX
        try:
            found = self.stat(partial)
        except RemoteNotFound:
            return 0
        return 0 if found.is_dir else found.allocated

    def _upload_to_partial(self, fd, size, extents, final, overwrite, progress, cancel, layout, tap,
                           verify) -> int:
        handle = self._open(final + PARTIAL_SUFFIX, FILE_WRITE, disposition=CreateDisposition.FILE_OVERWRITE_IF,
                            options=CreateOptions.FILE_NON_DIRECTORY_FILE)
        try:
            self._mark_sparse(handle)
            sent = self._send_extents(handle, fd, size, extents, progress, cancel, layout, tap)
            self._set_info(handle, _end_of_file(layout.size))
            self._verify_size(handle, layout.size)
            if verify is not None:
                verify(RemoteReader(handle, final + PARTIAL_SUFFIX, self._chunk, self._failures, self._send,
                                    size=layout.size, owns_handle=False))
            self._rename_handle(handle, final, overwrite)
        except BaseException:
            self._discard(handle)
            raise
        finally:
            _close_quietly(handle)
        _report(progress, size, size)
        return sent

    def _mark_sparse(self, handle: Open) -> None:
        """Unwritten ranges of a sparse file stay unallocated; without it NTFS fills the gaps with zeros."""
        request = SMB2IOCTLRequest()
        request["ctl_code"] = CtlCode.FSCTL_SET_SPARSE
        request["file_id"] = handle.file_id
        request["max_output_response"] = 0
        request["flags"] = IOCTLFlags.SMB2_0_IOCTL_IS_FSCTL
        request["buffer"] = b""
        try:
            self._call(request, SMB2IOCTLResponse)
        except SMBResponseException as exc:
            if exc.status not in SPARSE_UNSUPPORTED:
                raise
            log.info("%s does not support sparse files; holes will be stored as zeros", self.where)

    def _send_extents(self, handle: Open, fd: int, size: int, extents, progress, cancel, layout, tap) -> int:
        """Write the non-zero chunks of the data extents where the layout places them, then the layout's
        metadata; returns the bytes sent."""
        pipeline = _Pipeline(self._connection, progress, size, cancel)
        writer = smbwire.writer_for(handle, self._write_chunk)
        sent = 0
        for offset, length in chunks(extents, self._write_chunk, layout.block_size):
            _stop_if_canceled(cancel)
            if writer.read(fd, offset, length) != length:
                raise TransferFailed(f"the local file shrank while uploading it (short read at {offset})")
            if tap is not None:
                tap(offset, writer.payload(length))
            if writer.read_is_zero(length):
                pipeline.add(None, offset + length)
                continue
            at = layout.place(offset, length)
            pipeline.make_room(length)
            pipeline.add(writer.send(at, length), offset + length, functools.partial(_check_written, at, length))
            sent += length
        for at, data in layout.metadata():
            for start in range(0, len(data), self._write_chunk):
                piece = data[start:start + self._write_chunk]
                writer.load(piece)
                pipeline.make_room(len(piece))
                pipeline.add(writer.send(at + start, len(piece)), size,
                             functools.partial(_check_written, at + start, len(piece)))
                sent += len(piece)
        pipeline.drain()
        return sent

    def _verify_size(self, handle: Open, size: int) -> None:
        stored = self._query_info(handle, FileStandardInformation)["end_of_file"].get_value()
        if stored != size:
            raise TransferFailed(f"the share stored {stored} bytes instead of {size}; the upload was discarded")

    def _discard(self, handle: Open) -> None:
        """Delete the partial file (best effort: a dead connection cannot delete anything)."""
        try:
            info = FileDispositionInformation()
            info["delete_pending"] = True
            self._set_info(handle, info)
        except (SMBException, OSError, ValueError) as exc:
            log.warning("could not remove the partial file %s on %s: %s", handle.file_name, self.where,
                        _reason(exc))

    # ------------------------------------------------ download internals

    def _receive_chunks(self, handle: Open, size: int, fd: int, progress, cancel) -> None:
        pipeline = _Pipeline(self._connection, progress, size, cancel)
        for offset, length in chunks([(0, size)], self._chunk):
            _stop_if_canceled(cancel)
            pipeline.make_room(length)
            request, _ = handle.read(offset, length, send=False)
            pipeline.add(self._send(request), offset + length, functools.partial(_store_read, fd, offset, length))
        pipeline.drain()

    # ------------------------------------------------ plumbing

    def _full(self, path: str) -> str:
        relative = normalize_path(path)
        return f"{self.location.folder}\\{relative}" if self.location.folder else relative

    def _stat(self, full: str, path: str) -> RemoteStat:
        """``path`` is what the caller named ("" for the location's folder itself)."""
        with self._failures("looking it up", path), self._opened(full, READ_ATTRIBUTES) as h:
            return RemoteStat(path=path, size=h.end_of_file, allocated=h.allocation_size,
                              is_dir=bool(h.file_attributes & FileAttributes.FILE_ATTRIBUTE_DIRECTORY),
                              modified=h.last_write_time)

    def _open(self, full: str, access: int, *, disposition=CreateDisposition.FILE_OPEN, options: int = 0) -> Open:
        if self._tree is None:
            raise SmbError(f"not connected to {self.where}: use the share inside a 'with' block")
        handle = Open(self._tree, full)
        handle.create(ImpersonationLevel.Impersonation, access, FileAttributes.FILE_ATTRIBUTE_NORMAL, SHARE_ALL,
                      disposition, options)
        return handle

    @contextmanager
    def _opened(self, full: str, access: int, **kwargs) -> Iterator[Open]:
        handle = self._open(full, access, **kwargs)
        try:
            yield handle
        finally:
            _close_quietly(handle)

    def _directory_names(self, handle: Open) -> Iterator[str]:
        flags = QueryDirectoryFlags.SMB2_RESTART_SCANS
        while True:
            try:
                entries = handle.query_directory("*", FileNamesInformation.INFO_CLASS, flags=flags)
            except SMBResponseException as exc:
                if exc.status in (NtStatus.STATUS_NO_MORE_FILES, NtStatus.STATUS_NO_SUCH_FILE):
                    return
                raise
            flags = 0
            for entry in entries:
                yield entry["file_name"].get_value().decode("utf-16-le")

    def _rename_handle(self, handle: Open, full_dst: str, overwrite: bool) -> None:
        info = FileRenameInformation()
        info["replace_if_exists"] = overwrite
        info["file_name"] = full_dst.encode("utf-16-le")
        self._set_info(handle, info)

    def _query_info(self, handle: Open, info_class):
        info = info_class()
        request = SMB2QueryInfoRequest()
        request["info_type"] = info.INFO_TYPE
        request["file_info_class"] = info.INFO_CLASS
        request["file_id"] = handle.file_id
        request["output_buffer_length"] = len(info)
        return self._call(request, SMB2QueryInfoResponse).parse_buffer(info_class)

    def _set_info(self, handle: Open, info) -> None:
        request = SMB2SetInfoRequest()
        request["info_type"] = info.INFO_TYPE
        request["file_info_class"] = info.INFO_CLASS
        request["file_id"] = handle.file_id
        request["buffer"] = info
        self._call(request, SMB2SetInfoResponse)

    def _send(self, request):
        return self._connection.send(request, self._tree.session.session_id, self._tree.tree_connect_id)

    def _call(self, request, response_class):
        return _unpack(response_class, self._connection.receive(self._send(request)))

    @contextmanager
    def _failures(self, doing: str, path: str) -> Iterator[None]:
        """Turn smbprotocol's exceptions into one actionable CeError (never with credentials in it)."""
        try:
            yield
        except SMBResponseException as exc:
            raise self._error(exc, doing, path) from None
        except (SMBException, ConnectionError, TimeoutError) as exc:
            raise SmbUnreachable(f"lost the connection to {self.where} while {doing} ({_reason(exc)}); "
                                 "check the network and retry") from None
        except OSError as exc:
            raise TransferFailed(f"{doing} failed on the local side: {exc.strerror or exc} "
                                 f"({exc.filename or 'local file'})") from None

    def _error(self, exc: SMBResponseException, doing: str, path: str = "") -> SmbError:
        status = exc.status
        where = f"{path!r} in {self.location}" if path else str(self.location)
        if status in NOT_FOUND_STATUSES:
            return RemoteNotFound(f"{where} does not exist (while {doing})")
        if status == NtStatus.STATUS_OBJECT_NAME_COLLISION:
            return RemoteExists(f"{where} already exists (while {doing}); allow overwriting or choose another name")
        if status in FULL_STATUSES:
            return ShareFull(f"{self.location} is full (while {doing}); free space on the share or choose another "
                             "location; no file was left at the final name")
        if status == NtStatus.STATUS_ACCESS_DENIED:
            return SmbAccessDenied(f"access denied to {where} while {doing}; the job's SMB user needs read and "
                                   "write permission on the share and the folder")
        if status == NtStatus.STATUS_SHARING_VIOLATION:
            return SmbError(f"{where} is in use by another program (while {doing}); close it and retry")
        return SmbError(f"{doing} failed on {self.where}: the server answered {_status_name(status)}")


class RemoteReader(io.RawIOBase):
    """A read-only, seekable file on a share (``SmbShare.open_read``)."""

    def __init__(self, handle: Open, path: str, chunk: int, failures, send, *, size: int | None = None,
                 owns_handle: bool = True):
        super().__init__()
        self._handle = handle
        self._send = send
        self._owns_handle = owns_handle
        self._chunk = chunk                     # at most what the session has credits for
        self._failures = failures
        self.path = path
        self.size = handle.end_of_file if size is None else size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer) -> int:
        length = min(len(buffer), self.size - self._position, self._chunk)
        if length <= 0:
            return 0
        with self._failures(f"reading {self.path!r}", self.path):
            data = self._handle.read(self._position, length)
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (the ``read_at`` callable header readers such as disks.header_facts
        take), short only at the end of the file."""
        length = max(0, min(length, self.size - offset))
        buffer = bytearray(length)
        self.read_exactly(offset, memoryview(buffer))
        return bytes(buffer)

    def read_exactly(self, offset: int, into: memoryview) -> None:
        """Fill ``into`` from ``offset`` with up to IN_FLIGHT reads on the wire; the range must be in the file."""
        if offset + len(into) > self.size:
            raise TransferFailed(f"{self.path!r} holds {self.size} bytes: cannot read {len(into)} at {offset}")
        pipeline = _Pipeline(self._handle.connection, None, len(into))
        with self._failures(f"reading {self.path!r}", self.path):
            for start, length in chunks([(offset, len(into))], self._chunk):
                pipeline.make_room(length)
                request, _ = self._handle.read(start, length, send=False)
                pipeline.add(self._send(request), 0, functools.partial(_copy_read, into, start - offset, length, start))
            pipeline.drain()

    def close(self) -> None:
        if not self.closed and self._owns_handle:
            _close_quietly(self._handle)
        super().close()


class _Pipeline:
    """Keeps up to IN_FLIGHT requests on the wire and completes them in order, reporting progress and checking
    ``cancel`` after each (with 8 MiB writes a whole small file is on the wire before the first completes)."""

    def __init__(self, connection: Connection, progress: Progress | None, total: int, cancel=None):
        self._connection = connection
        self._progress = progress
        self._total = total
        self._cancel = cancel
        self._pending = collections.deque()       # (sent request or None for a skipped chunk, end offset, finish)

    def make_room(self, length: int) -> None:
        while self._pending and (len(self._pending) >= IN_FLIGHT or not _has_credits(self._connection, length)):
            self._complete_oldest()

    def add(self, sent, end: int, finish: Callable | None = None) -> None:
        self._pending.append((sent, end, finish))
        while self._pending and self._pending[0][0] is None:
            self._complete_oldest()

    def drain(self) -> None:
        while self._pending:
            self._complete_oldest()

    def _complete_oldest(self) -> None:
        sent, end, finish = self._pending.popleft()
        if sent is not None:
            response = self._connection.receive(sent)
            if finish is not None:
                finish(response)
        _report(self._progress, end, self._total)
        _stop_if_canceled(self._cancel)


# ---------------------------------------------------------------- helpers

def _is_zero(data: bytes) -> bool:
    return data == (ZERO_CHUNK if len(data) == READ_CHUNK else bytes(len(data)))


def _credits(connection: Connection) -> int:
    return connection.sequence_window["high"] - connection.sequence_window["low"]


def _credit_charge(connection: Connection, length: int) -> int:
    return (length - 1) // CREDIT_BYTES + 1 if connection.supports_multi_credit else 1


def _has_credits(connection: Connection, length: int) -> bool:
    """smbprotocol raises instead of waiting when a request needs more credits than the server granted so far."""
    return _credits(connection) >= _credit_charge(connection, length)


def _unpack(response_class, response):
    message = response_class()
    message.unpack(response["data"].get_value())
    return message


def _check_written(offset: int, length: int, response) -> None:
    written = _unpack(SMB2WriteResponse, response)["count"].get_value()
    if written != length:
        raise TransferFailed(f"the share wrote {written} of {length} bytes at offset {offset}")


def _store_read(fd: int, offset: int, length: int, response) -> None:
    data = _unpack(SMB2ReadResponse, response)["buffer"].get_value()
    if len(data) != length:
        raise TransferFailed(f"the share returned {len(data)} of {length} bytes at offset {offset}")
    if not _is_zero(data):                      # a hole in the local file reads as zeros
        os.pwrite(fd, data, offset)


def _copy_read(into: memoryview, at: int, length: int, offset: int, response) -> None:
    data = _unpack(SMB2ReadResponse, response)["buffer"].get_value()
    if len(data) != length:
        raise TransferFailed(f"the share returned {len(data)} of {length} bytes at offset {offset}")
    into[at:at + length] = data


def _end_of_file(size: int) -> FileEndOfFileInformation:
    info = FileEndOfFileInformation()
    info["end_of_file"] = size
    return info


def _report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _stop_if_canceled(cancel) -> None:
    if cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
        raise TransferCanceled("the SMB transfer was canceled; no file was left at the final name")


def _close_quietly(handle: Open) -> None:
    try:
        handle.close()
    except (SMBException, OSError, ValueError) as exc:
        log.debug("ignoring an error while closing %s: %s", handle.file_name, type(exc).__name__)


def _disconnect_quietly(connection: Connection) -> None:
    try:
        connection.disconnect(close=False)
    except (SMBException, OSError, ValueError):
        pass


def _reason(exc: BaseException) -> str:
    """A short cause built from codes only, so it cannot carry credentials (spnego's texts may name the user)."""
    if isinstance(exc, SMBResponseException):
        return _status_name(exc.status)
    cause = exc if isinstance(exc, OSError) else exc.__cause__      # smbprotocol wraps socket errors in ValueError
    if isinstance(cause, TimeoutError) or "timeout" in str(exc).lower():
        return "timed out"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return type(exc).__name__


def _status_name(status: int) -> str:
    return f"{STATUS_NAMES.get(status, 'status')} (0x{status:08x})"


def _size(n: int) -> str:
    return f"{n / MiB:,.0f} MiB" if n >= MiB else f"{n} bytes"
