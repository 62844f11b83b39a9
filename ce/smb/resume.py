"""Resuming an upload that an earlier attempt left as ``NAME.partial`` instead of starting it again: the record
(``ResumeKey``), the ranges arithmetic, ``EarlierAttempt`` (what is there and what became of it) and
``ResumingShare``, the requests ``SmbShare.upload`` makes for it.

An upload that may be resumed writes a small record beside its partial file before its first byte,
``NAME.partial.ce-resume`` (JSON, written to ``.new`` and renamed over, so it is whole or absent): the ``ResumeKey``
of the attempt -- the source's size, format and a sha256 of its first and last MiB, the container it is written as,
and the job's key (a digest of what the job asks for; see ``job_key``). It holds no path, name or account.

The next upload of the same name reads that record. Only when the key is the same does it keep the partial file
(any other ``NAME.partial`` -- another source, another job, no record -- is truncated and its record replaced). It
asks the server which ranges of the file hold data (FSCTL_QUERY_ALLOCATED_RANGES), and while it streams the source
as it always does, every piece it would write into one of those ranges (a read-sized piece, 1 MiB) is first read
back over the share and compared with the local bytes it would send: a piece that matches is not sent (``reused``),
any other is written. The comparison is of the bytes themselves, not of digests: it is exact, and a memcmp where
sha256 of both sides took 0.9 s of a 4.0 s resume that found 128 MiB in place (profiled on the test machine). A
piece of the old file that this attempt does not write at all (a chunk that is zero now, a block placed elsewhere)
is zeroed on the server (FSCTL_SET_ZERO_DATA: no bytes on the wire), so nothing of the earlier attempt survives
unchecked: the record only decides whether checking is worth it, the comparison decides what is kept.

``plan_facts`` / ``plan_lines`` are what a plan of such an upload says (export, publish and convert to a share
alike), ``upload_options`` what the step passes to ``SmbShare.upload``.

An upload that ends cleanly renames the partial file and deletes the record; one that fails while the share still
answers (a refusal, a cancel, a full share) deletes both, as before; what a lost connection or a killed process
leaves behind is what the next attempt resumes.
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import os
import struct
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Callable, ClassVar

from smbprotocol.exceptions import SMBException, SMBResponseException
from smbprotocol.ioctl import IOCTLFlags, SMB2IOCTLRequest, SMB2IOCTLResponse
from smbprotocol.open import CreateDisposition, CreateOptions, Open, SMB2ReadResponse
from smbprotocol.header import NtStatus

from ..disks.extents import chunks, zeros
from ..errors import TransferFailed
from ..sizes import human_size
from .compound import Compound, Step, set_info
from .pipeline import Pipeline, check_written
from .protocol import DELETE, FILE_READ, FILE_WRITE, NOT_FOUND_STATUSES, SPARSE_UNSUPPORTED, reason, unpack
from .session import ShareSession

log = logging.getLogger("ce.smb")

RECORD_SUFFIX = ".ce-resume"          # NAME.partial.ce-resume
RECORD_VERSION = 1
FINGERPRINT = 1 << 20                  # the first and the last MiB of the source
MAX_RECORD = 64 * 1024
PARTIAL_SUFFIX = ".partial"
FSCTL_QUERY_ALLOCATED_RANGES = 0x000940CF
FSCTL_SET_ZERO_DATA = 0x000980C8
RANGE = struct.Struct("<qq")                # FILE_ALLOCATED_RANGE_BUFFER, FILE_ZERO_DATA_INFORMATION
RANGES_PER_QUERY = 4096


def job_key(*parts: str) -> str:
    """A digest of what a job asks for (step, disk, destination, name, format): the same for the same job, on the
    command line and over the server alike. The server never runs one step id twice -- a retry is a new step with
    the same params -- so the step id cannot identify the job across attempts."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ResumeKey:
    """What makes two attempts at one upload the same: the job, the source and the container it is written as."""
    job: str
    source_size: int
    source_format: str
    first: str                         # sha256 of the source's first FINGERPRINT bytes
    last: str                          # ... and of its last
    container: str                     # e.g. "vhdx dynamic"

    def record(self) -> bytes:
        return json.dumps({"ceResume": RECORD_VERSION, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def from_record(cls, data: bytes) -> "ResumeKey | None":
        """The key a record holds; None for anything that is not a record of this version."""
        try:
            fields = json.loads(data)
            if fields.pop("ceResume") != RECORD_VERSION:
                return None
            return cls(**fields)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


def key_for(path, source_format: str, container: str, job: str) -> ResumeKey:
    """The key of an upload of the local file or block device at ``path`` (read: its first and last MiB)."""
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.lseek(fd, 0, os.SEEK_END)         # st_size is 0 for block devices
        return key_read(lambda offset, length: os.pread(fd, length, offset), size, source_format, container, job)


def key_read(read_at, size: int, source_format: str, container: str, job: str) -> ResumeKey:
    """The key of an upload of a source of ``size`` bytes read with ``read_at(offset, length)``: a local file, or
    the file on a share that a conversion reads in place (``RemoteReader.read_at``)."""
    first = read_at(0, min(FINGERPRINT, size))
    last = read_at(max(0, size - FINGERPRINT), min(FINGERPRINT, size))
    return ResumeKey(job=job, source_size=size, source_format=source_format, first=hashlib.sha256(first).hexdigest(),
                     last=hashlib.sha256(last).hexdigest(), container=container)


def upload_options(key: ResumeKey, enabled: bool) -> dict:
    """``SmbShare.upload``'s resume arguments: the key of this attempt, and whether to ignore an earlier one."""
    return {"resume": key, "start_over": not enabled}


def plan_facts(share, remote_name: str, key: ResumeKey, enabled: bool) -> dict:
    """What a plan says of an earlier attempt at ``remote_name``: whether there is one and whose (``earlier``), the
    data its partial file holds (``partialAllocated``, free space to the upload) and whether this one resumes it."""
    return survey_facts(share.survey(remote_name), key, enabled)


def survey_facts(survey, key: ResumeKey, enabled: bool) -> dict:
    """``plan_facts`` from an ``SmbShare.survey`` the plan made anyway."""
    there, recorded = survey.stale, survey.recorded.key == key
    if not there and not recorded:
        earlier = "none"
    else:
        earlier = "same_job" if recorded else "other_job"
    return {"enabled": enabled, "earlier": earlier, "partialAllocated": there, "resumes": enabled and recorded}


def plan_lines(found: dict | None, remote_name: str) -> list[str]:
    """The line a plan of an upload of ``remote_name`` prints about its ``plan_facts`` (none when nothing is there)."""
    found = found or {"earlier": "none"}
    partial = remote_name + PARTIAL_SUFFIX
    there = human_size(found.get("partialAllocated") or 0)
    if found["earlier"] == "none":
        return []
    if found["resumes"]:
        return [f"resumes {partial} of an earlier attempt: {there} there, read back and checked as the rest is sent"]
    why = "resume is off" if not found["enabled"] else "it is not this job's or this source's"
    return [f"starts over: {partial} ({there}) is replaced ({why})"]


def record_name(partial: str) -> str:
    return partial + RECORD_SUFFIX


@dataclass(frozen=True)
class Recorded:
    """An earlier attempt's record as read: whether a file is there, and the key it holds (None when it holds
    none). ``UNKNOWN``: not read, so it may be there."""
    present: bool
    key: ResumeKey | None = None
    UNKNOWN: ClassVar["Recorded"]


Recorded.UNKNOWN = Recorded(present=True)


# ---------------------------------------------------------------- ranges

def merged(ranges) -> list[tuple[int, int]]:
    """(start, end) ranges sorted, overlapping and touching ones joined."""
    out: list[list[int]] = []
    for start, end in sorted(ranges):
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(start, end) for start, end in out]


def minus(ranges: list[tuple[int, int]], taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``ranges`` outside ``taken`` (both merged)."""
    out, i = [], 0
    for start, end in ranges:
        at = start
        while i < len(taken) and taken[i][1] <= at:
            i += 1
        j = i
        while j < len(taken) and taken[j][0] < end:
            if taken[j][0] > at:
                out.append((at, taken[j][0]))
            at = max(at, taken[j][1])
            j += 1
        if at < end:
            out.append((at, end))
    return out


# ---------------------------------------------------------------- checking what is there

@dataclass
class EarlierAttempt:
    """The data an earlier attempt left in the partial file, and what this attempt made of it so far.

    ``allocated``: the file's data ranges when this attempt began (merged, within its end of file). A piece this
    attempt would write is checked when it lies inside the file and overlaps them; ``compare`` completes the READ of
    one piece against the bytes it would write, counting it as reused or queueing it in ``rewrites`` (source offset,
    file offset, length), which the uploader sends as it goes. ``covered`` collects every range this attempt wrote
    or found in place."""
    allocated: list[tuple[int, int]]
    end_of_file: int
    rewrites: deque = field(default_factory=deque)
    covered: list[tuple[int, int]] = field(default_factory=list)
    reused: int = 0
    checked: int = 0

    @property
    def there(self) -> int:
        return sum(end - start for start, end in self.allocated)

    def overlaps(self, at: int, length: int) -> bool:
        i = bisect.bisect_right(self.allocated, (at + length,)) - 1
        return i >= 0 and self.allocated[i][1] > at

    def checkable(self, at: int, length: int) -> bool:
        return at + length <= self.end_of_file and self.overlaps(at, length)

    def wrote(self, at: int, length: int) -> None:
        self.covered.append((at, at + length))

    def compare(self, source_offset: int, at: int, length: int, expected: bytes, response) -> None:
        data = unpack(SMB2ReadResponse, response)["buffer"].get_value()
        self.checked += len(data)
        if data == expected:
            self.reused += length
            self.wrote(at, length)
        else:
            self.rewrites.append((source_offset, at, length))

    def stale(self, size: int) -> list[tuple[int, int]]:
        """The old data this attempt neither wrote nor found in place, within the new file's ``size``."""
        return minus([(s, min(e, size)) for s, e in self.allocated if s < size], merged(self.covered))


# ---------------------------------------------------------------- the share's side

class ResumingShare(ShareSession):
    """The requests resuming needs (``SmbShare`` is one): the record, the data ranges of the partial file, and the
    pieces checked, rewritten and zeroed while an upload streams."""

    def resumable(self, remote_name: str, key: ResumeKey) -> bool:
        """Whether an upload of ``remote_name`` with ``key`` would resume an earlier attempt (its record is there
        with the same key); what it will reuse is known only once read back."""
        return self._recorded_key(record_name(self._full(remote_name) + PARTIAL_SUFFIX)) == key

    def _fsctl_step(self, handle: Open, code: int, data: bytes = b"", output: int = 0) -> Step:
        request = SMB2IOCTLRequest()
        request["ctl_code"] = code
        request["file_id"] = handle.file_id
        request["max_output_response"] = output
        request["flags"] = IOCTLFlags.SMB2_0_IOCTL_IS_FSCTL
        request["buffer"] = data
        return request, lambda sent: unpack(SMB2IOCTLResponse, self._connection.receive(sent))

    def _fsctl(self, handle: Open, code: int, data: bytes = b"", output: int = 0) -> bytes:
        outcomes = Compound(handle, [self._fsctl_step(handle, code, data, output)]).outcomes().raise_failure()
        return outcomes[0]["buffer"].get_value()

    def _recorded_key(self, record: str) -> ResumeKey | None:
        """The key in an earlier attempt's record (None when there is none, or it is not one)."""
        with self._failures("reading the resume record", record):
            return self._begin_record(record)().key

    def _begin_record(self, record: str) -> Callable[[], Recorded]:
        """Send an open, a read and a close of the record as one compound; the function returned receives it."""
        handle = self._handle(record)
        compound = Compound(handle, [self._create(handle, FILE_READ, options=CreateOptions.FILE_NON_DIRECTORY_FILE),
                                     handle.read(0, MAX_RECORD, send=False), handle.close(send=False)])

        def recorded() -> Recorded:
            outcomes = compound.outcomes()
            if not outcomes.succeeded(0):
                if outcomes[0].status in NOT_FOUND_STATUSES:
                    return Recorded(present=False)
                raise outcomes[0]
            if not outcomes.succeeded(1):
                if outcomes[1].status != NtStatus.STATUS_END_OF_FILE:
                    raise outcomes[1]
                return Recorded(present=True)                   # an empty file
            return Recorded(present=True, key=ResumeKey.from_record(outcomes[1]))
        return recorded

    def _begin_write_record(self, record: str, key: ResumeKey) -> Callable[[], None]:
        """Whole or absent: written to ``.new``, then renamed over the record -- one compound; the function
        returned receives it."""
        handle = self._handle(record + ".new")
        compound = Compound(handle, [
            self._create(handle, FILE_WRITE, disposition=CreateDisposition.FILE_OVERWRITE_IF,
                         options=CreateOptions.FILE_NON_DIRECTORY_FILE),
            handle.write(key.record(), 0, send=False),
            set_info(handle, self._rename_info(record, overwrite=True)),
            handle.close(send=False)])

        def written() -> None:
            with self._failures("writing the resume record", record):
                compound.outcomes().raise_failure()
        return written

    def _forget(self, record: str) -> None:
        self._begin_delete(record)()

    def _begin_delete(self, full: str) -> Callable[[], bool]:
        """Send a delete of ``full`` (an open to delete on close, and the close); the function returned receives
        it: True when nothing is left there. Quiet: a failure is logged, not raised."""
        try:
            handle = self._handle(full)
            compound = Compound(handle, [self._create(handle, DELETE, options=CreateOptions.FILE_DELETE_ON_CLOSE),
                                         handle.close(send=False)])
        except (SMBException, OSError, ValueError) as exc:
            return functools.partial(self._not_deleted, full, exc)

        def deleted() -> bool:
            try:
                failure = compound.outcomes().failure()
            except (SMBException, OSError, ValueError) as exc:
                return self._not_deleted(full, exc)
            if failure is not None and failure.status not in NOT_FOUND_STATUSES:
                return self._not_deleted(full, failure)
            return True
        return deleted

    def _not_deleted(self, full: str, exc: BaseException) -> bool:
        log.warning("could not remove %s on %s: %s", full, self.where, reason(exc))
        return False

    def _earlier_attempt(self, handle: Open) -> EarlierAttempt:
        size = handle.end_of_file
        ranges = [(start, min(start + length, size)) for start, length in self._allocated_ranges(handle, size)]
        return EarlierAttempt(merged(ranges), size)

    def _allocated_ranges(self, handle: Open, size: int) -> list[tuple[int, int]]:
        """(offset, length) of the file's data, from the server; all of it when the server cannot say."""
        found, start = [], 0
        while start < size:
            try:
                data = self._fsctl(handle, FSCTL_QUERY_ALLOCATED_RANGES, RANGE.pack(start, size - start),
                                   RANGES_PER_QUERY * RANGE.size)
            except SMBResponseException as exc:
                log.info("%s cannot list a file's allocated ranges (%s): all of it is checked", self.where,
                         reason(exc))
                return [(0, size)]
            ranges = [RANGE.unpack_from(data, at) for at in range(0, len(data) - RANGE.size + 1, RANGE.size)]
            found += ranges
            if len(ranges) < RANGES_PER_QUERY:
                break
            start = ranges[-1][0] + ranges[-1][1]
        return found

    def _zero(self, handle: Open, start: int, end: int) -> bool:
        """Make ``start..end`` read as zeros without sending them; False when the server cannot."""
        try:
            self._fsctl(handle, FSCTL_SET_ZERO_DATA, RANGE.pack(start, end))
        except SMBResponseException as exc:
            if exc.status not in SPARSE_UNSUPPORTED:
                raise
            return False
        return True

    def _check_pieces(self, earlier: EarlierAttempt, writer, pipeline: Pipeline, handle: Open, offset: int,
                      at: int, length: int) -> None:
        """Read back what the earlier attempt left where the chunk goes, piece by piece; ``earlier.compare``
        judges each piece when its READ completes, and pieces outside its data are queued to be written."""
        payload = writer.payload(length)
        for start in range(0, length, self._chunk):
            piece = min(self._chunk, length - start)
            if not earlier.checkable(at + start, piece):
                earlier.rewrites.append((offset + start, at + start, piece))
                continue
            expected = bytes(payload[start:start + piece])          # the frame is reused before the READ is back
            pipeline.make_room(piece)
            request, _ = handle.read(at + start, piece, send=False)
            pipeline.add(self._send(request), offset + start + piece,
                         functools.partial(earlier.compare, offset + start, at + start, piece, expected))

    def _rewrite(self, earlier: EarlierAttempt, writer, pipeline: Pipeline, fd: int, position: int) -> int:
        """Send the pieces found missing or different so far; returns the bytes sent."""
        sent = 0
        while earlier.rewrites:
            source_offset, at, length = earlier.rewrites.popleft()
            if writer.read(fd, source_offset, length) != length:
                raise TransferFailed(f"the local file shrank while uploading it (short read at {source_offset})")
            pipeline.make_room(length)
            pipeline.add(writer.send(at, length), position, functools.partial(check_written, at, length))
            earlier.wrote(at, length)
            sent += length
        return sent

    def _settle(self, earlier: EarlierAttempt, writer, pipeline: Pipeline, handle: Open, fd: int, size: int,
                file_size: int) -> int:
        """After the last chunk: every check completed, every piece that failed one written, and the earlier
        attempt's data that this one did not write zeroed. Returns the bytes sent."""
        sent = 0
        pipeline.drain()
        while earlier.rewrites:
            sent += self._rewrite(earlier, writer, pipeline, fd, size)
            pipeline.drain()
        for start, end in earlier.stale(file_size):
            if self._zero(handle, start, end):
                continue
            for at, length in chunks([(start, end - start)], self._write_chunk):
                writer.load(zeros(length))
                pipeline.make_room(length)
                pipeline.add(writer.send(at, length), size, functools.partial(check_written, at, length))
                sent += length
        return sent
