"""``summary.txt``, the bundle's first page for a person: the disk's state, Windows, ce's first-boot actions and their
outcomes, the errors and critical events of the last boots, ce's steps, and what the caps cut."""
from __future__ import annotations

from .. import logs
from .evtx import LogSummary, summary_lines

RULE = "=" * 78


def disk_state(filesystems: list[dict], report: dict | None, failure: str) -> list[str]:
    lines = ["Disk"]
    if not filesystems:
        lines.append("  not read (no disk given, or only ce's own logs asked for)")
    for fs in filesystems:
        flags = [f for f, on in (("BitLocker-encrypted", fs.get("bitlocker")),) if on]
        state = fs.get("ntfsState")
        if state and state != "clean":
            flags.append({"hibernated": "hibernated (Fast Startup or hibernation)",
                          "unclean": "not shut down cleanly (ntfs-3g: $LogFile unclean)",
                          "dirty": "marked dirty by Windows (a crash, or a snapshot of a running VM)"}.get(state, state))
        label = f" '{fs['label']}'" if fs.get("label") else ""
        role = f" [{fs['role']}]" if fs.get("role") and fs["role"] != "basic-data" else ""
        lines.append(f"  {fs['device']} {fs.get('type', '?')}{label}{role}: {', '.join(flags) or 'clean'}")
    if report:
        state = report.get("state", {})
        if state.get("dirtyHives"):
            lines.append(f"  hives with pending transactions (.LOG): {', '.join(state['dirtyHives'])}")
        osf = report.get("os", {})
        lines.append(f"  Windows: {osf.get('product', '?')} ({osf.get('productName', '?')}, build {osf.get('build')}."
                     f"{osf.get('ubr')}), root {osf.get('rootDevice')}, firmware {report.get('firmware', '?')}")
    if failure:
        lines.append(f"  inspect could not finish: {failure}")
    return lines


def first_boot(report: dict | None) -> list[str]:
    lines = ["ce first-boot actions (C:\\Windows\\Setup\\ce-firstboot)"]
    status = (report or {}).get("firstBoot")
    if not status:
        return lines + ["  none staged"]
    lines.append(f"  runner {'armed' if status.get('armed') else 'disarmed'}, {status.get('boots', 0)} boot(s) seen")
    for action in status.get("staged", []):
        lines.append(f"  {action['name']:<28} {action['status']:<10} attempts {action['attempts']}/{action['retries']}"
                     f"{'  (required)' if action.get('required') else ''}")
    log_lines = status.get("log", [])[-20:]
    if log_lines:
        lines.append("  last runner log lines:")
        for entry in log_lines:
            lines.append("    " + " ".join(f"{k}={v}" for k, v in entry.items())[:200])
    return lines


def text(*, header: list[str], filesystems: list[dict], report: dict | None, failure: str,
         events: list[LogSummary] | None, steps: list[str] | None, cuts: list[str]) -> bytes:
    parts = [header, disk_state(filesystems, report, failure), first_boot(report) if report is not None else [],
             summary_lines(events) if events is not None else ["Event logs", "  not collected (windowsEventLogs)"],
             ["ce steps (the step store)", *steps] if steps is not None else ["ce steps", "  not collected (ceLogs)"],
             ["Cut or left out by the caps (manifest.json has every source)", *(cuts or ["  nothing"])]]
    body = f"\n{RULE}\n".join("\n".join(p) for p in parts if p)
    return (logs.redact(body) + "\n").encode()
