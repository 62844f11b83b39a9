"""The NTFS dirty-flag reader against a volume made by mkntfs (no appliance: the sample image's raw bytes)."""
from __future__ import annotations

import struct

import pytest

from ce import disks, ntfs
from ce.errors import GuestError


def volume_reader(path, start):
    def read_at(offset, size):
        with open(path, "rb") as f:
            f.seek(start + offset)
            return f.read(size)
    return read_at


@pytest.fixture(scope="module")
def raw_volumes(samples, tmp_path_factory):
    """(clean, dirty) raw copies of two sample disks and the byte offset of their Windows volume."""
    out = tmp_path_factory.mktemp("ntfs")
    raws = []
    for name in ("win2019-vda2203-pvs", "bad-dirty-ntfs"):
        spec = samples[name]
        raw = out / f"{name}.raw"
        disks.convert(str(spec.path), str(raw), "raw", src_fmt=spec.format)
        raws.append(raw)
    return raws, (1 + 32 + 16) << 20      # ESP 32 MiB and MSR 16 MiB after the first MiB


def test_clean_and_dirty_volumes_are_told_apart(raw_volumes):
    (clean, dirty), start = raw_volumes
    assert ntfs.volume_is_dirty(volume_reader(clean, start)) is False
    assert ntfs.volume_is_dirty(volume_reader(dirty, start)) is True


def test_flag_is_found_in_both_mft_copies(raw_volumes):
    (_, dirty), start = raw_volumes
    read_at = volume_reader(dirty, start)
    offsets = ntfs.volume_flag_offsets(read_at)
    assert len(set(offsets)) == 2
    assert all(struct.unpack("<H", read_at(o, 2))[0] & ntfs.VOLUME_IS_DIRTY for o in offsets)


def test_non_ntfs_is_refused(raw_volumes):
    (clean, _), _ = raw_volumes
    with pytest.raises(GuestError, match="not an NTFS boot sector"):
        ntfs.volume_flag_offsets(volume_reader(clean, 1 << 20))    # the FAT ESP
