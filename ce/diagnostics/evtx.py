"""Windows event logs (.evtx) decoded for ``summary.txt``: the errors and critical events of the last boots.

The .evtx files themselves go into the bundle byte for byte; this module only reads them to tell a person where
to look. The parser is PyPI ``evtx`` (pyevtx-rs: Python bindings of the Rust ``evtx`` crate), chosen over
``python-evtx`` and Debian's ``python3-evtx`` / ``python3-libevtx`` because it is maintained (0.14, 2025), ships
manylinux wheels (nothing to compile on the CE image), decodes a 1600-record System log in ~0.02 s where the
pure-Python parser takes seconds, and reads the "dirty" logs an offline copy of a Windows that did not shut down
cleanly always has (reference/uefi-differencing-diagnostics.md §8). A file it cannot read is named in the summary
with the parser's reason, never fatal: the raw file is in the bundle anyway.

A boot is where the System log says the machine started: Kernel-General event 12 ("The operating system started")
or EventLog event 6005 ("The Event log service was started"). Without either (a log of another channel, or one
that wrapped) the summary falls back to the newest events.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

log = logging.getLogger("ce.diagnostics")

LEVELS = {0: "always", 1: "critical", 2: "error", 3: "warning", 4: "info", 5: "verbose"}
PROBLEM_LEVELS = (1, 2)
BOOT_MARKERS = {("Microsoft-Windows-Kernel-General", 12), ("EventLog", 6005)}
MAX_RECORDS = 500_000              # per file: a bound on the time a corrupt or huge log can take
MAX_PROBLEMS = 2000                # error / critical events kept per file (the newest)
MESSAGE_CHARS = 200


def parser_version() -> str:
    try:
        return f"evtx {version('evtx')}"
    except PackageNotFoundError:
        return "evtx (version unknown)"


@dataclass(frozen=True)
class Event:
    time: str                      # ISO 8601 UTC, as the record says (sorts as text)
    log: str                       # the file's name in the bundle
    channel: str
    provider: str
    event_id: int
    level: int
    record_id: int
    text: str = ""

    def line(self) -> str:
        text = f": {self.text}" if self.text else ""
        return (f"{self.time[:19]}Z  {LEVELS.get(self.level, str(self.level)):<8} {self.channel or self.log}  "
                f"{self.provider} event {self.event_id}{text}")


@dataclass
class LogSummary:
    name: str                      # the file's name in the bundle
    records: int = 0
    first: str = ""
    last: str = ""
    levels: Counter = field(default_factory=Counter)
    problems: list[Event] = field(default_factory=list)
    boots: list[str] = field(default_factory=list)
    error: str = ""                # why the file could not be read (fully)
    truncated: bool = False        # stopped at MAX_RECORDS


def read_log(path: str, name: str) -> LogSummary:
    """Every record's level and time; the error / critical events and the boot markers kept."""
    from evtx import PyEvtxParser     # imported here: only a diagnostics step needs the native module

    summary = LogSummary(name=name)
    try:
        records = PyEvtxParser(str(path)).records_json()
        for record in records:
            if summary.records >= MAX_RECORDS:
                summary.truncated = True
                break
            event = decode(record, name)
            if event is None:
                continue
            summary.records += 1
            summary.levels[event.level] += 1
            summary.first = min(summary.first or event.time, event.time)
            summary.last = max(summary.last, event.time)
            if (event.provider, event.event_id) in BOOT_MARKERS:
                summary.boots.append(event.time)
            if event.level in PROBLEM_LEVELS:
                summary.problems.append(event)
                if len(summary.problems) > 2 * MAX_PROBLEMS:
                    summary.problems = sorted(summary.problems, key=lambda e: e.time)[-MAX_PROBLEMS:]
    except (RuntimeError, OSError, ValueError) as exc:     # the parser raises RuntimeError for a broken file
        summary.error = " ".join(str(exc).split())[:300] or type(exc).__name__
        log.info("%s: %s", name, summary.error)
    summary.problems = sorted(summary.problems, key=lambda e: e.time)[-MAX_PROBLEMS:]
    summary.boots.sort()
    return summary


