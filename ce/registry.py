"""Offline Windows registry hives: typed values, hivex editing, and verified, atomic commits into an image.

Every feature that touches the registry goes through this module, so hivex's quirks are handled once here:

- its Python binding raises ``RuntimeError("Success")`` for a missing value, and a failed ``Hivex()`` prints an
  ``AttributeError`` from ``__del__``; its errors say only ``strerror`` (we check the header ourselves first);
- its name lookups are case-insensitive for ASCII only (Windows folds all of Unicode);
- it cannot create a hive, replay transaction logs, or write big-data (``db``) values: it stores a value larger
  than 16344 bytes in one cell, which Windows (hive format 1.4+) then misreads as a ``db`` record. So ``set`` and
  ``delete_value`` refuse any edit that would make hivex write such a value (see ``_refuse_big_values``).

Paths are backslash-separated, relative to the hive root and case-insensitive; value name ``""`` is the key's
default value.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import posixpath
import struct
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Callable

import hivex
import libhivexmod

from .errors import HiveCommitFailed, HiveCorrupt, HiveDirty, HiveMissing, RegistryError


class RegistryKeyMissing(RegistryError):
    code = "registry_key_missing"


class UnsupportedEdit(RegistryError):
    """An edit hivex would perform in a way Windows cannot read back."""
    code = "registry_unsupported_edit"


# ---------------------------------------------------------------- typed values

class RegType(IntEnum):
    NONE = 0
    SZ = 1
    EXPAND_SZ = 2
    BINARY = 3
    DWORD = 4
    DWORD_BE = 5
    LINK = 6
    MULTI_SZ = 7
    RESOURCE_LIST = 8
    FULL_RESOURCE_DESCRIPTOR = 9
    RESOURCE_REQUIREMENTS_LIST = 10
    QWORD = 11


_STRING_TYPES = (RegType.SZ, RegType.EXPAND_SZ, RegType.LINK)
_JSON_NAMES = {RegType.DWORD_BE: "REG_DWORD_BIG_ENDIAN"}


def reg_type(value: int) -> RegType | int:
    """The RegType for a stored type number; unknown numbers (real hives have some) stay plain ints."""
    try:
        return RegType(value)
    except ValueError:
        return value


def type_name(value: int) -> str:
    t = reg_type(value)
    if isinstance(t, RegType):
        return _JSON_NAMES.get(t, f"REG_{t.name}")
    return f"0x{value:x}"


@dataclass(frozen=True)
class RegValue:
    type: RegType | int
    data: object

    @classmethod
    def from_raw(cls, type: int, raw: bytes) -> RegValue:
        return cls(reg_type(type), decode_value(type, raw))

    def to_json(self) -> dict:
        data = self.data.hex() if isinstance(self.data, bytes) else self.data
        return {"type": type_name(self.type), "value": data}


def encode_value(type: int, data: object) -> bytes:
    """Registry bytes for ``data``; ValueError when the data does not fit the type."""
    t = reg_type(_check_type_number(type))
    if t in (RegType.SZ, RegType.EXPAND_SZ):
        return _encode_string(data, t) + b"\0\0"
    if t == RegType.LINK:      # a symbolic link target is stored without a terminator
        return _encode_string(data, t)
    if t == RegType.MULTI_SZ:
        return _encode_multi_string(data)
    if t == RegType.DWORD:
        return _encode_uint(data, 4, "little", t)
    if t == RegType.DWORD_BE:
        return _encode_uint(data, 4, "big", t)
    if t == RegType.QWORD:
        return _encode_uint(data, 8, "little", t)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"{type_name(t)} data must be bytes, not {data.__class__.__name__}")
    return bytes(data)


def decode_value(type: int, raw: bytes) -> object:
    """Python data for stored bytes, forgiving the junk real hives contain (missing terminators, odd lengths,
    garbage after the first NUL of a string)."""
    t = reg_type(type)
    if t in _STRING_TYPES:
        return _utf16(raw).split("\0", 1)[0]
    if t == RegType.MULTI_SZ:
        return _decode_multi_string(raw)
    if t == RegType.DWORD:
        return int.from_bytes(raw[:4].ljust(4, b"\0"), "little")
    if t == RegType.DWORD_BE:
        return int.from_bytes(raw[:4].ljust(4, b"\0"), "big")
    if t == RegType.QWORD:
        return int.from_bytes(raw[:8].ljust(8, b"\0"), "little")
    return bytes(raw)


def _check_type_number(type: int) -> int:
    if isinstance(type, bool) or not isinstance(type, int) or not 0 <= type <= 0xFFFFFFFF:
        raise ValueError(f"registry type must be an integer 0..0xFFFFFFFF, not {type!r}")
    return type


def _encode_string(data: object, t: RegType) -> bytes:
    if not isinstance(data, str):
        raise ValueError(f"{type_name(t)} data must be str, not {type(data).__name__}")
    if "\0" in data:
        raise ValueError(f"{type_name(t)} data must not contain NUL characters (Windows would cut the string there)")
    try:
        return data.encode("utf-16-le")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{type_name(t)} data is not encodable as UTF-16: {exc}") from None


def _encode_multi_string(data: object) -> bytes:
    if isinstance(data, str) or not isinstance(data, (list, tuple)):
        raise ValueError(f"REG_MULTI_SZ data must be a list of str, not {type(data).__name__}")
    if any(item == "" for item in data):
        raise ValueError("REG_MULTI_SZ data must not contain empty strings (an empty string ends the list)")
    return b"".join(_encode_string(item, RegType.MULTI_SZ) + b"\0\0" for item in data) + b"\0\0"


def _encode_uint(data: object, size: int, byteorder: str, t: RegType) -> bytes:
    if isinstance(data, bool) or not isinstance(data, int):
        raise ValueError(f"{type_name(t)} data must be int, not {type(data).__name__}")
    if not 0 <= data < 1 << (8 * size):
        raise ValueError(f"{type_name(t)} data {data} is outside 0..{(1 << (8 * size)) - 1}")
    return data.to_bytes(size, byteorder)


def _utf16(raw: bytes) -> str:
    return raw[: len(raw) & ~1].decode("utf-16-le", errors="replace")


def _decode_multi_string(raw: bytes) -> list[str]:
    strings = []
    for item in _utf16(raw).split("\0"):
        if not item:       # the empty string ends the list, whatever follows
            break
        strings.append(item)
    return strings


# ---------------------------------------------------------------- header

BASE_BLOCK_SIZE = 0x1000
HBIN_SIZE = 0x1000
MIN_HIVE_SIZE = BASE_BLOCK_SIZE + HBIN_SIZE
CHECKSUM_OFFSET = 0x1FC
BIG_VALUE_LIMIT = 16344          # larger values must be stored as "db" records in hive format 1.4+
_HEADER = struct.Struct("<4sIIQIIIIII")
_REPAIR = "restore it from a backup or repair the image in Windows, then retry"


@dataclass(frozen=True)
class HiveHeader:
    primary_sequence: int
    secondary_sequence: int
    major_version: int
    minor_version: int
    root_offset: int
    hbins_size: int
    file_size: int

    @property
    def version(self) -> str:
        return f"{self.major_version}.{self.minor_version}"


def header_checksum(block: bytes) -> int:
    checksum = 0
    for (word,) in struct.iter_unpack("<I", block[:CHECKSUM_OFFSET]):
        checksum ^= word
    return checksum


def check_header(path: str | os.PathLike, label: str | None = None, allow_dirty: bool = False) -> HiveHeader:
    """Refuse a file hivex would misread or silently damage; ``label`` names the file in messages.
    ``allow_dirty`` accepts a hive Windows did not save cleanly: fine for reading (recent changes may be
    missing), never for editing."""
    label = label or str(path)
    try:
        with open(path, "rb") as f:
            block = f.read(BASE_BLOCK_SIZE + 4)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise HiveMissing(f"{label} does not exist") from None
    if block[:4] != b"regf":
        raise HiveCorrupt(f"{label} is not a registry hive (no 'regf' signature); {_REPAIR}")
    if size < MIN_HIVE_SIZE:
        raise HiveCorrupt(f"{label} is truncated ({size} bytes, a hive has at least {MIN_HIVE_SIZE}); {_REPAIR}")
    _, seq1, seq2, _, major, minor, file_type, _, root, hbins = _HEADER.unpack_from(block)
    _check_integrity(label, block, size, major, file_type, hbins)
    if seq1 != seq2 and not allow_dirty:
        raise HiveDirty(
            f"{label} was not saved cleanly (sequence numbers {seq1} and {seq2} differ): Windows would replay its "
            ".LOG1/.LOG2 transaction logs, which ce cannot do, so edits would lose data; boot the image once, shut "
            "it down cleanly (not hibernate or Fast Startup), then retry")
    return HiveHeader(seq1, seq2, major, minor, root, hbins, size)


def _check_integrity(label: str, block: bytes, size: int, major: int, file_type: int, hbins: int) -> None:
    (stored,) = struct.unpack_from("<I", block, CHECKSUM_OFFSET)
    if stored not in _accepted_checksums(header_checksum(block)):
        raise HiveCorrupt(
            f"{label} has a damaged header (checksum mismatch); boot the image once so Windows can recover the hive "
            "from its logs, shut it down cleanly, then retry")
    if major != 1:
        raise HiveCorrupt(f"{label} has unsupported hive format version {major}; {_REPAIR}")
    if file_type != 0:
        raise HiveCorrupt(f"{label} is a transaction log, not a primary hive file; open the hive itself")
    if BASE_BLOCK_SIZE + hbins > size:
        raise HiveCorrupt(
            f"{label} is truncated (its header declares {hbins} bytes of hive bins, the file holds "
            f"{size - BASE_BLOCK_SIZE}); {_REPAIR}")
    if block[BASE_BLOCK_SIZE:] != b"hbin":
        raise HiveCorrupt(f"{label} has no hive bin after its header; {_REPAIR}")


def _accepted_checksums(xor: int) -> set[int]:
    # Windows stores 1 for a XOR of 0 and 0xFFFFFFFE for 0xFFFFFFFF; hivex stores the plain XOR.
    return {xor, {0: 1, 0xFFFFFFFF: 0xFFFFFFFE}.get(xor, xor)}


# ---------------------------------------------------------------- hivex handle

class _Hivex(hivex.Hivex):
    """hivex.Hivex whose ``__del__`` does not print an AttributeError when the open failed."""

    def __del__(self):
        self.close()

    def close(self) -> None:
        if hasattr(self, "_o"):
            libhivexmod.close(self._o)
            del self._o


@dataclass(frozen=True)
class Change:
    """One edit made through a Hive, replayed by ``verify_changes`` against the committed file."""
    op: str                       # "set" | "delete_value" | "delete_key"
    path: str
    name: str | None = None
    type: int | None = None
    raw: bytes | None = None


def split_path(path: str) -> list[str]:
    return [part for part in path.split("\\") if part]


def _fold(name: str) -> str:
    """Windows compares names by upcasing each character alone: "ß" stays "ß" (str.upper makes it "SS")."""
    if name.isascii():
        return name.upper()
    return "".join(upper if len(upper := c.upper()) == 1 else c for c in name)


class Hive:
    """One open hive file. Open with ``Hive.open``; edits happen in memory until ``commit``."""

    def __init__(self, handle: _Hivex, path: Path, *, write: bool, label: str, header: HiveHeader):
        self._h = handle
        self.path = path
        self.write = write
        self.label = label
        self.header = header
        self.source_sha256 = sha256_file(path) if write else None
        self._changes: list[Change] = []

    @classmethod
    def open(cls, path: str | os.PathLike, write: bool = False, label: str | None = None,
             allow_dirty: bool = False) -> Hive:
        """``label`` names the file in messages (e.g. its path in the image); ``allow_dirty``: see check_header."""
        if write and allow_dirty:
            raise ValueError("a dirty hive can be opened read-only only: hivex would drop what its logs hold")
        label = label or str(path)
        header = check_header(path, label, allow_dirty)
        try:
            handle = _Hivex(str(path), write=write)
        except RuntimeError as exc:
            raise HiveCorrupt(f"{label}: hivex cannot open it ({exc}); {_REPAIR}") from None
        return cls(handle, Path(path), write=write, label=label, header=header)

    def __enter__(self) -> Hive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._h.close()

    @property
    def changes(self) -> tuple[Change, ...]:
        return tuple(self._changes)

    # ---- reading

    def key_exists(self, path: str) -> bool:
        return self._find_key(path) is not None

    def subkeys(self, path: str) -> list[str]:
        node = self._require_key(path)
        with self._reading(path):
            return [self._h.node_name(child) for child in self._h.node_children(node)]

    def values(self, path: str) -> dict[str, RegValue]:
        node = self._require_key(path)
        with self._reading(path):
            return {self._h.value_key(v): RegValue.from_raw(*self._h.value_value(v)) for v in self._h.node_values(node)}

    def get(self, path: str, name: str) -> RegValue | None:
        raw = self.get_raw(path, name)
        return None if raw is None else RegValue.from_raw(*raw)

    def get_data(self, path: str, name: str, default: object = None) -> object:
        value = self.get(path, name)
        return default if value is None else value.data

    def get_raw(self, path: str, name: str) -> tuple[int, bytes] | None:
        """(type, stored bytes) of a value, or None if the key or value is missing."""
        node = self._find_key(path)
        handle = None if node is None else self._find_value(node, name)
        if handle is None:
            return None
        with self._reading(path):
            return self._h.value_value(handle)

    def check_structure(self) -> tuple[int, int]:
        """Walk every key and value record; returns (keys, values). HiveCorrupt if any record is unreadable."""
        keys = values = 0
        pending = [self._h.root()]
        with self._reading("(whole hive)"):
            while pending:
                node = pending.pop()
                self._h.node_name(node)
                for value in self._h.node_values(node):
                    self._h.value_key(value)
                    self._h.value_value(value)
                    values += 1
                pending.extend(self._h.node_children(node))
                keys += 1
        return keys, values

    # ---- editing

    def set(self, path: str, name: str, type: int, data: object) -> None:
        """Set one value, creating missing keys on the way and keeping the key's other values."""
        raw = encode_value(type, data)
        self._require_writable()
        if len(raw) > BIG_VALUE_LIMIT and self._needs_big_data():
            raise UnsupportedEdit(
                f"{self.label}: {path}\\{name} would be {len(raw)} bytes; hivex cannot store values over "
                f"{BIG_VALUE_LIMIT} bytes in a form Windows reads")
        self._refuse_big_values(path, replacing=name)
        node = self._ensure_key(path)
        existing = self._find_value(node, name)
        stored_name = name if existing is None else self._h.value_key(existing)   # keep the stored spelling
        with self._writing(path):
            self._h.node_set_value(node, {"key": stored_name, "t": int(type), "value": raw})
        self._changes.append(Change("set", path, name, int(type), raw))

    def delete_value(self, path: str, name: str) -> bool:
        """Delete one value; False if it did not exist."""
        self._require_writable()
        node = self._find_key(path)
        target = None if node is None else self._find_value(node, name)
        if target is None:
            return False
        self._refuse_big_values(path, replacing=name)
        with self._writing(path):
            # hivex has no single-value delete: rewrite the key's value list without it.
            kept = [self._set_value_dict(v) for v in self._h.node_values(node) if v != target]
            self._h.node_set_values(node, kept)
        self._changes.append(Change("delete_value", path, name))
        return True

    def delete_key(self, path: str) -> bool:
        """Delete a key with all its subkeys and values; False if it did not exist."""
        self._require_writable()
        if not split_path(path):
            raise ValueError("cannot delete the root key of a hive")
        node = self._find_key(path)
        if node is None:
            return False
        with self._writing(path):
            self._h.node_delete_child(node)
        self._changes.append(Change("delete_key", path))
        return True

    def commit(self, dest_path: str | os.PathLike) -> Path:
        """Write the edited hive to ``dest_path`` (hivex makes both sequence numbers equal: a clean hive)."""
        self._require_writable()
        with self._writing("(commit)"):
            self._h.commit(str(dest_path))
        return Path(dest_path)

    # ---- internals

    def _find_key(self, path: str) -> int | None:
        node = self._h.root()
        with self._reading(path):
            for part in split_path(path):
                node = self._find_child(node, part)
                if node is None:
                    return None
        return node

    def _find_child(self, node: int, name: str) -> int | None:
        child = self._h.node_get_child(node, name)
        if child is not None or name.isascii():
            return child
        # hivex folds ASCII only; Windows folds every letter.
        folded = _fold(name)
        return next((c for c in self._h.node_children(node) if _fold(self._h.node_name(c)) == folded), None)

    def _find_value(self, node: int, name: str) -> int | None:
        # node_get_value raises RuntimeError("Success") when the value is missing and folds ASCII only.
        folded = _fold(name)
        with self._reading(name):
            return next((v for v in self._h.node_values(node) if _fold(self._h.value_key(v)) == folded), None)

    def _require_key(self, path: str) -> int:
        node = self._find_key(path)
        if node is None:
            raise RegistryKeyMissing(f"{self.label}: key {path!r} does not exist")
        return node

    def _ensure_key(self, path: str) -> int:
        node = self._h.root()
        for part in split_path(path):
            child = self._find_child(node, part)
            if child is None:
                with self._writing(path):
                    child = self._h.node_add_child(node, part)
            node = child
        return node

    def _set_value_dict(self, handle: int) -> dict:
        t, raw = self._h.value_value(handle)
        return {"key": self._h.value_key(handle), "t": t, "value": raw}

    def _needs_big_data(self) -> bool:
        return self.header.minor_version >= 4

    def _refuse_big_values(self, path: str, replacing: str) -> None:
        """hivex rewrites all of a key's values on every edit, turning a big-data value into one oversized cell."""
        node = self._find_key(path)
        if node is None or not self._needs_big_data():
            return
        with self._reading(path):
            for handle in self._h.node_values(node):
                name = self._h.value_key(handle)
                _, length = self._h.value_type(handle)
                if length > BIG_VALUE_LIMIT and _fold(name) != _fold(replacing):
                    raise UnsupportedEdit(
                        f"{self.label}: cannot edit key {path!r}: hivex would rewrite its {length}-byte value "
                        f"{name!r} in a form Windows cannot read")

    def _require_writable(self) -> None:
        if not self.write:
            raise RegistryError(f"{self.label} is open read-only; open it with write=True to edit")

    def _reading(self, what: str):
        return _hivex_errors(HiveCorrupt, f"{self.label}: cannot read {what!r}")

    def _writing(self, what: str):
        return _hivex_errors(RegistryError, f"{self.label}: hivex failed to write {what!r}")


