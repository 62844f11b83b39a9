"""``ShareSession``: one authenticated connection to one share folder, and the request plumbing ``SmbShare``'s file
operations stand on (open, query and set information, send, and turning smbprotocol's exceptions into SMB errors).

Each session owns its own connection, session and tree: nothing is registered process-wide, so two jobs never share
credentials. Neither the user name nor the password ever appears in an error message or a log line: smbprotocol
logs the user name at INFO and whole messages at DEBUG, so its own logging is switched off (below).

A port the policy in force does not allow (``ce.smb.ports``) is refused before any connection. Failing to reach an
SMB server reads the same whatever the cause -- a closed port, a filtered one, a listener that is not SMB (ssh,
http), a silent one, a name that does not resolve: "could not reach an SMB server at HOST (port N)". A step's
params choose the host and port, and its log and document go back to whoever sent them, so a cause in either would
tell an open port from a closed one: the cause is logged at DEBUG only, which ``ce -v`` on the command line shows and
a step run by the server (its process logs at INFO) never records.
"""
from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterator, Self

from smbprotocol.connection import Connection, SMB2Echo
from smbprotocol.exceptions import SMBAuthenticationError, SMBException, SMBResponseException
from smbprotocol.file_info import FileAttributes, FileNamesInformation, FileRenameInformation
from smbprotocol.header import NtStatus
from smbprotocol.open import CreateDisposition, ImpersonationLevel, Open, QueryDirectoryFlags
from smbprotocol.session import Session, SMB2Logoff
from smbprotocol.tree import SMB2TreeDisconnect, TreeConnect

from ..errors import (CeError, RemoteExists, RemoteNotFound, ShareFull, ShareNotFound, SmbAccessDenied, SmbAuthFailed,
                      SmbError, SmbPortRefused, SmbUnreachable, TransferFailed)
from .compound import Compound, Step, query_info, set_info
from .ports import DEFAULT_PORT, refusal as port_refusal
from .location import Credentials, SmbLocation
from .paths import normalize_path
from .pipeline import READ_CHUNK, WINDOW, WRITE_CHUNK
from .protocol import (AUTH_STATUSES, FULL_STATUSES, NOT_FOUND_STATUSES, READ_ATTRIBUTES, SHARE_ALL, close_quietly,
                       disconnect_quietly, reason, status_name)
from .wire import CREDIT_BYTES, credit_charge, credits, signer, signing_algorithm_name

log = logging.getLogger("ce.smb")
# smbprotocol logs the user name at INFO and whole messages at DEBUG; at WARNING and ERROR it logs a peer that reset
# the connection and its receive thread dying on a reply it cannot parse (a listener that is not SMB), which would
# tell one kind of port from another. Each of those also reaches ce as the exception it is about, which ce reports
# (mapped, or as a crash with its traceback), so nothing of smbprotocol's or spnego's own logging is kept.
for _noisy in ("smbprotocol", "spnego"):
    logging.getLogger(_noisy).setLevel(logging.CRITICAL)


CONNECT_TIMEOUT = 10.0


@dataclass
class RemoteStat:
    path: str                # relative to the location's folder
    size: int
    allocated: int           # bytes the server reports as allocated
    is_dir: bool
    modified: datetime
    sent: int | None = None  # after an upload: bytes that went over the wire (holes and zero chunks are skipped)
    reused: int = 0          # ... bytes an earlier attempt had left in NAME.partial, read back and found right
    checked: int = 0         # ... bytes read back to find them (ce.smb.resume)


FOLDER_CHECK_CREDITS = 4                    # an open and a close, with a margin


def remote_stat(handle: Open, path: str) -> RemoteStat:
    """The stat of ``handle`` from the attributes its create (or a close that asked for them) returned."""
    return RemoteStat(path=path, size=handle.end_of_file, allocated=handle.allocation_size,
                      is_dir=bool(handle.file_attributes & FileAttributes.FILE_ATTRIBUTE_DIRECTORY),
                      modified=handle.last_write_time)


