"""``Hive``: one hive file opened with hivex, read and edited in memory, every edit recorded as a ``Change``."""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hivex
import libhivexmod

from ..errors import HiveCorrupt, RegistryError, RegistryKeyMissing, UnsupportedEdit
from .header import BIG_VALUE_LIMIT, REPAIR_ADVICE, HiveHeader, check_header
from .values import RegType, RegValue, encode_value


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


def fold_name(name: str) -> str:
    """Windows compares names by upcasing each character alone: "ß" stays "ß" (str.upper makes it "SS")."""
    if name.isascii():
        return name.upper()
    return "".join(upper if len(upper := c.upper()) == 1 else c for c in name)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
            raise HiveCorrupt(f"{label}: hivex cannot open it ({exc}); {REPAIR_ADVICE}") from None
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
        folded = fold_name(name)
        return next((c for c in self._h.node_children(node) if fold_name(self._h.node_name(c)) == folded), None)

    def _find_value(self, node: int, name: str) -> int | None:
        # node_get_value raises RuntimeError("Success") when the value is missing and folds ASCII only.
        folded = fold_name(name)
        with self._reading(name):
            return next((v for v in self._h.node_values(node) if fold_name(self._h.value_key(v)) == folded), None)

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
                if length > BIG_VALUE_LIMIT and fold_name(name) != fold_name(replacing):
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