@contextmanager
def _hivex_errors(error: type[RegistryError], context: str):
    """Turn hivex's bare RuntimeError(strerror) into a ce error that says which hive and what."""
    try:
        yield
    except RuntimeError as exc:
        raise error(f"{context} ({exc})") from exc


def current_control_set(hive: Hive) -> str:
    """``ControlSet00N`` named by ``SYSTEM\\Select\\Current`` (CurrentControlSet exists only at run time)."""
    current = hive.get("Select", "Current")
    if current is None or current.type != RegType.DWORD:
        raise RegistryError(f"{hive.label} has no REG_DWORD Select\\Current value; is it the SYSTEM hive?")
    name = f"ControlSet{current.data:03d}"
    if not hive.key_exists(name):
        raise RegistryError(
            f"{hive.label}: Select\\Current names {name}, which does not exist; the SYSTEM hive is damaged, "
            "repair the image in Windows")
    return name


# ---------------------------------------------------------------- replay check

def verify_changes(hive: Hive, changes: tuple[Change, ...] | list[Change]) -> list[str]:
    """Mismatches between ``hive`` and the final state the ``changes`` should have produced (empty = good)."""
    values, deleted_keys = _final_state(changes)
    problems = []
    for change in values.values():
        want = (change.type, change.raw) if change.op == "set" else None
        got = hive.get_raw(change.path, change.name)
        if got != want:
            problems.append(f"{change.path}\\{change.name}: expected {_describe(want)}, found {_describe(got)}")
    problems += [f"{path}: expected deleted, still present" for path in deleted_keys.values() if hive.key_exists(path)]
    return problems