def decode(record: dict, name: str) -> Event | None:
    try:
        event = json.loads(record["data"])["Event"]
        system = event["System"]
    except (KeyError, TypeError, ValueError):
        return None
    event_id = system.get("EventID")
    if isinstance(event_id, dict):
        event_id = event_id.get("#text")
    provider = system.get("Provider") or {}
    provider = provider.get("#attributes", {}).get("Name", "") if isinstance(provider, dict) else str(provider)
    created = system.get("TimeCreated") or {}
    when = created.get("#attributes", {}).get("SystemTime", "") if isinstance(created, dict) else ""
    return Event(time=when or str(record.get("timestamp", "")), log=name, channel=str(system.get("Channel") or ""),
                 provider=provider, event_id=_int(event_id), level=_int(system.get("Level")),
                 record_id=_int(record.get("event_record_id")),
                 text=flatten(event.get("EventData") or event.get("UserData"))[:MESSAGE_CHARS])


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def flatten(data) -> str:
    """An event's data as one line: its values in order (the message templates live in DLLs of the image, not in
    the log, so the values are what an offline reader can show)."""
    out: list[str] = []

    def walk(obj) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key != "#attributes":
                    walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)
        elif obj not in (None, ""):
            out.append(" ".join(str(obj).split()))

    walk(data)
    return "; ".join(out)


def summary_lines(logs: list[LogSummary], boots: int = 3, limit: int = 60) -> list[str]:
    """The event-log part of summary.txt: per file a line, then the last ``boots`` boots' errors and critical
    events (newest ``limit``), then the most frequent ones over every file."""
    lines = [f"Event logs (decoded with {parser_version()})"]
    if not logs:
        return lines + ["  none collected"]
    for s in logs:
        counts = ", ".join(f"{s.levels[level]} {LEVELS[level]}" for level in (1, 2, 3) if s.levels[level])
        span = f", {s.first[:19]}Z .. {s.last[:19]}Z" if s.records else ""
        note = f"; could not be read fully: {s.error}" if s.error else ""
        note += f"; stopped after {MAX_RECORDS} records" if s.truncated else ""
        lines.append(f"  {s.name}: {s.records} records{span}{', ' + counts if counts else ''}{note}")
    starts = sorted({t for s in logs for t in s.boots})
    problems = sorted((e for s in logs for e in s.problems), key=lambda e: e.time)
    lines.append("")
    if starts:
        since = starts[-boots] if len(starts) >= boots else starts[0]
        recent = [e for e in problems if e.time >= since]
        lines.append(f"Errors and critical events of the last {min(boots, len(starts))} boot(s) (boots seen: "
                     f"{len(starts)}; the last started {starts[-1][:19]}Z)")
    else:
        recent = problems
        lines.append("Errors and critical events, newest last (no boot marker in the logs: System event 12 / 6005)")
    if not recent:
        lines.append("  none")
    shown = recent[-limit:]
    if len(recent) > len(shown):
        lines.append(f"  ... {len(recent) - len(shown)} earlier ones left out")
    marks = iter(s for s in starts)
    next_boot = next(marks, None)
    for event in shown:
        while next_boot is not None and next_boot <= event.time:
            if shown[0].time <= next_boot:
                lines.append(f"  -- boot at {next_boot[:19]}Z")
            next_boot = next(marks, None)
        lines.append("  " + event.line())
    frequent = Counter((e.channel or e.log, e.provider, e.event_id, e.level) for e in problems).most_common(15)
    if frequent:
        lines += ["", "Most frequent errors and critical events (all collected logs)"]
        lines += [f"  {n:>5}x  {LEVELS.get(level, level):<8} {channel}  {provider} event {event_id}"
                  for (channel, provider, event_id, level), n in frequent]
    return lines
