"""The replay check: does a committed hive hold exactly what its recorded changes should have produced?"""
from __future__ import annotations

from .hive import Change, Hive, fold_name, split_path
from .values import RegValue, type_name


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
        key = fold_name("\\".join(split_path(change.path)))
        if change.op == "delete_key":
            values = {k: c for k, c in values.items() if not _within(k[0], key)}
            deleted_keys = {k: p for k, p in deleted_keys.items() if not _within(k, key)}
            deleted_keys[key] = change.path
            continue
        if change.op == "set":      # setting a value recreates its key and the key's parents
            deleted_keys = {k: p for k, p in deleted_keys.items() if not _within(key, k)}
        values[(key, fold_name(change.name))] = change
    return values, deleted_keys


def _within(key: str, ancestor: str) -> bool:
    return key == ancestor or key.startswith(ancestor + "\\")


def _describe(raw: tuple[int, bytes] | None) -> str:
    return "nothing" if raw is None else f"{type_name(raw[0])} {RegValue.from_raw(*raw).to_json()['value']!r}"