def _final_state(changes) -> tuple[dict[tuple[str, str], Change], dict[str, str]]:
    values: dict[tuple[str, str], Change] = {}
    deleted_keys: dict[str, str] = {}
    for change in changes:
        key = _fold("\\".join(split_path(change.path)))
        if change.op == "delete_key":
            values = {k: c for k, c in values.items() if not _within(k[0], key)}
            deleted_keys = {k: p for k, p in deleted_keys.items() if not _within(k, key)}
            deleted_keys[key] = change.path
            continue
        if change.op == "set":      # setting a value recreates its key and the key's parents
            deleted_keys = {k: p for k, p in deleted_keys.items() if not _within(key, k)}
        values[(key, _fold(change.name))] = change
    return values, deleted_keys


def _within(key: str, ancestor: str) -> bool:
    return key == ancestor or key.startswith(ancestor + "\\")


def _describe(raw: tuple[int, bytes] | None) -> str:
    return "nothing" if raw is None else f"{type_name(raw[0])} {RegValue.from_raw(*raw).to_json()['value']!r}"


# ---------------------------------------------------------------- empty hive

_ROOT_FLAGS = 0x2C               # HIVE_ENTRY | NO_DELETE | COMP_NAME (name stored in 8 bits)
_NO_CELL = 0xFFFFFFFF
_KEY_READ, _KEY_ALL_ACCESS = 0x20019, 0xF003F
_CONTAINER_INHERIT_ACE = 0x02
_SE_DACL_PRESENT, _SE_SELF_RELATIVE = 0x0004, 0x8000


