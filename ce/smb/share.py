"""``SmbShare``: the file operations on one share folder (queries, changes, uploads and downloads) over a
``ShareSession``. Every remote path is relative to the location's folder (``ce.smb.paths``).

* Uploads go to ``NAME.partial`` and are renamed to ``NAME`` only after the size on the share was verified; a
  failure or a cancel deletes the partial file. The share's free space is checked before the first byte is sent.
* Uploads skip the holes of sparse local files (SEEK_DATA / SEEK_HOLE) and all-zero chunks, and mark the remote
  file sparse, so a half-empty disk does not send (or store) its empty half.
* An upload given a ``ResumeKey`` keeps ``NAME.partial.ce-resume`` beside its partial file and, when it finds the
  record of the same key, keeps the partial file of that earlier attempt and sends only what is not already there
  (``ce.smb.resume``: pieces read back and compared before they are sent, the rest of the old file zeroed).
* Downloads are written to ``PATH.partial`` and renamed when complete; all-zero chunks become holes.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from typing import Callable

from smbprotocol.exceptions import FileClosed, SMBException, SMBResponseException
from smbprotocol.file_info import FileDispositionInformation, FileFsFullSizeInformation, FileStandardInformation
from smbprotocol.ioctl import CtlCode
from smbprotocol.open import CreateDisposition, CreateOptions, Open

from ..errors import CeError, DestinationExists, RemoteExists, RemoteNotFound, ShareFull, TransferFailed
from ..disks.extents import chunks, data_extents
from ..disks.layouts import Identity
from .compound import Compound, close_open_file, query_info, set_info
from .pipeline import MiB, Pipeline, Progress, check_written, report, stop_if_canceled, store_read
from .protocol import (DELETE, FILE_READ, FILE_WRITE, LIST_DIR, NOT_FOUND_STATUSES, READ_ATTRIBUTES,
                       SPARSE_UNSUPPORTED, close_quietly, end_of_file, reason)
from .reader import RemoteReader
from .resume import PARTIAL_SUFFIX, EarlierAttempt, Recorded, ResumeKey, ResumingShare, record_name
from .session import RemoteStat, remote_stat
from .wire import writer_for

log = logging.getLogger("ce.smb")


@dataclass
class Survey:
    """What an upload (or its plan) learns before the first byte, in one round trip (``SmbShare.survey``)."""
    final: RemoteStat | None            # what is at the name already (None: nothing, or not asked)
    free: int
    total: int
    stale: int                          # allocated bytes of a NAME.partial of an earlier attempt
    recorded: Recorded                  # the earlier attempt's record, when resuming is possible



class SmbShare(ResumingShare):
    """One authenticated connection to one share folder; use as a context manager."""

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
        with self._failures("reading the free space", ""):
            return self._begin_free_space()()

    def _begin_free_space(self) -> Callable[[], tuple[int, int]]:
        handle = self._handle(self.location.folder)
        compound = Compound(handle, [self._create(handle, READ_ATTRIBUTES),
                                     query_info(handle, FileFsFullSizeInformation), handle.close(send=False)])

        def free_space() -> tuple[int, int]:
            info = compound.outcomes().raise_failure()[1]
            unit = info["sectors_per_unit"].get_value() * info["bytes_per_sector"].get_value()
            return (info["caller_available_units"].get_value() * unit,
                    info["total_allocation_units"].get_value() * unit)
        return free_space

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

    def open_read(self, path: str) -> RemoteReader:
        with self._failures(f"opening {path!r}", path):
            handle = self._open(self._full(path), FILE_READ, options=CreateOptions.FILE_NON_DIRECTORY_FILE)
        return RemoteReader(handle, path, self._chunk, self._failures, self._send)

    def upload(self, local_path, remote_name: str, progress: Progress | None = None, cancel=None,
               overwrite: bool = False, layout=None, tap=None, verify=None, resume: ResumeKey | None = None,
               start_over: bool = False) -> RemoteStat:
        """Copy a local file (or block device) to ``remote_name``; returns the stored file's stat.

        ``layout`` (ce.disks.layouts) places the local bytes inside a VHD / VHDX container and supplies the
        container's metadata, so a raw disk is streamed into its final format; by default the file is copied as
        it is. ``progress(bytes_done, total)`` follows the position in the local file (holes count as done);
        ``cancel`` is a threading.Event or a callable polled between chunks. ``tap(offset, data)`` sees every chunk
        read from the local file, in order, zero ones included (holes are not read: a tap treats gaps as zeros).
        ``verify(reader)`` gets a RemoteReader on the complete ``NAME.partial`` and raises to refuse it (the file is
        then removed) before it is renamed to ``NAME``. ``resume`` (the key of this upload, ``ce.smb.resume``)
        reuses what an earlier attempt with the same key left in ``NAME.partial`` once checked, unless
        ``start_over``; either way the key is recorded beside the partial file for the next attempt."""
        final = self._full(remote_name)
        with self._failures(f"uploading {remote_name!r}", remote_name), open(local_path, "rb") as src:
            fd = src.fileno()
            size = os.lseek(fd, 0, os.SEEK_END)      # st_size is 0 for block devices
            layout = layout or Identity(size)
            if layout.source_size != size:
                raise TransferFailed(f"{os.fspath(local_path)} holds {size} bytes but its container was made for "
                                     f"{layout.source_size}")
            extents = list(data_extents(fd, size))
            data_bytes = sum(length for _, length in extents)
            survey = self._survey(remote_name, check_final=not overwrite,
                                  resume=resume is not None and not start_over)
            if survey.final is not None:
                raise RemoteExists(f"{remote_name!r} already exists in {self.location}; "
                                   "allow overwriting or choose another name")
            self._require_space(survey, data_bytes + layout.overhead, remote_name)
            sent, earlier, stored = self._upload_to_partial(fd, size, extents, final, overwrite, progress, cancel,
                                                            layout, tap, verify, resume, survey.recorded)
        reused = earlier.reused if earlier else 0
        log.info("uploaded %s to %s\\%s (%d bytes, %d in data extents, %d sent, %d reused, file of %d bytes)",
                 os.fspath(local_path), self.location, remote_name, size, data_bytes, sent, reused, layout.size)
        stored.path, stored.sent, stored.reused = remote_name, sent, reused
        stored.checked = earlier.checked if earlier else 0
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

    def survey(self, remote_name: str, *, resume: bool = True) -> Survey:
        """What is at ``remote_name``, the free space, the ``NAME.partial`` an earlier attempt left and (when
        ``resume``) its record: what a plan of an upload checks, in one round trip."""
        with self._failures(f"looking up {remote_name!r}", remote_name):
            return self._survey(remote_name, check_final=True, resume=resume)

    def _survey(self, remote_name: str, *, check_final: bool, resume: bool) -> Survey:
        """The final name (when ``check_final``), the free space, the stale partial file and its resume record
        (when ``resume``): sent together, then received."""
        final = self._full(remote_name)
        partial = final + PARTIAL_SUFFIX
        final_stat = self._begin_stat(final, remote_name) if check_final else None
        free_space = self._begin_free_space()
        partial_stat = self._begin_stat(partial, remote_name + PARTIAL_SUFFIX)
        recorded = self._begin_record(record_name(partial)) if resume else None
        found = _found(final_stat) if final_stat is not None else None
        free, total = free_space()
        stale = _found(partial_stat)
        return Survey(found, free, total, 0 if stale is None or stale.is_dir else stale.allocated,
                      recorded() if recorded else Recorded.UNKNOWN)

    def _require_space(self, survey: Survey, needed: int, remote_name: str) -> None:
        free, total = survey.free + survey.stale, survey.total
        if free < needed:
            raise ShareFull(f"{self.location} has {_size(free)} free of {_size(total)} but {remote_name!r} needs "
                            f"{_size(needed)}; free space on the share or choose another location")

    def stale_partial(self, remote_name: str) -> int:
        """The space a ``NAME.partial`` left by an interrupted upload holds: the next upload of ``NAME`` truncates
        and reuses it, so it counts as free."""
        return self.survey(remote_name, resume=False).stale

    def _upload_to_partial(self, fd, size, extents, final, overwrite, progress, cancel, layout, tap, verify,
                           resume, recorded: Recorded) -> tuple[int, EarlierAttempt | None, RemoteStat]:
        partial = final + PARTIAL_SUFFIX
        record = record_name(partial)
        reusing = resume is not None and recorded.key == resume
        if resume is not None and not reusing and recorded.present:
            self._forget(record)                # before the old partial is truncated: never a record over new bytes
        handle = self._handle(partial)
        opened = self._begin_partial(handle, reusing)
        recording = self._begin_write_record(record, resume) if resume is not None and not reusing else None
        try:
            opened()
        except BaseException:
            if recording is not None:           # written meanwhile, for an attempt that did not start
                with contextlib.suppress(CeError):
                    recording()
                self._begin_delete(record)()
            raise
        earlier = None
        try:
            if recording is not None:
                recording()
            if reusing:
                earlier = self._earlier_attempt(handle)
                log.info("resuming %s: %d bytes of an earlier attempt are there", partial, earlier.there)
            sent = self._send_extents(handle, fd, size, extents, progress, cancel, layout, tap, earlier)
            self._set_size(handle, layout.size)
            if verify is not None:
                verify(RemoteReader(handle, partial, self._chunk, self._failures, self._send,
                                    size=layout.size, owns_handle=False))
            stored = self._rename_and_close(handle, final, overwrite, record if resume is not None else None)
        except BaseException:
            if self._discard(handle) and resume is not None:
                self._forget(record)
            raise
        finally:
            close_quietly(handle)
        report(progress, size, size)
        return sent, earlier, stored

    def _begin_partial(self, handle: Open, reusing: bool) -> Callable[[], None]:
        """Open (or truncate) the partial file and mark it sparse, one compound; the function returned raises the
        open's failure. Unwritten ranges of a sparse file stay unallocated; without it NTFS fills the gaps with
        zeros."""
        disposition = CreateDisposition.FILE_OPEN_IF if reusing else CreateDisposition.FILE_OVERWRITE_IF
        compound = Compound(handle, [self._create(handle, FILE_WRITE, disposition=disposition,
                                                  options=CreateOptions.FILE_NON_DIRECTORY_FILE),
                                     self._fsctl_step(handle, CtlCode.FSCTL_SET_SPARSE)])

        def opened() -> None:
            outcomes = compound.outcomes()
            if not outcomes.succeeded(0):
                raise outcomes[0]
            if not outcomes.succeeded(1):
                if outcomes[1].status not in SPARSE_UNSUPPORTED:
                    close_quietly(handle)
                    raise outcomes[1]
                log.info("%s does not support sparse files; holes will be stored as zeros", self.where)
        return opened

    def _send_extents(self, handle: Open, fd: int, size: int, extents, progress, cancel, layout, tap,
                      earlier: EarlierAttempt | None = None) -> int:
        """Write the non-zero chunks of the data extents where the layout places them (checking first what an
        ``earlier`` attempt left there), then the layout's metadata; returns the bytes sent."""
        pipeline = Pipeline(self._connection, progress, size, cancel)
        writer = writer_for(handle, self._write_chunk)
        sent = 0
        for offset, length in chunks(extents, self._write_chunk, layout.block_size):
            stop_if_canceled(cancel)
            if earlier is not None and earlier.rewrites:
                sent += self._rewrite(earlier, writer, pipeline, fd, offset)
            if writer.read(fd, offset, length) != length:
                raise TransferFailed(f"the local file shrank while uploading it (short read at {offset})")
            if tap is not None:
                tap(offset, writer.payload(length))
            if writer.read_is_zero(length):
                pipeline.add(None, offset + length)
                continue
            at = layout.place(offset, length)
            if earlier is not None and earlier.overlaps(at, length):
                self._check_pieces(earlier, writer, pipeline, handle, offset, at, length)
                continue
            pipeline.make_room(length)
            pipeline.add(writer.send(at, length), offset + length, functools.partial(check_written, at, length))
            if earlier is not None:
                earlier.wrote(at, length)
            sent += length
        if earlier is not None:
            sent += self._settle(earlier, writer, pipeline, handle, fd, size, layout.size)
        for at, data in layout.metadata():
            for start in range(0, len(data), self._write_chunk):
                piece = data[start:start + self._write_chunk]
                writer.load(piece)
                pipeline.make_room(len(piece))
                pipeline.add(writer.send(at + start, len(piece)), size,
                             functools.partial(check_written, at + start, len(piece)))
                sent += len(piece)
        pipeline.drain()
        return sent

    def _set_size(self, handle: Open, size: int) -> None:
        """Set the file's end and read it back, one compound."""
        outcomes = Compound(handle, [set_info(handle, end_of_file(size)),
                                     query_info(handle, FileStandardInformation)]).outcomes().raise_failure()
        stored = outcomes[1]["end_of_file"].get_value()
        if stored != size:
            raise TransferFailed(f"the share stored {stored} bytes instead of {size}; the upload was discarded")

    def _rename_and_close(self, handle: Open, final: str, overwrite: bool, record: str | None) -> RemoteStat:
        """Rename the verified partial file to ``final`` and close it, one compound whose close returns the stored
        file's attributes; the resume record, if any, is removed in the same round trip."""
        compound = Compound(handle, [set_info(handle, self._rename_info(final, overwrite)),
                                     handle.close(get_attributes=True, send=False)])
        forgotten = self._begin_delete(record) if record is not None else None
        outcomes = compound.outcomes()
        if forgotten is not None:
            forgotten()
        if not outcomes.succeeded(0):
            if not outcomes.succeeded(1):       # the server failed the close with the rename: the file is still open
                self._discard(handle)
                close_open_file(handle)
            raise outcomes[0]
        outcomes.raise_failure()
        return remote_stat(handle, final)

    def _discard(self, handle: Open) -> bool:
        """Delete the partial file (best effort: a dead connection cannot delete anything); True when deleted."""
        try:
            info = FileDispositionInformation()
            info["delete_pending"] = True
            self._set_info(handle, info)
        except FileClosed:                      # a failed rename's compound closed it: delete it by name
            return self._begin_delete(handle.file_name)()
        except (SMBException, OSError, ValueError) as exc:
            log.warning("could not remove the partial file %s on %s: %s", handle.file_name, self.where,
                        reason(exc))
            return False
        return True

    # ------------------------------------------------ download internals

    def _receive_chunks(self, handle: Open, size: int, fd: int, progress, cancel) -> None:
        pipeline = Pipeline(self._connection, progress, size, cancel)
        for offset, length in chunks([(0, size)], self._chunk):
            stop_if_canceled(cancel)
            pipeline.make_room(length)
            request, _ = handle.read(offset, length, send=False)
            pipeline.add(self._send(request), offset + length, functools.partial(store_read, fd, offset, length))
        pipeline.drain()


def _found(stat: Callable[[], RemoteStat]) -> RemoteStat | None:
    """The stat ``stat`` receives, None when there is nothing at its path."""
    try:
        return stat()
    except SMBResponseException as exc:
        if exc.status in NOT_FOUND_STATUSES:
            return None
        raise


def _size(n: int) -> str:
    return f"{n / MiB:,.0f} MiB" if n >= MiB else f"{n} bytes"
