"""Registry value types: the REG_* numbers, and Python data encoded to and decoded from the bytes a hive stores."""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


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
