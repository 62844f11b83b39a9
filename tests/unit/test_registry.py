"""ce.registry against real hivex, with regipy as the independent second reader, and one libguestfs appliance
for the commit into an NTFS image."""
from __future__ import annotations

import gc
import hashlib
import os
import struct
import sys

import pytest
from regipy.registry import RegistryHive

from ce.errors import HiveCommitFailed, HiveCorrupt, HiveDirty, HiveMissing, RegistryError
from ce.registry import (
    Change, Hive, RegistryKeyMissing, RegType, RegValue, UnsupportedEdit, check_header, cleanup_stale,
    commit_hive, create_empty_hive, current_control_set, decode_value, download_hive, encode_value,
    header_checksum, verify_changes,
)

ROUND_TRIPS = [
    (RegType.SZ, "Windows 10 Pro"),
    (RegType.SZ, ""),
    (RegType.SZ, "Ünïcødé 日本語 🎉"),
    (RegType.EXPAND_SZ, "%SystemRoot%\\System32\\drivers"),
    (RegType.LINK, "\\Registry\\Machine\\System\\ControlSet001"),
    (RegType.MULTI_SZ, ["ctrl1.example.com", "ctrl2.example.com"]),
    (RegType.MULTI_SZ, []),
    (RegType.MULTI_SZ, ["ü", "日本"]),
    (RegType.DWORD, 0),
    (RegType.DWORD, 0xFFFFFFFF),
    (RegType.DWORD_BE, 0x12345678),
    (RegType.QWORD, 0),
    (RegType.QWORD, 2**64 - 1),
    (RegType.BINARY, b""),
    (RegType.BINARY, bytes(range(256))),
    (RegType.NONE, b"\x01\x02"),
    (RegType.RESOURCE_LIST, b"\x01\x00\x00\x00"),
]


# ---------------------------------------------------------------- helpers

def new_hive(path, values=()) -> str:
    """An empty hive with ``values`` [(key, name, type, data)] written and committed by hivex."""
    create_empty_hive(path)
    if values:
        with Hive.open(path, write=True) as hive:
            for key, name, type, data in values:
                hive.set(key, name, type, data)
            hive.commit(path)
    return str(path)


def patch_header(path, offset: int, value: int, fix_checksum: bool = True) -> None:
    with open(path, "r+b") as f:
        block = bytearray(f.read(4096))
        struct.pack_into("<I", block, offset, value)
        if fix_checksum:
            struct.pack_into("<I", block, 0x1FC, header_checksum(block))
        f.seek(0)
        f.write(block)