def create_empty_hive(path: str | os.PathLike, root_name: str = "ROOT") -> Path:
    """Write a minimal valid 8 KiB hive (hivex cannot create one): base block + one hbin holding the root key
    first (regipy assumes the root is the first cell), its security cell (hivex needs one to add keys) and a
    free cell filling the rest of the bin."""
    if not (0 < len(root_name) <= 255 and root_name.isascii() and "\\" not in root_name):
        raise ValueError(f"root name must be 1-255 ASCII characters without backslashes, not {root_name!r}")
    bins = _first_bin(root_name.encode("ascii"))
    Path(path).write_bytes(_base_block(root_offset=0x20, hbins_size=len(bins)) + bins)
    return Path(path)


def _base_block(root_offset: int, hbins_size: int) -> bytes:
    block = bytearray(BASE_BLOCK_SIZE)
    # signature, sequences 1/1 (clean), timestamp, version 1.5, primary file, direct memory load format,
    # root cell, hive bins size, clustering factor
    _HEADER.pack_into(block, 0, b"regf", 1, 1, 0, 1, 5, 0, 1, root_offset, hbins_size)
    struct.pack_into("<I", block, _HEADER.size, 1)
    struct.pack_into("<I", block, CHECKSUM_OFFSET, header_checksum(block))
    return bytes(block)


