"""Sub-commands completed when they are parsed, so that a command imports only what it runs.

``ce --help`` lists every command from its help line alone; ``ce hash ...`` loads the hash step type and no other
step module (nor the pydantic models those define). The ``ce.steps`` entry point stays the registry
(``ce.step.step_types``); a module it names may also offer ``COMMANDS``, an index of its step commands
(``{command: (help, load)}``, see steps/__init__.py) read without importing a step. When a module offers none, every
step type is loaded first and the commands come from them, as before.
"""
from __future__ import annotations

import argparse
import importlib
from typing import Callable

ENTRY_POINT_GROUP = "ce.steps"          # ce.step.ENTRY_POINT_GROUP


class Parser(argparse.ArgumentParser):
    """An argument parser that runs ``fill(parser)`` once, right before it first parses: a sub-command's parser
    gets its step's arguments and defaults only when that sub-command is the one given."""

    def __init__(self, *args, fill: Callable[[Parser], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fill = fill

    def filled(self) -> Parser:
        fill, self.fill = self.fill, None
        if fill:
            fill(self)
        return self

    def parse_known_args(self, args=None, namespace=None):
        return super(Parser, self.filled()).parse_known_args(args, namespace)


def fill_all(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` and every sub-command under it, complete (for ``ce completion``)."""
    if isinstance(parser, Parser):
        parser.filled()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                fill_all(child)
    return parser


class StepTypes:
    """The step types, loaded when a command needs them: every one (``ce steps``, ``plan``, ``run``, ``inspect``,
    ``completion``), or only the one a step command runs."""

    def __init__(self, types: dict | None = None):
        self.loaded = types
        self.index = None if types is not None else indexed_commands()

    def all(self) -> dict:
        if self.loaded is None:
            from ..step import step_types
            self.loaded = step_types()
        return self.loaded

    def commands(self) -> dict[str, tuple[str, Callable]]:
        """{command: (help, load)} of the step commands, in the order of their step names."""
        if self.index is not None:
            return self.index
        return {kind.cli.command: (kind.cli.help, lambda kind=kind: kind) for kind in self.all().values() if kind.cli}


def indexed_commands() -> dict[str, tuple[str, Callable]] | None:
    """The step commands of the ``ce.steps`` entry point's ``COMMANDS`` index; None when its module has none."""
    from importlib.metadata import entry_points
    entries = entry_points(group=ENTRY_POINT_GROUP)
    if len(entries) != 1:                 # several: their commands interleave by step name, known once loaded
        return None
    return getattr(importlib.import_module(next(iter(entries)).module), "COMMANDS", None)