class ShareSession:
    """One authenticated connection to one share folder (``SmbShare`` adds the file operations); a context manager."""

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
        return f"{type(self).__name__}({str(self.location)!r}, port={self.port})"

    @property
    def where(self) -> str:
        port = "" if self.port == DEFAULT_PORT else f" (port {self.port})"
        return f"{self.location}{port}"

    # ------------------------------------------------ connect / close

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> Self:
        if refused := port_refusal(self.port):
            raise SmbPortRefused(refused)
        self._connection = self._negotiate()
        try:
            session = self._authenticate(self._connection)
            self._tree = self._connect_tree(session)
            credits_granted = self._reserve_credits(session)
            if self.location.folder:
                self._require_folder()
            self._chunk, self._write_chunk = credits_granted()
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
        if signer(connection, session) is None:
            return f"{version}, not signed"
        return f"{version}, signed ({signing_algorithm_name(connection)})"

    def close(self) -> None:
        connection, tree, self._connection, self._tree = self._connection, self._tree, None, None
        if connection is None:
            return
        try:
            if tree is not None and connection.transport.connected:
                self._sign_out(connection, tree)
            connection.disconnect(close=False)
        except (SMBException, OSError, ValueError) as exc:
            log.debug("ignoring an error while disconnecting from %s: %s", self.where, type(exc).__name__)

    def _sign_out(self, connection: Connection, tree: TreeConnect) -> None:
        """Tree disconnect and log off in one round trip (smbprotocol's disconnect waits for each)."""
        session_id = tree.session.session_id
        sent = connection.send_compound([SMB2TreeDisconnect(), SMB2Logoff()], session_id, tree.tree_connect_id)
        for request in sent:
            connection.receive(request, timeout=self._timeout)

    def _negotiate(self) -> Connection:
        # Samba 4.17 refuses a connection negotiated with require_signing=False at tree connect: always sign.
        connection = Connection(uuid.uuid4(), self.location.host, self.port, require_signing=True)
        try:
            connection.connect(timeout=self._timeout)
        except CeError:
            disconnect_quietly(connection)
            raise                       # canceled or stopped while connecting
        except Exception as exc:        # what a listener that is not SMB makes smbprotocol raise is open-ended
            disconnect_quietly(connection)
            log.debug("no SMB server at %s port %d: %s", self.location.host, self.port, reason(exc))
            raise SmbUnreachable(f"could not reach an SMB server at {self.location.host} (port {self.port}); check "
                                 f"the host name, the port and the firewall") from None
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
                raise self._auth_failed(status_name(exc.status)) from None
            raise self._error(exc, "signing in") from None
        except SMBException as exc:
            raise SmbError(f"cannot sign in to {self.where}: {reason(exc)}") from None
        return session

    def _auth_failed(self, why: str) -> SmbAuthFailed:
        return SmbAuthFailed(f"the SMB server {self.location.host} refused the sign-in for {self.location.share_unc} "
                             f"({why}); check the job's SMB user name, password and domain")

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

    def _reserve_credits(self, session: Session) -> Callable[[], tuple[int, int]]:
        """Ask for enough credits to keep WINDOW bytes on the wire; the function returned waits for the answer
        and returns the (read, write) chunk sizes.

        A session starts with a few credits and smbprotocol fails a request it has no credits for rather than
        waiting, so an echo asks for more up front; while it is on the wire the folder check may use what is left.
        Samba grants what is asked; a server that grants less gets smaller chunks."""
        connection = self._connection
        read_chunk = min(READ_CHUNK, connection.max_read_size)
        write_chunk = min(WRITE_CHUNK, connection.max_write_size)
        wanted = credit_charge(connection, WINDOW) + credit_charge(connection, write_chunk)
        echo = None
        if credits(connection) < wanted:
            with self._failures("asking the server for I/O credits", ""):
                echo = connection.send(SMB2Echo(), sid=session.session_id,
                                       credit_request=wanted - credits(connection) + 1)
                if credits(connection) < FOLDER_CHECK_CREDITS:      # too few to check the folder meanwhile
                    connection.receive(echo, timeout=self._timeout)
                    echo = None

        def granted() -> tuple[int, int]:
            if echo is not None:
                with self._failures("asking the server for I/O credits", ""):
                    connection.receive(echo, timeout=self._timeout)
            affordable = max(1, credits(connection) - 1) * CREDIT_BYTES
            return min(read_chunk, affordable), min(write_chunk, affordable)
        return granted

    def _require_folder(self) -> None:
        try:
            is_dir = self._stat(self.location.folder, "").is_dir
        except RemoteNotFound:
            is_dir = None
        if not is_dir:
            problem = "does not exist" if is_dir is None else "is a file, not a folder"
            raise RemoteNotFound(f"the folder {self.location} {problem}; create it or fix the location")

    # ------------------------------------------------ plumbing

    def _full(self, path: str) -> str:
        relative = normalize_path(path)
        return f"{self.location.folder}\\{relative}" if self.location.folder else relative

    def _stat(self, full: str, path: str) -> RemoteStat:
        """``path`` is what the caller named ("" for the location's folder itself)."""
        with self._failures("looking it up", path):
            return self._begin_stat(full, path)()

    def _begin_stat(self, full: str, path: str) -> Callable[[], RemoteStat]:
        """Send an open and a close of ``full`` as one compound; the function returned receives them as a stat
        (or raises the open's failure)."""
        handle = self._handle(full)
        compound = Compound(handle, [self._create(handle, READ_ATTRIBUTES), handle.close(send=False)])

        def stat() -> RemoteStat:
            compound.outcomes().raise_failure()
            return remote_stat(handle, path)
        return stat

    def _handle(self, full: str) -> Open:
        if self._tree is None:
            raise SmbError(f"not connected to {self.where}: use the share inside a 'with' block")
        return Open(self._tree, full)

    @staticmethod
    def _create(handle: Open, access: int, *, disposition=CreateDisposition.FILE_OPEN, options: int = 0) -> Step:
        return handle.create(ImpersonationLevel.Impersonation, access, FileAttributes.FILE_ATTRIBUTE_NORMAL,
                             SHARE_ALL, disposition, options, send=False)

    def _open(self, full: str, access: int, *, disposition=CreateDisposition.FILE_OPEN, options: int = 0) -> Open:
        handle = self._handle(full)
        Compound(handle, [self._create(handle, access, disposition=disposition, options=options)]) \
            .outcomes().raise_failure()
        return handle

    @contextmanager
    def _opened(self, full: str, access: int, **kwargs) -> Iterator[Open]:
        handle = self._open(full, access, **kwargs)
        try:
            yield handle
        finally:
            close_quietly(handle)

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
        self._set_info(handle, self._rename_info(full_dst, overwrite))

    def _query_info(self, handle: Open, info_class):
        return Compound(handle, [query_info(handle, info_class)]).outcomes().raise_failure()[0]

    def _set_info(self, handle: Open, info) -> None:
        Compound(handle, [set_info(handle, info)]).outcomes().raise_failure()

    @staticmethod
    def _rename_info(full_dst: str, overwrite: bool) -> FileRenameInformation:
        info = FileRenameInformation()
        info["replace_if_exists"] = overwrite
        info["file_name"] = full_dst.encode("utf-16-le")
        return info

    def _send(self, request):
        return self._connection.send(request, self._tree.session.session_id, self._tree.tree_connect_id)

    @contextmanager
    def _failures(self, doing: str, path: str) -> Iterator[None]:
        """Turn smbprotocol's exceptions into one actionable CeError (never with credentials in it)."""
        try:
            yield
        except SMBResponseException as exc:
            raise self._error(exc, doing, path) from None
        except (SMBException, ConnectionError, TimeoutError) as exc:
            raise SmbUnreachable(f"lost the connection to {self.where} while {doing} ({reason(exc)}); "
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
        return SmbError(f"{doing} failed on {self.where}: the server answered {status_name(status)}")