def overwrite(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def regipy_values(path, key: str) -> dict:
    node = RegistryHive(str(path)).get_key("\\" + key)
    return {v.name: (v.value_type, v.value) for v in node.get_values(trim_values=False)}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- typed values

@pytest.mark.parametrize("type,data", ROUND_TRIPS, ids=lambda x: repr(x)[:30])
def test_encode_decode_round_trip(type, data):
    assert decode_value(type, encode_value(type, data)) == data


def test_encodings_follow_the_registry_layout():
    assert encode_value(RegType.SZ, "ab") == "ab\0".encode("utf-16-le")
    assert encode_value(RegType.SZ, "") == b"\0\0"
    assert encode_value(RegType.LINK, "ab") == "ab".encode("utf-16-le")
    assert encode_value(RegType.MULTI_SZ, ["a", "bc"]) == "a\0bc\0\0".encode("utf-16-le")
    assert encode_value(RegType.MULTI_SZ, []) == b"\0\0"
    assert encode_value(RegType.DWORD, 0x01020304) == b"\x04\x03\x02\x01"
    assert encode_value(RegType.DWORD_BE, 0x01020304) == b"\x01\x02\x03\x04"
    assert encode_value(RegType.QWORD, 1) == b"\x01" + b"\0" * 7


@pytest.mark.parametrize("type,raw,expected", [
    (RegType.SZ, "abc".encode("utf-16-le"), "abc"),                               # no terminator
    (RegType.SZ, "abc\0".encode("utf-16-le") + b"\x00", "abc"),                   # odd byte count
    (RegType.SZ, "abc\0GARBAGE\0".encode("utf-16-le"), "abc"),                    # junk after the NUL
    (RegType.SZ, b"", ""),
    (RegType.EXPAND_SZ, "x".encode("utf-16-le") + b"\xff", "x"),
    (RegType.MULTI_SZ, "a\0b\0".encode("utf-16-le"), ["a", "b"]),               # no final empty string
    (RegType.MULTI_SZ, "a\0b".encode("utf-16-le"), ["a", "b"]),                 # no terminator at all
    (RegType.MULTI_SZ, "a\0\0junk\0\0".encode("utf-16-le"), ["a"]),             # the empty string ends it
    (RegType.MULTI_SZ, b"", []),
    (RegType.DWORD, b"\x05", 5),                                                  # short
    (RegType.DWORD, b"\x05\x00\x00\x00\xff", 5),                                  # long
    (RegType.QWORD, b"\x01\x00\x00\x00", 1),
    (0x20000, b"\x01", b"\x01"),                                                  # unknown type: bytes
])
def test_decoding_forgives_real_world_junk(type, raw, expected):
    assert decode_value(type, raw) == expected


@pytest.mark.parametrize("type,data", [
    (RegType.DWORD, -1), (RegType.DWORD, 2**32), (RegType.DWORD, "5"), (RegType.DWORD, True),
    (RegType.QWORD, 2**64), (RegType.DWORD_BE, 1.0),
    (RegType.SZ, b"bytes"), (RegType.SZ, "a\0b"), (RegType.SZ, "\ud800"), (RegType.EXPAND_SZ, None),
    (RegType.MULTI_SZ, "not a list"), (RegType.MULTI_SZ, ["a", ""]), (RegType.MULTI_SZ, ["a", 1]),
    (RegType.BINARY, "text"), (2**32, b""), (-1, b""),
])
def test_encode_rejects_data_that_does_not_fit(type, data):
    with pytest.raises(ValueError):
        encode_value(type, data)


def test_value_json():
    assert RegValue(RegType.SZ, "x").to_json() == {"type": "REG_SZ", "value": "x"}
    assert RegValue(RegType.BINARY, b"\x01\xff").to_json() == {"type": "REG_BINARY", "value": "01ff"}
    assert RegValue(RegType.DWORD_BE, 7).to_json() == {"type": "REG_DWORD_BIG_ENDIAN", "value": 7}
    assert RegValue(RegType.MULTI_SZ, ["a"]).to_json() == {"type": "REG_MULTI_SZ", "value": ["a"]}
    assert RegValue.from_raw(0x20000, b"\x02").to_json() == {"type": "0x20000", "value": "02"}


# ---------------------------------------------------------------- empty hive

def test_empty_hive_is_valid_for_hivex_and_regipy(tmp_path):
    path = tmp_path / "EMPTY"
    create_empty_hive(path, root_name="CMI-CreateHive{TEST}")
    assert path.stat().st_size == 8192
    header = check_header(path)
    assert (header.primary_sequence, header.secondary_sequence, header.version) == (1, 1, "1.5")
    with Hive.open(path) as hive:
        assert hive.subkeys("") == [] and hive.values("") == {}
        assert hive.check_structure() == (1, 0)
    regipy = RegistryHive(str(path))
    assert regipy.root.name == "CMI-CreateHive{TEST}"
    security = regipy.root.get_security_key_info()
    assert (security["owner"], security["group"]) == ("S-1-5-32-544", "S-1-5-18")
    assert [ace["sid"] for ace in security["dacl"]] == ["S-1-1-0", "S-1-5-18", "S-1-5-32-544"]


def test_empty_hive_rejects_unstorable_root_names(tmp_path):
    for name in ("", "a\\b", "日本", "x" * 256):
        with pytest.raises(ValueError):
            create_empty_hive(tmp_path / "H", root_name=name)


# ---------------------------------------------------------------- Hive editing

def test_every_type_round_trips_through_a_committed_hive(tmp_path):
    values = [("Types", f"v{i}", type, data) for i, (type, data) in enumerate(ROUND_TRIPS)]
    path = new_hive(tmp_path / "TYPES", values + [("Types", "", RegType.SZ, "default value")])
    with Hive.open(path) as hive:
        stored = hive.values("Types")
        for key, name, type, data in values:
            assert hive.get(key, name) == RegValue(type, data)
            assert stored[name] == RegValue(type, data)
        assert hive.get("Types", "") == RegValue(RegType.SZ, "default value")
        assert hive.get_raw("Types", "v0") == (RegType.SZ, encode_value(RegType.SZ, ROUND_TRIPS[0][1]))


def test_regipy_reads_what_hivex_wrote(tmp_path):
    path = new_hive(tmp_path / "CROSS", [
        ("Microsoft\\Windows NT\\CurrentVersion", "ProductName", RegType.SZ, "Windows 10 Enterprise"),
        ("Microsoft\\Windows NT\\CurrentVersion", "CurrentMajorVersionNumber", RegType.DWORD, 10),
        ("Microsoft\\Windows NT\\CurrentVersion", "InstallDate", RegType.QWORD, 2**64 - 1),
        ("Microsoft\\Windows NT\\CurrentVersion", "PathName", RegType.EXPAND_SZ, "%SystemRoot%"),
        ("Microsoft\\Windows NT\\CurrentVersion", "Controllers", RegType.MULTI_SZ, ["a.example", "b.example"]),
        ("Microsoft\\Windows NT\\CurrentVersion", "Blob", RegType.BINARY, bytes(range(40))),
        ("Microsoft\\Windows NT\\CurrentVersion", "", RegType.SZ, "default"),
        ("Unicode\\日本語", "名前", RegType.SZ, "値 🎉"),
    ])
    assert regipy_values(path, "Microsoft\\Windows NT\\CurrentVersion") == {
        "ProductName": ("REG_SZ", "Windows 10 Enterprise"),
        "CurrentMajorVersionNumber": ("REG_DWORD", 10),
        "InstallDate": ("REG_QWORD", 2**64 - 1),
        "PathName": ("REG_EXPAND_SZ", "%SystemRoot%"),
        "Controllers": ("REG_MULTI_SZ", ["a.example", "b.example"]),
        "Blob": ("REG_BINARY", bytes(range(40))),
        "(default)": ("REG_SZ", "default"),
    }
    assert regipy_values(path, "Unicode\\日本語") == {"名前": ("REG_SZ", "値 🎉")}


def test_paths_and_names_are_case_insensitive(tmp_path):
    path = new_hive(tmp_path / "CASE")
    with Hive.open(path, write=True) as hive:
        hive.set("Microsoft\\Windows NT\\CurrentVersion", "ProductName", RegType.SZ, "old")
        hive.set("MICROSOFT\\windows nt\\CurrentVersion", "PRODUCTNAME", RegType.SZ, "new")
        hive.set("Äpfel", "Größe", RegType.DWORD, 1)                 # hivex itself folds ASCII only
        hive.set("äPFEL", "GRÖßE", RegType.DWORD, 2)
        hive.set("Äpfel", "GRÖSSE", RegType.DWORD, 3)                # Windows does not fold ß to SS
        assert sorted(hive.subkeys("")) == ["Microsoft", "Äpfel"]
        assert hive.values("microsoft\\WINDOWS NT\\currentversion") == {"ProductName": RegValue(RegType.SZ, "new")}
        assert hive.get("\\Microsoft\\Windows NT\\CurrentVersion\\", "productname").data == "new"
        assert hive.get("äpfel", "größe") == RegValue(RegType.DWORD, 2)
        assert hive.values("ÄPFEL") == {"Größe": RegValue(RegType.DWORD, 2), "GRÖSSE": RegValue(RegType.DWORD, 3)}


def test_set_creates_intermediate_keys_and_keeps_other_values(tmp_path):
    path = new_hive(tmp_path / "SET", [("A", "keep", RegType.DWORD, 7)])
    with Hive.open(path, write=True) as hive:
        hive.set("A\\B\\C\\D", "x", RegType.SZ, "deep")
        hive.set("A", "added", RegType.SZ, "y")
        assert hive.subkeys("A\\B") == ["C"]
        assert hive.key_exists("a\\b\\c\\d")
        assert hive.values("A") == {"keep": RegValue(RegType.DWORD, 7), "added": RegValue(RegType.SZ, "y")}


def test_missing_keys_and_values(tmp_path):
    path = new_hive(tmp_path / "MISSING", [("A", "x", RegType.DWORD, 1)])
    with Hive.open(path) as hive:
        assert hive.get("A", "nope") is None
        assert hive.get("Nope\\Deeper", "x") is None
        assert hive.get("A", "") is None
        assert hive.get_data("A", "nope", default=42) == 42
        assert hive.get_data("A", "x") == 1
        assert not hive.key_exists("Nope")
        with pytest.raises(RegistryKeyMissing, match="Nope"):
            hive.subkeys("Nope")
        with pytest.raises(RegistryKeyMissing):
            hive.values("A\\Nope")


def test_delete_value_and_key(tmp_path):
    path = new_hive(tmp_path / "DELETE", [
        ("A", "x", RegType.DWORD, 1), ("A", "y", RegType.SZ, "y"), ("A", "", RegType.SZ, "default"),
        ("A\\B\\C", "z", RegType.DWORD, 3), ("Other", "o", RegType.DWORD, 4),
    ])
    with Hive.open(path, write=True) as hive:
        assert hive.delete_value("a", "X")
        assert hive.delete_value("A", "")
        assert not hive.delete_value("A", "x")
        assert not hive.delete_value("Nope", "x")
        assert hive.delete_key("a\\b")
        assert not hive.delete_key("A\\B")
        with pytest.raises(ValueError):
            hive.delete_key("\\")
        hive.commit(path)
    with Hive.open(path) as hive:
        assert hive.values("A") == {"y": RegValue(RegType.SZ, "y")}
        assert hive.subkeys("A") == []
        assert hive.get_data("Other", "o") == 4
    assert regipy_values(path, "A") == {"y": ("REG_SZ", "y")}


def test_read_only_hive_refuses_edits(tmp_path):
    path = new_hive(tmp_path / "RO", [("A", "x", RegType.DWORD, 1)])
    with Hive.open(path) as hive:
        for edit in (lambda: hive.set("A", "y", RegType.DWORD, 2), lambda: hive.delete_value("A", "x"),
                     lambda: hive.delete_key("A"), lambda: hive.commit(tmp_path / "out")):
            with pytest.raises(RegistryError, match="read-only"):
                edit()


def test_values_hivex_cannot_store_for_windows_are_refused(tmp_path):
    path = new_hive(tmp_path / "BIG")
    with Hive.open(path, write=True) as hive:
        hive.set("A", "fits", RegType.BINARY, b"\x01" * 16344)
        with pytest.raises(UnsupportedEdit, match="16345 bytes"):
            hive.set("A", "too big", RegType.BINARY, b"\x01" * 16345)


def test_keys_holding_big_values_are_not_rewritten(tmp_path):
    # A format-1.3 hive may hold a big value in one cell; relabelled 1.5 it stands for a key whose value
    # Windows stores as big data ("db"), which hivex would rewrite as one cell on any edit of the key.
    path = tmp_path / "BIGDATA"
    create_empty_hive(path)
    patch_header(path, 24, 3)
    with Hive.open(path, write=True) as hive:
        hive.set("A", "big", RegType.BINARY, b"\x02" * 20000)
        hive.set("A", "small", RegType.DWORD, 0)
        hive.set("A\\Sub", "x", RegType.DWORD, 1)
        hive.commit(path)
    patch_header(path, 24, 5)
    with Hive.open(path, write=True) as hive:
        with pytest.raises(UnsupportedEdit, match="20000-byte value 'big'"):
            hive.set("A", "small", RegType.DWORD, 1)
        with pytest.raises(UnsupportedEdit):
            hive.delete_value("A", "small")
        hive.set("A", "big", RegType.BINARY, b"\x03" * 10)              # replacing the big value itself is fine
        hive.set("A\\Sub", "y", RegType.DWORD, 2)                       # other keys are unaffected
        assert hive.get_data("A", "big") == b"\x03" * 10


def test_current_control_set_follows_select_current(tmp_path):
    path = new_hive(tmp_path / "SYSTEM", [
        ("Select", "Current", RegType.DWORD, 2),
        ("ControlSet001\\Control", "x", RegType.DWORD, 1),
        ("ControlSet002\\Control", "x", RegType.DWORD, 2),
    ])
    with Hive.open(path) as hive:
        assert current_control_set(hive) == "ControlSet002"


def test_current_control_set_explains_what_is_wrong(tmp_path):
    no_select = new_hive(tmp_path / "NOSELECT", [("ControlSet001", "x", RegType.DWORD, 1)])
    dangling = new_hive(tmp_path / "DANGLING", [("Select", "Current", RegType.DWORD, 3),
                                                 ("ControlSet001", "x", RegType.DWORD, 1)])
    with Hive.open(no_select) as hive, pytest.raises(RegistryError, match="Select.Current.*SYSTEM hive"):
        current_control_set(hive)
    with Hive.open(dangling) as hive, pytest.raises(RegistryError, match="ControlSet003, which does not exist"):
        current_control_set(hive)


def test_commit_leaves_a_clean_hive(tmp_path):
    """hivex sets both sequence numbers to old + 1: Windows sees a clean hive and ignores stale .LOG1/.LOG2."""
    path = new_hive(tmp_path / "SEQ")
    patch_header(path, 4, 41)
    patch_header(path, 8, 41)
    with Hive.open(path, write=True) as hive:
        hive.set("A", "x", RegType.DWORD, 1)
        hive.commit(tmp_path / "SEQ.new")
    header = check_header(tmp_path / "SEQ.new")
    assert header.primary_sequence == header.secondary_sequence == 42


def test_verify_changes_replays_the_change_log(tmp_path):
    path = new_hive(tmp_path / "VERIFY", [("Gone\\Child", "x", RegType.DWORD, 1)])
    with Hive.open(path, write=True) as hive:
        hive.set("A", "x", RegType.SZ, "1")
        hive.set("a", "X", RegType.SZ, "2")
        hive.delete_key("Gone")
        hive.set("Gone\\Again", "y", RegType.DWORD, 5)     # recreates Gone, not Gone\Child
        hive.delete_value("A", "nothing")
        hive.commit(tmp_path / "VERIFY.new")
        changes = hive.changes
    with Hive.open(tmp_path / "VERIFY.new") as written:
        assert verify_changes(written, changes) == []
        lies = [Change("set", "A", "x", RegType.SZ, encode_value(RegType.SZ, "3")),
                Change("delete_value", "Gone\\Again", "y"), Change("delete_key", "Gone")]
        problems = verify_changes(written, lies)
    assert len(problems) == 2
    assert "A\\x: expected REG_SZ '3', found REG_SZ '2'" in problems[0]
    assert "Gone: expected deleted" in problems[1]


# ---------------------------------------------------------------- header checks

def test_check_header_reports_header_facts(tmp_path):
    header = check_header(new_hive(tmp_path / "OK", [("A", "x", RegType.DWORD, 1)]))
    assert header.primary_sequence == header.secondary_sequence == 2
    assert header.version == "1.5" and header.root_offset == 0x20


@pytest.mark.parametrize("damage,error,message", [
    (lambda p: p.write_bytes(b"MZ" + b"\0" * 9000), HiveCorrupt, "no 'regf' signature"),
    (lambda p: p.write_bytes(p.read_bytes()[:6000]), HiveCorrupt, "truncated .6000 bytes"),
    (lambda p: p.write_bytes(p.read_bytes()[:4100]), HiveCorrupt, "truncated"),
    (lambda p: patch_header(p, 40, 0x2000), HiveCorrupt, "declares 8192 bytes of hive bins"),
    (lambda p: patch_header(p, 12, 0xDEAD, fix_checksum=False), HiveCorrupt, "checksum mismatch"),
    (lambda p: patch_header(p, 20, 2), HiveCorrupt, "format version 2"),
    (lambda p: patch_header(p, 28, 1), HiveCorrupt, "transaction log"),
    (lambda p: overwrite(p, 0x1000, b"junk"), HiveCorrupt, "no hive bin"),
    (lambda p: patch_header(p, 8, 7), HiveDirty, "sequence numbers 1 and 7 differ.*LOG1"),
])
def test_check_header_refuses_damaged_and_dirty_hives(tmp_path, damage, error, message):
    path = tmp_path / "SOFTWARE"
    create_empty_hive(path)
    damage(path)
    with pytest.raises(error, match=message) as raised:
        check_header(path, label="C:/Windows/System32/config/SOFTWARE")
    assert raised.value.message.startswith("C:/Windows/System32/config/SOFTWARE ")
    with pytest.raises(error):
        Hive.open(path)


def test_check_header_accepts_windows_checksum_remapping(tmp_path):
    path = tmp_path / "H"
    create_empty_hive(path)
    block = bytearray(path.read_bytes()[:4096])
    # Force a XOR of 0, which Windows stores as 1.
    struct.pack_into("<I", block, 48, struct.unpack_from("<I", block, 48)[0] ^ header_checksum(block))
    assert header_checksum(block) == 0
    struct.pack_into("<I", block, 0x1FC, 1)
    path.write_bytes(bytes(block) + path.read_bytes()[4096:])
    check_header(path)


def test_dirty_hive_can_be_read_but_not_edited(tmp_path):
    path = new_hive(tmp_path / "DIRTY", [("A", "x", RegType.DWORD, 1)])
    patch_header(path, 4, 3)
    assert check_header(path, allow_dirty=True).primary_sequence == 3
    with Hive.open(path, allow_dirty=True) as hive:
        assert hive.get_data("A", "x") == 1
    with pytest.raises(ValueError, match="read-only"):
        Hive.open(path, write=True, allow_dirty=True)


def test_missing_hive_file(tmp_path):
    with pytest.raises(HiveMissing, match="NOPE does not exist"):
        Hive.open(tmp_path / "NOPE")


def test_hivex_open_failure_becomes_hive_corrupt_without_noise(tmp_path, monkeypatch):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    path = tmp_path / "BADROOT"
    create_empty_hive(path)
    patch_header(path, 36, 0x800)          # root offset inside the free cell: the header is fine, hivex refuses
    with pytest.raises(HiveCorrupt, match="BADROOT: hivex cannot open it"):
        Hive.open(path)
    gc.collect()
    assert unraisable == []


# ---------------------------------------------------------------- commit into an NTFS image (one appliance)

CONFIG = "/Windows/System32/config"


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    """A ``Guest`` over a fresh 64 MiB NTFS disk mounted read-write at "/"; the tests set the disk up through its
    libguestfs handle, and the code under test gets the ``Guest``."""
    pytest.importorskip("guestfs")
    from ce.guest import Drive, Guest
    disk = tmp_path_factory.mktemp("disk") / "ntfs.img"
    with open(disk, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    session = Guest([Drive(str(disk), "raw", readonly=False)])
    with pytest.MonkeyPatch.context() as env:
        if os.environ.get("CE_GUEST_ACCEL", "tcg") != "kvm":
            env.setenv("CE_GUEST_ACCEL", "tcg")      # nested KVM is broken on the development machine
        session.launch()
    g = session.g
    g.part_disk("/dev/sda", "mbr")
    g.mkfs("ntfs", "/dev/sda1")
    g.mount("/dev/sda1", "/")
    g.mkdir_p(CONFIG)
    yield session
    session.close()


def put_hive(g, local_dir, name: str, values) -> tuple[str, bytes]:
    """A hive at CONFIG/name in the image, with stale transaction logs beside it; returns (path, bytes)."""
    local = new_hive(local_dir / name, values)
    guest_path = f"{CONFIG}/{name}"
    g.upload(local, guest_path)
    for log in (".LOG1", ".LOG2"):
        g.write(guest_path + log, b"stale log")
    return guest_path, open(local, "rb").read()


def give_distinct_permissions(g, guest_path: str) -> bytes:
    """chmod through a 'permissions' mount makes ntfs-3g write a security descriptor unlike its default."""
    g.umount("/")
    g.mount_options("permissions", "/dev/sda1", "/")
    g.chmod(0o600, guest_path)
    g.umount("/")
    g.mount("/dev/sda1", "/")
    return g.lgetxattr(guest_path, "system.ntfs_acl")


def read_guest(g, guest_path: str, local) -> bytes:
    g.download(guest_path, str(local))
    return local.read_bytes()


@pytest.mark.slow
def test_commit_hive_replaces_the_hive_verified_and_backed_up(guest, tmp_path):
    g = guest.g
    guest_path, original = put_hive(g, tmp_path, "SOFTWARE", [
        ("Microsoft\\Windows NT\\CurrentVersion", "ProductName", RegType.SZ, "Windows 10 Pro"),
        ("Citrix\\VirtualDesktopAgent", "ListOfDDCs", RegType.SZ, "old.example"),
    ])
    permissions = give_distinct_permissions(g, guest_path)
    local = download_hive(guest, guest_path, tmp_path)
    assert local.read_bytes() == original
    with Hive.open(local, write=True, label=guest_path) as hive:
        hive.set("Citrix\\VirtualDesktopAgent", "ListOfDDCs", RegType.SZ, "ddc1.example ddc2.example")
        hive.set("Citrix\\VirtualDesktopAgent", "ControllerRegistrarPort", RegType.DWORD, 80)
        hive.delete_value("Microsoft\\Windows NT\\CurrentVersion", "ProductName")
        port_is_80 = lambda written: written.get_data("Citrix\\VirtualDesktopAgent", "ControllerRegistrarPort") == 80
        result = commit_hive(guest, guest_path, hive, expected=port_is_80, backup_stamp="20250101T000000Z")

    assert not local.with_name(local.name + ".ce-new").exists()
    assert result.backup_path == f"{CONFIG}/ce-backup/SOFTWARE.20250101T000000Z" and result.backup_created
    assert result.sha256_before == sha256(original) and result.changes == 3
    assert read_guest(g, result.backup_path, tmp_path / "backup") == original
    committed = read_guest(g, guest_path, tmp_path / "committed")
    assert sha256(committed) == result.sha256_after != result.sha256_before
    header = check_header(tmp_path / "committed")
    assert header.primary_sequence == header.secondary_sequence
    with Hive.open(tmp_path / "committed") as hive:
        assert hive.get_data("Citrix\\VirtualDesktopAgent", "ListOfDDCs") == "ddc1.example ddc2.example"
        assert hive.get("Microsoft\\Windows NT\\CurrentVersion", "ProductName") is None
    assert regipy_values(tmp_path / "committed", "Citrix\\VirtualDesktopAgent") == {
        "ListOfDDCs": ("REG_SZ", "ddc1.example ddc2.example"), "ControllerRegistrarPort": ("REG_DWORD", 80)}
    assert [name for name in g.ls(CONFIG) if name.startswith("SOFTWARE")] == [
        "SOFTWARE", "SOFTWARE.LOG1", "SOFTWARE.LOG2"]                # no .ce-new, no ntfs-3g rename link
    assert g.cat(guest_path + ".LOG1") == "stale log"
    # The backup is the original file itself; the new hive has the permissions ntfs-3g gives new files.
    assert g.lgetxattr(result.backup_path, "system.ntfs_acl") == permissions
    assert g.lgetxattr(guest_path, "system.ntfs_acl") != permissions
    assert len(result.warnings) == 1 and "ntfs-3g gives new files" in result.warnings[0]

    # A second commit in the same job keeps the pristine backup.
    local = download_hive(guest, guest_path, tmp_path)
    with Hive.open(local, write=True) as hive:
        hive.set("Citrix\\VirtualDesktopAgent", "ControllerRegistrarPort", RegType.DWORD, 443)
        again = commit_hive(guest, guest_path, hive, backup_stamp="20250101T000000Z")
    assert not again.backup_created and again.sha256_before == result.sha256_after
    assert again.warnings == ()
    assert read_guest(g, result.backup_path, tmp_path / "backup2") == original
    assert g.ls(f"{CONFIG}/ce-backup") == ["SOFTWARE.20250101T000000Z"]


@pytest.mark.slow
def test_failed_verification_leaves_the_image_untouched(guest, tmp_path):
    g = guest.g
    guest_path, original = put_hive(g, tmp_path, "SYSTEM", [("Select", "Current", RegType.DWORD, 1),
                                                           ("ControlSet001\\Control", "x", RegType.DWORD, 1)])
    local = download_hive(guest, guest_path, tmp_path)

    def expected(hive):
        assert hive.get_data("Select", "Current") == 2, "Select\\Current should be 2"

    with Hive.open(local, write=True) as hive:
        hive.set("Select", "Current", RegType.DWORD, 3)
        with pytest.raises(HiveCommitFailed, match="failed verification.*Current should be 2"):
            commit_hive(guest, guest_path, hive, expected=expected, backup_dir=f"{CONFIG}/sys-backup")
        with pytest.raises(HiveCommitFailed, match="failed the caller's check"):
            commit_hive(guest, guest_path, hive, expected=lambda written: False, backup_dir=f"{CONFIG}/sys-backup")
    assert read_guest(g, guest_path, tmp_path / "after") == original
    assert not g.exists(guest_path + ".ce-new")
    assert not g.exists(f"{CONFIG}/sys-backup")


@pytest.mark.slow
def test_commit_refuses_a_hive_changed_since_download(guest, tmp_path):
    g = guest.g
    guest_path, _ = put_hive(g, tmp_path, "DEFAULT", [("A", "x", RegType.DWORD, 1)])
    local = download_hive(guest, guest_path, tmp_path)
    meanwhile = new_hive(tmp_path / "other", [("A", "x", RegType.DWORD, 2)])
    g.upload(meanwhile, guest_path)
    with Hive.open(local, write=True) as hive:
        hive.set("A", "x", RegType.DWORD, 3)
        with pytest.raises(HiveCommitFailed, match="changed in the image since it was read"):
            commit_hive(guest, guest_path, hive)
    assert read_guest(g, guest_path, tmp_path / "after") == open(meanwhile, "rb").read()
    assert not g.exists(guest_path + ".ce-new")


@pytest.mark.slow
def test_commit_without_changes_touches_nothing(guest, tmp_path):
    g = guest.g
    guest_path, original = put_hive(g, tmp_path, "UNCHANGED", [("A", "x", RegType.DWORD, 1)])
    with Hive.open(download_hive(guest, guest_path, tmp_path), write=True) as hive:
        result = commit_hive(guest, guest_path, hive)
    assert (result.changes, result.backup_path, result.sha256_after) == (0, None, sha256(original))
    assert read_guest(g, guest_path, tmp_path / "after") == original


@pytest.mark.slow
def test_download_of_missing_and_dirty_hives(guest, tmp_path):
    g = guest.g
    with pytest.raises(HiveMissing, match=f"{CONFIG}/SAM does not exist in the image"):
        download_hive(guest, f"{CONFIG}/SAM", tmp_path)
    dirty = tmp_path / "SECURITY"
    create_empty_hive(dirty)
    patch_header(dirty, 8, 9)
    g.upload(str(dirty), f"{CONFIG}/SECURITY")
    local = download_hive(guest, f"{CONFIG}/SECURITY", tmp_path)
    assert local.read_bytes() == dirty.read_bytes()
    with pytest.raises(HiveDirty, match=f"^{CONFIG}/SECURITY was not saved cleanly"):
        Hive.open(local, write=True, label=f"{CONFIG}/SECURITY")


@pytest.mark.slow
def test_stale_files_of_an_interrupted_commit(guest, tmp_path):
    g = guest.g
    guest_path, original = put_hive(g, tmp_path, "COMPONENTS", [("A", "x", RegType.DWORD, 1)])
    g.write(guest_path + ".ce-new", b"half an upload")
    assert download_hive(guest, guest_path, tmp_path).read_bytes() == original
    assert cleanup_stale(guest, guest_path) == [guest_path + ".ce-new"]

    # A crash inside ntfs-3g's rename-over leaves the original only under its temporary link name.
    g.mv(guest_path, guest_path + ".ntfs-3g-0000000001")
    g.write(guest_path + ".ce-new", b"verified new hive")
    assert cleanup_stale(guest, guest_path) == [guest_path, guest_path + ".ce-new"]
    assert read_guest(g, guest_path, tmp_path / "restored") == original
    assert cleanup_stale(guest, guest_path) == []
