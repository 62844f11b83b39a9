"""The processes of steps as /proc shows them: who a process is (pid and start time on this boot, so a reused pid
is never taken for the one recorded), the members of a step's process group, and what a previous service left of a
step (``OrphanGroup``), which the supervisor stops on start-up."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STEP_ENV = "CE_STEP_ID"         # in every step process's environment: the step it works for


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from its third field (state) on, or None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()
    except OSError:
        return None


def process_identity(pid: int) -> dict | None:
    """What tells this process from a later one with the same pid: its start time (clock ticks after boot, field
    22 of /proc/PID/stat) on this boot."""
    fields = proc_stat(pid)
    return {"pid": pid, "start": int(fields[19]), "boot": boot_id()} if fields else None


@dataclass
class OrphanGroup:
    """What a previous service left of one step: its process group, and whether its leader -- the step process
    itself -- was still there, provably the one recorded, when we looked."""
    step_id: str
    pgid: int
    leader: bool

    @classmethod
    def find(cls, step_id: str, worker: dict) -> "OrphanGroup | None":
        fields = proc_stat(worker["pid"])
        leader = (fields is not None and fields[0] != "Z" and process_identity(worker["pid"]) == worker)
        group = cls(step_id, worker["pid"], leader)
        return group if group.processes() else None

    def processes(self) -> list[int]:
        """The group's live processes that are provably the step's: all of them while its leader was verified
        (a process group's id is not reused while one member lives), else those carrying its CE_STEP_ID."""
        members = [p for p in group_members(self.pgid) if (proc_stat(p) or ["Z"])[0] != "Z"]
        if self.leader:
            return members
        marker = f"\0{STEP_ENV}={self.step_id}\0".encode()
        mine = []
        for pid in members:
            try:
                if marker in b"\0" + Path(f"/proc/{pid}/environ").read_bytes():
                    mine.append(pid)
            except OSError:
                pass
        return mine

    def signal(self, sig: int) -> None:
        if self.leader:
            targets = [(os.killpg, self.pgid)]
        else:
            targets = [(os.kill, pid) for pid in self.processes()]
        for kill, target in targets:
            try:
                kill(target, sig)
            except (ProcessLookupError, PermissionError):
                pass


def group_members(pgid: int) -> list[int]:
    """Processes in process group ``pgid`` that are alive, or zombies waiting for *us* to reap them (a zombie
    re-parented elsewhere is its new parent's to reap)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, pgrp = stat.read_text().rpartition(") ")[2].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and (state != "Z" or int(ppid) == os.getpid()):
            pids.append(int(stat.parent.name))
    return pids
