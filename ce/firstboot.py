"""First boot: work that needs the running OS, staged offline, run once as SYSTEM before the logon screen.

Mechanism: ``HKLM\\SYSTEM\\Setup`` ``CmdLine`` + ``SetupType`` = 2 (Microsoft KB 939857: winlogon runs CmdLine as
SYSTEM, then shows the logon screen). CmdLine starts Windows' own PowerShell on a static runner script; no binary
of ours is needed. Every action is a static script shipped in ``ce/data/firstboot/`` plus a JSON file of
parameters it reads as data: a job value never becomes script text, so it cannot execute.

The runner counts an attempt *before* running an action (a crash still uses it up), stops retrying an action at
its cap, never reboots to retry, caps the boots it takes part in, clears ``CmdLine``/``SetupType`` when nothing
is left, and appends one JSON line per event to ``firstboot.log``, which ``ce inspect`` reads offline.
"""
from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from typing import Literal

from .document import Document

from .errors import FirstBootPlanUnreadable, InvalidFirstBootAction, SetupInProgress
from .registry import RegType

SETUP_KEY = "Setup"
RUNNER = "runner.ps1"
MAX_BOOTS = 10
ACTION_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
SCRIPT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,60}\.ps1$")
SAFE_PARAM = re.compile(r"^[A-Za-z0-9 ._:/\\{}()=,+-]*$")


class FirstBootAction(Document):
    kind: Literal["first_boot_action"] = "first_boot_action"
    id: str                       # name + digest of script and params: changed params make a new action
    name: str
    script: str
    params: dict
    retries: int
    required: bool
    timeout: int                  # seconds the runner waits before it kills the action
    reason: str = ""

    def describe(self) -> str:
        return f"stage  first-boot action {self.name} (retries {self.retries}{', required' if self.required else ''})"


def folder(systemroot: str) -> str:
    """Windows path of the staging folder for a root whose systemroot is a guest path like ``/Windows``."""
    return "C:" + systemroot.replace("/", "\\") + r"\Setup\ce-firstboot"


def command_line(systemroot: str) -> str:
    win = "C:" + systemroot.replace("/", "\\")
    return (rf"{win}\System32\WindowsPowerShell\v1.0\powershell.exe -NoProfile -NonInteractive "
            rf"-ExecutionPolicy Bypass -File {folder(systemroot)}\{RUNNER}")


def script_text(name: str) -> bytes:
    return resources.files("ce").joinpath(f"data/firstboot/{name}").read_bytes()


def check_param(key: str, value) -> None:
    """Parameters are data, but a second fence costs nothing: only plain printable tokens are staged."""
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, bool) or isinstance(v, int):
            continue
        if not isinstance(v, str) or not SAFE_PARAM.match(v) or len(v) > 1024:
            raise InvalidFirstBootAction(f"first-boot parameter {key} = {v!r} contains characters that are "
                                         f"never staged (quotes, %, $, &, |, ;, <, >, ` or control characters)")


def make_action(name: str, script: str, params: dict, *, retries: int, required: bool, timeout: int,
                reason: str) -> FirstBootAction:
    if not ACTION_NAME.match(name) or not SCRIPT_NAME.match(script):
        raise InvalidFirstBootAction(f"first-boot action {name!r} / script {script!r}: names are lower-case "
                                     f"letters, digits and hyphens")
    script_text(script)                                   # must ship with ce
    for key, value in params.items():
        check_param(key, value)
    if not 1 <= retries <= 5:
        raise InvalidFirstBootAction(f"first-boot action {name}: retries must be 1..5, not {retries}")
    digest = hashlib.sha256(json.dumps([script, params], sort_keys=True).encode()).hexdigest()[:8]
    return FirstBootAction(id=f"{name}-{digest}", name=name, script=script, params=params, retries=retries,
                           required=required, timeout=timeout, reason=reason)


