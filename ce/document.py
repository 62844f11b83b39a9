"""The one naming rule of ce's documents: every key is camelCase, as in the service's own API.

Plans, results, their change kinds and facts, inspect reports, the CLI's ``--json`` and the server's step documents
all use it. Models that appear in a document derive from ``Document``: Python code keeps snake_case attributes
(``change.virtual_size``), the JSON has their camelCase aliases (``virtualSize``). Facts a step builds as plain dicts
use camelCase keys directly; each step's ``Facts`` model (``ce.step.StepType.Facts``) describes them for
``/openapi.json`` and ``conforming_facts`` checks a document against it.

Enumerated values (a change's ``kind``, an outcome's ``status``, error and warning codes) are machine tokens in
lower snake_case, stable across versions; prose is only ever in ``message``, ``reason`` and ``describe()`` lines.

``SCHEMA_VERSION`` is carried by every plan and result: 2 is the first version with one casing (version 1 mixed
snake_case facts into camelCase documents).
"""
from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

SCHEMA_VERSION = 2
STRICT_ENV = "CE_STRICT_DOCUMENTS"      # set by the tests: a document that strays from its schema is an error


class Document(BaseModel):
    """A model that is part of a document: camelCase in JSON, snake_case in Python, either accepted on input."""
    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True, defer_build=True)   # built on first use: start-up


class Facts(Document):
    """A step's facts as its documents carry them; unknown keys are a schema violation."""
    model_config = ConfigDict(extra="forbid")


def strict() -> bool:
    return os.environ.get(STRICT_ENV) == "1"


def facts_problem(model: type[Facts], facts: dict) -> str | None:
    """Why ``facts`` do not conform to ``model`` (camelCase keys only), or None."""
    try:
        model.model_validate(facts, by_alias=True, by_name=False)
    except ValidationError as exc:
        first = exc.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return None


def camel_keys(record: dict) -> dict:
    """A flat record (a dataclass's fields) with camelCase keys; the values as they are."""
    return {to_camel(key): value for key, value in record.items()}
