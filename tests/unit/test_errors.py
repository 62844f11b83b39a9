"""The error catalogue (``ce.errors``): one place for every error class, each with a unique code, an HTTP status and
an action; the README's table of codes is the catalogue's; no code outside the catalogue matches on code strings.

Fast: imports modules and reads source, launches nothing.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from collections import defaultdict
from pathlib import Path

import ce
import ce.errors
import steps
from ce.errors import CeError, catalogue
from tests.support import ROOT

README = ROOT / "README.md"
SECTION = "## Error codes"
ROW = re.compile(r"^\| `([a-z0-9_]+)` \|")
# `.code ==`, `.code != `, `.code in`, `.code not in`, `["code"] == ...` and the reversed `"x" == exc.code`.
CODE_COMPARISON = re.compile(r"""(\.code|\[["']code["']\])\s*(==|!=|in\b|not\s+in\b)|(==|!=)\s*[\w.]+\.code\b""")


def catalogue_module():
    return importlib.import_module("ce.errors.__main__")


def error_classes() -> list[type[CeError]]:
    """Every CeError subclass defined in ce.errors (catalogue() keeps one per code; this keeps them all)."""
    found, pending = [], [CeError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("ce.errors") and cls not in found:
            found.append(cls)
    return found


def all_modules() -> tuple[list, list[str]]:
    """Every module of ce/ and steps/, imported, and the ones that failed to import."""
    failed: list[str] = []
    modules = [ce, steps]
    for package in (ce, steps):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".",
                                          onerror=lambda name: failed.append(name) if not any(
                                              f.startswith(f"{name} (") for f in failed) else None):
            try:
                modules.append(importlib.import_module(info.name))
            except Exception as exc:            # noqa: BLE001 -- reported, not hidden
                failed.append(f"{info.name} ({type(exc).__name__}: {exc})")
    return modules, failed


def source_files() -> list[Path]:
    return sorted([*(ROOT / "ce").rglob("*.py"), *(ROOT / "steps").rglob("*.py")])


def readme_table() -> list[str]:
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no {SECTION!r} section (python -m ce.errors prints its table)"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


# ---------------------------------------------------------------- the catalogue itself

def test_every_code_is_unique():
    """A code belongs to one class; a subclass may share it only by not naming a code of its own (it specialises
    the message, not the meaning)."""
    owners = defaultdict(list)
    for cls in error_classes():
        if "code" in vars(cls):
            owners[cls.code].append(f"{cls.__module__}.{cls.__qualname__}")
    shared = {code: names for code, names in owners.items() if len(names) > 1}
    assert not shared, f"codes defined by more than one class: {shared}"


def test_every_class_has_an_action_and_a_status():
    for cls in error_classes():
        name = f"{cls.__module__}.{cls.__qualname__}"
        assert isinstance(cls.code, str) and re.fullmatch(r"[a-z][a-z0-9_]*", cls.code), name
        assert isinstance(cls.action, str) and cls.action.strip() and "\n" not in cls.action, name
        assert isinstance(cls.status, int) and 400 <= cls.status <= 599, (name, cls.status)
        if "code" in vars(cls):
            assert "action" in vars(cls), f"{name} names its own code {cls.code!r} but inherits its action"


def test_catalogue_lists_every_class_by_its_code():
    codes = catalogue()
    for cls in error_classes():
        assert cls.code in codes, cls
    assert all(cls.code == code for code, cls in codes.items())


# ---------------------------------------------------------------- the README's table

def test_readme_lists_every_code_and_no_other():
    listed = [m.group(1) for line in readme_table() if (m := ROW.match(line))]
    known = set(catalogue())
    assert sorted(set(listed)) == sorted(listed), "a code is listed twice in the README's table"
    assert not known - set(listed), f"codes missing from the README's table: {sorted(known - set(listed))}"
    assert not set(listed) - known, f"codes in the README's table that no class has: {sorted(set(listed) - known)}"


def test_readme_table_is_the_catalogue():
    """Status, group and action too: regenerate the table with ``python -m ce.errors`` after changing a class."""
    assert readme_table() == catalogue_module().table(), "README.md's error table is stale: python -m ce.errors"


# ---------------------------------------------------------------- one place, and nothing matches on codes

def test_no_error_class_is_defined_outside_ce_errors():
    modules, failed = all_modules()
    outside = sorted({f"{cls.__module__}.{cls.__qualname__} ({cls.code})"
                      for module in modules for _, cls in inspect.getmembers(module, inspect.isclass)
                      if issubclass(cls, CeError) and cls.__module__ == module.__name__
                      and not module.__name__.startswith("ce.errors")})
    assert not outside and not failed, "\n  ".join([
        "error classes outside ce/errors (move them into their group module):", *outside,
        "modules that do not import (not searched):", *dict.fromkeys(failed)])


def test_nothing_compares_error_codes():
    hits = []
    for path in source_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if CODE_COMPARISON.search(line.split("#", 1)[0]):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "code compares error codes (catch the error class instead):\n  " + "\n  ".join(hits)


def test_no_error_is_raised_with_an_ad_hoc_code():
    """``SomeError(..., code="x")`` is a code the catalogue may not know, with the wrong class's action and status:
    raise the class that owns the code (give it one if none does)."""
    names = {cls.__name__ for cls in error_classes()}
    hits = []
    for path in source_files():
        if path.is_relative_to(ROOT / "ce" / "errors"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            for keyword in node.keywords:
                if func in names and keyword.arg == "code" and isinstance(keyword.value, ast.Constant):
                    hits.append(f"{path.relative_to(ROOT)}:{node.lineno}: {func}(..., code={keyword.value.value!r})")
    assert not hits, "errors raised with an ad hoc code (raise the class that owns it):\n  " + "\n  ".join(hits)


def test_the_openapi_document_lists_each_operations_codes():
    """Each HTTP operation's error responses and each step type's create request name the codes they can carry,
    all of them in the catalogue (whose actions the document holds too)."""
    from ce.server import openapi
    from ce.step import step_types
    document = openapi.document(step_types())
    codes = set(catalogue())
    assert set(document["x-error-catalogue"]) == codes
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    listed = response["x-error-codes"]
                    assert listed and set(listed) <= codes, (path, method, status)
                    assert all(catalogue()[c].status == int(status) for c in listed), (path, method, status)
    for name in step_types():
        listed = set(document["components"]["schemas"][f"{name}.StepCreate"]["x-error-codes"])
        assert {"invalid_params", "canceled", "step_timeout", "worker_died"} <= listed <= codes, name
    export = set(document["components"]["schemas"]["export.StepCreate"]["x-error-codes"])
    assert {"smb_auth_failed", "smb_share_full", "disk_not_found"} <= export and "hive_dirty" not in export