def _first_bin(root_name: bytes) -> bytes:
    header = struct.pack("<4sIIIIQI", b"hbin", 0, HBIN_SIZE, 0, 0, 0, 0)
    nk_offset = len(header)
    nk_size = _cell_size(_nk_payload(root_name, 0))
    sk_offset = nk_offset + nk_size
    root = _cell(_nk_payload(root_name, sk_offset))
    security = _cell(_sk_payload(sk_offset, _default_security_descriptor()))
    used = len(header) + len(root) + len(security)
    free = struct.pack("<i", HBIN_SIZE - used).ljust(HBIN_SIZE - used, b"\0")
    return header + root + security + free


def _nk_payload(name: bytes, sk_offset: int) -> bytes:
    return struct.pack(
        "<2sHQ15IHH", b"nk", _ROOT_FLAGS, 0,
        0, _NO_CELL,                 # spare, parent
        0, 0, _NO_CELL, _NO_CELL,    # subkeys, volatile subkeys, their lists
        0, _NO_CELL,                 # values, value list
        sk_offset, _NO_CELL,         # security cell, class name
        0, 0, 0, 0, 0,               # max name/class/value-name/value-data lengths, workvar
        len(name), 0) + name


def _sk_payload(own_offset: int, descriptor: bytes) -> bytes:
    # The only sk cell links to itself (flink = blink); hivex bumps the refcount for each key sharing it.
    return struct.pack("<2sHIIII", b"sk", 0, own_offset, own_offset, 1, len(descriptor)) + descriptor


