"""ce.hashing's loop (issue 18, item 2): digests equal to md5sum's and sha256sum's (independent tools) for files
whose sizes are not multiples of the read buffer, sparse files, each algorithm alone and both; progress, cancel,
and a file that shrinks while it is read."""
from __future__ import annotations

import hashlib
import os
import subprocess
import threading

import pytest

from ce import hashing
from ce.errors import Canceled, DiskUnreadable

MiB = 1 << 20
BLOCK = hashing.BLOCK
SETS = (("md5",), ("sha256",), ("md5", "sha256"), ("sha256", "md5"))
TOOLS = {"md5": "md5sum", "sha256": "sha256sum"}


def tool_digests(path) -> dict[str, str]:
    return {name: subprocess.run([tool, str(path)], check=True, capture_output=True, text=True).stdout.split()[0]
            for name, tool in TOOLS.items()}


def written(path, size: int):
    return written_bytes(path, os.urandom(size))


def written_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def test_the_buffer_is_not_a_multiple_of_the_sizes_below():
    assert BLOCK % 4096 == 0 and BLOCK > 4096             # else the sizes in the next tests test nothing


@pytest.mark.parametrize("size", [0, 1, 511, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 4095, 5 * MiB + 7])
def test_file_hashes_match_the_coreutils_tools(tmp_path, size):
    path = written(tmp_path / "data.bin", size)
    expected = tool_digests(path)
    for algorithms in SETS:
        digest = hashing.hash_file(path, algorithms)
        assert digest.hashes == {name: expected[name] for name in algorithms}, (size, algorithms)
        assert list(digest.hashes) == list(algorithms) and digest.size == size


@pytest.mark.parametrize("size", [BLOCK - 512, BLOCK + 512, 3 * MiB + 1536])
def test_disk_contents_hash_matches_the_tools_on_a_raw_disk(tmp_path, size):
    path = written(tmp_path / "disk.raw", size)
    expected = tool_digests(path)
    for algorithms in SETS:
        assert hashing.hash_disk(path, algorithms=algorithms).hashes == {n: expected[n] for n in algorithms}


def test_holes_hash_as_zeros(tmp_path):
    """A sparse file: a hole first, data across a block boundary, a hole between, a trailing hole; the size is no
    multiple of the buffer. md5sum reads the holes; ce skips them."""
    path = tmp_path / "sparse.raw"
    size = 4 * BLOCK + 3 * 512
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (BLOCK + BLOCK // 2, 3 * BLOCK - 4096):
            f.seek(offset)
            f.write(os.urandom(BLOCK // 2 + 4096))
    expected = tool_digests(path)
    assert hashing.hash_disk(path).hashes == expected
    assert hashing.hash_file(path, ("sha256", "md5")).hashes == {"sha256": expected["sha256"], "md5": expected["md5"]}


def test_progress_reaches_the_total_in_steps(tmp_path):
    size = 3 * hashing.PROGRESS_STEP + 12345
    path = written(tmp_path / "data.bin", size)
    for algorithms in (("md5",), ("md5", "sha256")):
        seen: list[tuple[int, int]] = []
        hashing.hash_file(path, algorithms, progress=lambda done, total: seen.append((done, total)))
        assert seen[-1] == (size, size) and {total for _, total in seen} == {size}
        done = [d for d, _ in seen]
        assert done == sorted(set(done)) and len(done) == 4          # every PROGRESS_STEP, then the end
        assert all(b - a <= hashing.PROGRESS_STEP + BLOCK for a, b in zip([0, *done], done))


@pytest.mark.parametrize("algorithms", [("md5",), ("md5", "sha256")])
def test_cancel_stops_the_hashing(tmp_path, algorithms):
    path = written(tmp_path / "data.bin", 2 * hashing.PROGRESS_STEP + 1)
    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        stop.set()
    with pytest.raises(Canceled):
        hashing.hash_file(path, algorithms, progress=progress, cancel=stop)
    assert seen == [hashing.PROGRESS_STEP]                            # stopped at the next block, not the end
    with pytest.raises(Canceled):
        hashing.hash_disk(path, algorithms=algorithms, cancel=lambda: True)


def test_a_file_that_shrinks_while_read_is_an_error(tmp_path):
    path = written(tmp_path / "data.bin", 4 * BLOCK)
    blocks = hashing.file_blocks(str(path), 4 * BLOCK)
    next(blocks)
    os.truncate(path, BLOCK + 100)
    with pytest.raises(DiskUnreadable, match="shrank while it was being read"):
        list(blocks)


def test_blocks_stay_unchanged_until_the_one_after_the_next(tmp_path):
    """What lets a hasher thread read a block while the next one is read."""
    data = os.urandom(3 * BLOCK)
    blocks = hashing.file_blocks(str(written_bytes(tmp_path / "data.bin", data)), len(data))
    first, second = next(blocks), next(blocks)
    assert bytes(first) == data[:BLOCK] and bytes(second) == data[BLOCK:2 * BLOCK]


def test_remote_reads_and_the_export_hasher_agree_with_the_tools(tmp_path):
    size = 2 * hashing.REMOTE_CHUNK + 3
    path = written(tmp_path / "data.bin", size)
    expected = tool_digests(path)
    with open(path, "rb") as f:
        def read_at(offset, length):
            return os.pread(f.fileno(), length, offset)
        assert hashing.hash_remote_file(read_at, size, "remote").hashes == expected
    data = path.read_bytes()
    with hashing.ContentHasher("disk", size + 1000) as hasher:       # chunks with gaps: the gaps are zeros
        hasher.feed(0, data[:1000])
        hasher.feed(5000, data[5000:size])
        result = hasher.finish()
    padded = data[:1000] + bytes(4000) + data[5000:] + bytes(1000)
    assert result.hashes == {"md5": hashlib.md5(padded).hexdigest(), "sha256": hashlib.sha256(padded).hexdigest()}


def test_the_hash_step_hashes_what_it_planned(tmp_path):
    """The step's apply reuses its plan's probe: a raw disk is hashed as the plan found it (no second probe), a
    disk that changed size in between is refused, and a fixed VHD (probed as raw by qemu-img) is still hashed as
    its contents, not its file."""
    from ce.errors import ImageChangedSincePlan
    from ce.step import StepContext
    from steps import hash as hash_step
    raw = written(tmp_path / "disk.raw", 3 * MiB + 512)
    expected = tool_digests(raw)
    params = hash_step.Params(disk=str(raw))
    planned = hash_step.plan(params, StepContext())
    assert hash_step.apply(params, planned, StepContext()).facts["hashes"] == expected
    vhd = tmp_path / "disk.vhd"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on", str(raw),
                    str(vhd)], check=True)
    vhd_params = hash_step.Params(disk=str(vhd))
    vhd_plan = hash_step.plan(vhd_params, StepContext())
    assert vhd_plan.facts["format"] == "vhd"
    assert hash_step.apply(vhd_params, vhd_plan, StepContext()).facts["hashes"] == expected
    with open(raw, "ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(ImageChangedSincePlan, match="changed size since the plan"):
        hash_step.apply(params, planned, StepContext())
