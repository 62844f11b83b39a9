"""The support policy: which Windows releases and architectures ce edits (``ce/data/windows_support.json``).

Inspect reads any Windows; a step that writes to the image refuses, before any change, a release outside
this list.
"""
from __future__ import annotations

import json
from importlib import resources

from ce.errors import WindowsUnsupported

from .facts import InspectReport


def windows_support_rules() -> dict:
    return json.loads(resources.files("ce").joinpath("data/windows_support.json").read_text())


def require_supported_windows(facts: InspectReport) -> None:
    rules = windows_support_rules()
    if facts.os.product not in rules["products"] or facts.os.arch not in rules["architectures"]:
        raise WindowsUnsupported(f"{facts.os.product_name} (build {facts.os.build}, {facts.os.arch}) is not a "
                                 f"Windows release prepare supports ({', '.join(rules['products'])}, "
                                 f"{'/'.join(rules['architectures'])}): nothing was changed")