def _default_security_descriptor() -> bytes:
    """Self-relative SD: owner Administrators, group SYSTEM, DACL read for Everyone, full for SYSTEM and
    Administrators, inherited by subkeys."""
    everyone, system, administrators = _sid(1, 0), _sid(5, 18), _sid(5, 32, 544)
    aces = _ace(_KEY_READ, everyone) + _ace(_KEY_ALL_ACCESS, system) + _ace(_KEY_ALL_ACCESS, administrators)
    dacl = struct.pack("<BBHHH", 2, 0, 8 + len(aces), 3, 0) + aces
    dacl_offset = 20
    owner_offset = dacl_offset + len(dacl)
    group_offset = owner_offset + len(administrators)
    header = struct.pack("<BBHIIII", 1, 0, _SE_SELF_RELATIVE | _SE_DACL_PRESENT,
                         owner_offset, group_offset, 0, dacl_offset)
    return header + dacl + administrators + system


def _sid(authority: int, *subauthorities: int) -> bytes:
    return (struct.pack("<BB", 1, len(subauthorities)) + authority.to_bytes(6, "big")
            + struct.pack(f"<{len(subauthorities)}I", *subauthorities))


def _ace(mask: int, sid: bytes) -> bytes:
    return struct.pack("<BBHI", 0, _CONTAINER_INHERIT_ACE, 8 + len(sid), mask) + sid   # ACCESS_ALLOWED_ACE


def _cell_size(payload: bytes) -> int:
    return (4 + len(payload) + 7) & ~7


