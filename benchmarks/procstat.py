"""Where a benchmark's CPU goes: every process's CPU time from /proc, by role.

`benchmarks/gateway.py --breakdown` samples all processes while pgbench runs and
reports microseconds of CPU per transaction for each role (pgbench, the target
database's backends, the gateway, its shipper, `accord worker`, ...) beside the
machine's idle time. Processes that start during the window (pgbench and its backends)
count from zero; one that exits counts up to the last sample before it did, so short
lives lose at most one sampling interval.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, int] | None:
    """(start time, utime + stime) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[19]), int(fields[11]) + int(fields[12])


def own_seconds(pid: int) -> float:
    """utime + stime of one process, without its children (0 once it has exited)."""
    stat = _stat(pid)
    return 0.0 if stat is None else stat[1] / TICK


def threads(pid: int) -> list[int]:
    """The thread ids of a process (none once it has exited)."""
    try:
        return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return []


def _machine() -> dict[str, int]:
    lines = Path("/proc/stat").read_text().splitlines()
    v = [int(x) for x in lines[0].split()[1:]]
    ctxt = next(int(line.split()[1]) for line in lines if line.startswith("ctxt "))
    return {"idle": v[3] + v[4], "ctxt": ctxt}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            "utf-8", "replace")
    except OSError:
        return ""


def descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            for k in kids:
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


class Breakdown:
    """Sample every process from `start()` to `stop()`; `role(pid)` names each (None: skip).

    Only processes with a role are read again at each sample (kernel threads and the
    like are looked at once), so sampling costs the machine well under 1 % of a core."""

    def __init__(self, role: Callable[[int], str | None], interval: float = 0.25) -> None:
        self.role = role
        self.interval = interval
        self._roles: dict[tuple[int, int], str | None] = {}
        self._skip: dict[int, bool] = {}  # pids without a role (pid reuse within a run: rare)
        self._first: dict[tuple[int, int], int] = {}
        self._last: dict[tuple[int, int], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._machine0: dict[str, int] = {}

    def _sample(self, initial: bool = False) -> None:
        for name in os.listdir("/proc"):  # noqa: PTH208 - no Path per entry, 4 times a second
            if not name.isdigit():
                continue
            pid = int(name)
            skip = self._skip.get(pid)
            if skip is not None:
                continue
            now = _stat(pid)
            if now is None:
                continue
            key = (pid, now[0])
            if key not in self._roles:
                role = self._roles[key] = self.role(pid)
                if role is None:
                    self._skip[pid] = True
                    continue
                self._first[key] = now[1] if initial else 0
            self._last[key] = now[1]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._sample(initial=True)
        self._machine0 = _machine()
        self._thread.start()

    def stop(self, transactions: float) -> dict[str, float]:
        """Microseconds of CPU per transaction by role (network softirq work is in the
        figures of whichever process it interrupted), plus the machine's idle time and
        context switches per transaction."""
        self._stop.set()
        self._thread.join()
        self._sample()
        machine = _machine()
        by_role: dict[str, int] = {}
        for key, role in self._roles.items():
            if role is not None and key in self._last:
                by_role[role] = by_role.get(role, 0) + self._last[key] - self._first[key]
        per_tx = 1e6 / TICK / transactions
        out = {role: round(ticks * per_tx, 1) for role, ticks in sorted(
            by_role.items(), key=lambda kv: -kv[1]) if ticks}
        out["machine_idle"] = round((machine["idle"] - self._machine0["idle"]) * per_tx, 1)
        out["context_switches"] = round((machine["ctxt"] - self._machine0["ctxt"])
                                        / transactions, 2)
        return out