def staged_plan(actions: list[FirstBootAction]) -> bytes:
    doc = {"version": 1, "max_boots": MAX_BOOTS,
           "actions": [a.model_dump(exclude={"kind", "reason"}) for a in actions]}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def read_staged(guest, systemroot: str) -> list[FirstBootAction]:
    path = guest.win_path(folder(systemroot) + r"\plan.json")
    if not guest.is_file(path):
        return []
    try:
        return [FirstBootAction(**a) for a in json.loads(guest.read_bytes(path))["actions"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise FirstBootPlanUnreadable(f"{folder(systemroot)}\\plan.json is not a first-boot plan ce wrote "
                                      f"({exc})") from None


def stage(planner, new: list[FirstBootAction]) -> None:
    """Plan the files and registry values that make ``new`` (plus anything already staged) run at first boot."""
    if not new:
        return
    systemroot = planner.root.systemroot
    staged = read_staged(planner.guest, systemroot)
    merged = {a.id: a for a in staged} | {a.id: a for a in new}
    base = folder(systemroot)
    require_setup_free(planner, command_line(systemroot))
    write = lambda rel, data, why: planner.write_bytes(f"{base}\\{rel}", data, reason=why)   # noqa: E731
    write(RUNNER, script_text(RUNNER), "first-boot runner (static script)")
    for script in sorted({a.script for a in merged.values()}):       # one copy of a script several actions use
        write(f"actions\\{script}", script_text(script), f"first-boot action script {script}")
    for action in merged.values():
        write(f"actions\\{action.id}.json", (json.dumps(action.params, indent=2, sort_keys=True) + "\n").encode(),
              f"parameters of first-boot action {action.name} (data, never executed)")
    write("plan.json", staged_plan(list(merged.values())), "the first-boot actions and their retry caps")
    planner.set("SYSTEM", SETUP_KEY, "CmdLine", RegType.SZ, command_line(systemroot),
                reason="run the first-boot runner as SYSTEM before logon (KB 939857)")
    planner.set("SYSTEM", SETUP_KEY, "SetupType", RegType.DWORD, 2,
                reason="2 = run CmdLine, then show the logon screen (no reboot)")


def require_setup_free(planner, ours: str) -> None:
    """A generalized (sysprepped) image uses CmdLine for Windows Setup itself: never take it over."""
    current = planner.hive("SYSTEM").get_data(SETUP_KEY, "CmdLine")
    if current and current != ours:
        raise SetupInProgress(f"HKLM\\SYSTEM\\Setup\\CmdLine is {current!r}: the image is in the middle of Windows "
                              f"Setup (sysprep / OOBE); finish or undo that before staging first-boot actions")


class FirstBootStatus(Document):
    staged: list[dict] = []       # {id, name, required, retries, status, attempts}
    boots: int = 0
    armed: bool = False           # CmdLine still points at the runner
    log: list[dict] = []          # the runner's JSON lines, newest last


def read_status(guest, systemroot: str, setup_cmdline: str | None) -> FirstBootStatus | None:
    """What was staged and what the runner recorded, read offline; None when nothing was ever staged."""
    staged = read_staged(guest, systemroot)
    if not staged:
        return None
    base = folder(systemroot)
    state = read_json(guest, base + r"\state.json") or {}
    per_action = state.get("actions", {})
    rows = [{"id": a.id, "name": a.name, "required": a.required, "retries": a.retries,
             "status": per_action.get(a.id, {}).get("status", "pending"),
             "attempts": per_action.get(a.id, {}).get("attempts", 0)} for a in staged]
    return FirstBootStatus(staged=rows, boots=state.get("boots", 0), log=read_log(guest, base + r"\firstboot.log"),
                           armed=setup_cmdline == command_line(systemroot))


def read_json(guest, win_path: str) -> dict | None:
    path = guest.win_path(win_path)
    if not guest.is_file(path):
        return None
    try:
        return json.loads(guest.read_bytes(path).decode("utf-8-sig"))
    except ValueError:
        return None


def read_log(guest, win_path: str, last: int = 50) -> list[dict]:
    path = guest.win_path(win_path)
    if not guest.is_file(path):
        return []
    lines = guest.read_bytes(path).decode("utf-8-sig", "replace").splitlines()[-last:]
    out = []
    for line in lines:
        try:
            out.append(json.loads(line.lstrip("\ufeff")))
        except ValueError:
            out.append({"status": "unparsed", "detail": line[:200]})
    return out