def _cell(payload: bytes) -> bytes:
    size = _cell_size(payload)
    return struct.pack("<i", -size) + payload.ljust(size - 4, b"\0")


# ---------------------------------------------------------------- commit into a guest image

STAGED_SUFFIX = ".ce-new"
NTFS3G_RENAME_INFIX = ".ntfs-3g-"
BACKUP_DIR_NAME = "ce-backup"
NTFS_ACL_XATTR = "system.ntfs_acl"


@dataclass(frozen=True)
class CommitResult:
    guest_path: str
    sha256_before: str
    sha256_after: str
    backup_path: str | None        # the hive as it was before this job's first commit
    backup_created: bool
    changes: int
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {**self.__dict__, "warnings": list(self.warnings)}


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_hive(g, guest_path: str, local_dir: str | os.PathLike) -> Path:
    """Copy a hive out of the image to a new file in ``local_dir`` (a stale ``.ce-new`` beside it is ignored).
    Open it with ``Hive.open(local, label=guest_path)`` so header errors name the hive in the image."""
    if not g.is_file(guest_path):
        raise HiveMissing(
            f"{guest_path} does not exist in the image; the Windows installation is incomplete or damaged")
    fd, local = tempfile.mkstemp(prefix=posixpath.basename(guest_path) + ".", dir=local_dir)
    os.close(fd)
    g.download(guest_path, local)
    return Path(local)


def cleanup_stale(g, guest_path: str) -> list[str]:
    """Undo what an interrupted commit may have left; returns the paths restored or removed.

    ntfs-3g renames over an existing file in steps (link the target to ``<name>.ntfs-3g-<n>``, unlink it, link
    the source, unlink the source, unlink the temporary link), so a crash in between can leave the original
    hive only under the temporary name: it is renamed back. The staged ``.ce-new`` and leftover temporary links
    are removed."""
    directory, name = posixpath.split(guest_path)
    renamed = sorted(posixpath.join(directory, n) for n in g.ls(directory) if n.startswith(name + NTFS3G_RENAME_INFIX))
    touched = []
    if not g.is_file(guest_path) and renamed:
        g.mv(renamed.pop(), guest_path)
        touched.append(guest_path)
    for path in [guest_path + STAGED_SUFFIX, *renamed]:
        if g.is_file(path):
            g.rm(path)
            touched.append(path)
    return touched


def commit_hive(g, guest_path: str, hive: Hive, expected: Callable[[Hive], object] | None = None,
                backup_dir: str | None = None, backup_stamp: str | None = None) -> CommitResult:
    """Replace ``guest_path`` in the image with the edited ``hive``: verified, backed up, swapped by a rename.

    ``g`` is a launched guestfs handle with the Windows volume mounted read-write at "/".

    1. Commit to a local file and re-open it: every change recorded on ``hive`` reads back exactly,
       ``expected(reopened)`` neither raises nor returns False, and every record parses.
    2. Refuse if the image's hive changed since it was downloaded.
    3. Upload it as ``<guest_path>.ce-new``, check its sha256, sync.
    4. Back up the original as ``<backup_dir>/<HIVE>.<stamp>`` unless that exists (pass the job's stamp, and
       only the pristine hive is kept). The backup is a hard link, not a copy: once the rename is done it *is*
       the original file, bytes and NTFS permissions, at no cost in space or time. A copy would be a new file,
       and ntfs-3g gives new files a security descriptor granting Everyone full control, so any user could
       read the hive's secrets from it.
    5. Rename the staged file over the original, sync, check the sha256.

    A crash leaves the old or the new hive, never a torn one (``cleanup_stale`` tidies up, see there).

    Permissions: the new hive is a file ntfs-3g created, so it carries ntfs-3g's default security descriptor,
    and the original's cannot be copied onto it (libguestfs's Python binding takes xattr values as str and
    rejects NUL bytes). When the two differ, the result carries a warning.

    Transaction logs: hivex commits with both sequence numbers equal, so the new hive is clean, and Windows
    replays .LOG1/.LOG2 only into a dirty hive (bad checksum or unequal sequence numbers); the stale logs
    beside it are ignored and stay in place. Hives that are dirty when read are refused (``check_header``):
    their logs may hold data hivex cannot see.
    """
    if not hive.changes:
        return CommitResult(guest_path, hive.source_sha256, hive.source_sha256, None, False, 0)
    local = hive.path.with_name(hive.path.name + STAGED_SUFFIX)
    try:
        _commit_verified(hive, local, expected, guest_path)
        return _replace_in_image(g, guest_path, hive, local, backup_dir or _default_backup_dir(guest_path),
                                 backup_stamp or _utc_stamp())
    finally:
        local.unlink(missing_ok=True)


def _commit_verified(hive: Hive, local: Path, expected: Callable[[Hive], object] | None, guest_path: str) -> None:
    try:
        hive.commit(local)
        with Hive.open(local, label=f"{guest_path} (edited copy)") as written:
            problems = verify_changes(written, hive.changes)
            if problems:
                raise HiveCommitFailed(f"{guest_path}: the edited hive does not read back as written, the image "
                                       "is unchanged: " + "; ".join(problems[:5]))
            if expected is not None and expected(written) is False:
                raise HiveCommitFailed(f"{guest_path}: the edited hive failed the caller's check, the image is "
                                       "unchanged")
            written.check_structure()
    except HiveCommitFailed:
        raise
    except Exception as exc:
        raise HiveCommitFailed(f"{guest_path}: the edited hive failed verification, the image is unchanged: "
                               f"{exc}") from exc


def _replace_in_image(g, guest_path: str, hive: Hive, local: Path, backup_dir: str, stamp: str) -> CommitResult:
    staged = guest_path + STAGED_SUFFIX
    after = sha256_file(local)
    try:
        before = g.checksum("sha256", guest_path)
        if before != hive.source_sha256:
            raise HiveCommitFailed(f"{guest_path} changed in the image since it was read; edit it again from "
                                   "a fresh copy")
        g.upload(str(local), staged)
        _expect_checksum(g, staged, after)
        g.sync()
        warnings = _permission_warnings(g, guest_path, staged)
        backup, created = _link_backup(g, guest_path, backup_dir, stamp)
    except Exception as exc:
        _remove_quietly(g, staged)
        if isinstance(exc, HiveCommitFailed):
            raise
        raise HiveCommitFailed(f"{guest_path}: could not stage the new hive, the image's hive is unchanged: "
                               f"{exc}") from exc
    _rename_over(g, staged, guest_path, after, backup, created)
    return CommitResult(guest_path, before, after, backup, created, len(hive.changes), warnings)


def _link_backup(g, guest_path: str, backup_dir: str, stamp: str) -> tuple[str, bool]:
    backup = posixpath.join(backup_dir, f"{posixpath.basename(guest_path)}.{stamp}")
    if g.is_file(backup):
        return backup, False
    g.mkdir_p(backup_dir)
    g.ln(guest_path, backup)
    return backup, True


def _rename_over(g, staged: str, guest_path: str, sha256: str, backup: str, backup_created: bool) -> None:
    try:
        g.mv(staged, guest_path)
        g.sync()
        _expect_checksum(g, guest_path, sha256)
    except Exception as exc:
        _remove_quietly(g, staged)
        if backup_created and _same_file(g, guest_path, backup):
            _remove_quietly(g, backup)      # the rename did not happen: the link is the live hive, not a backup
        raise HiveCommitFailed(f"{guest_path}: replacing the hive failed ({exc}); if the hive is damaged, "
                               f"restore it from {backup}") from exc


def _permission_warnings(g, original: str, staged: str) -> tuple[str, ...]:
    if g.lgetxattr(original, NTFS_ACL_XATTR) == g.lgetxattr(staged, NTFS_ACL_XATTR):
        return ()
    return (f"{original} now has the NTFS permissions ntfs-3g gives new files (Everyone: full control) instead "
            "of its own, which libguestfs cannot copy; prepare stages a first-boot action that puts the original "
            "back (restore-acl-*), and the backup keeps the original permissions",)


def _same_file(g, a: str, b: str) -> bool:
    try:
        return g.lstatns(a)["st_ino"] == g.lstatns(b)["st_ino"]
    except RuntimeError:
        return False


def _expect_checksum(g, path: str, sha256: str) -> None:
    found = g.checksum("sha256", path)
    if found != sha256:
        raise HiveCommitFailed(f"{path}: sha256 {found} after writing, expected {sha256}")


def _remove_quietly(g, path: str) -> None:
    try:
        g.rm_f(path)
    except RuntimeError:
        pass


def _default_backup_dir(guest_path: str) -> str:
    return posixpath.join(posixpath.dirname(guest_path), BACKUP_DIR_NAME)


def _utc_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
