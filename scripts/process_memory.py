"""Memory of a command and the processes it forks (translation workers, training helpers), for the
benchmarks: proportional set sizes summed, so pages the processes share are counted once."""

from __future__ import annotations

import re
import threading
from pathlib import Path


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc)."""
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                pids += process_tree(int(child))
    except OSError:  # it ended while we looked
        pass
    return pids


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_kib(pid: int) -> int:
    return sum(pss_kib(each) for each in process_tree(pid))


def status_kib(pid: int, key: str) -> int:
    """A figure of /proc/PID/status in KiB (VmRSS, VmHWM, ...); 0 once the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"{key}:\s+(\d+) kB", status)
    return int(match.group(1)) if match else 0


def peak_rss_kib(pid: int) -> int:
    """The process' own high-water mark (VmHWM): exact, but blind to its children."""
    return status_kib(pid, "VmHWM")


class PeakSampler:
    """In a thread, the largest summed PSS of a process tree, sampled every `interval` seconds,
    and the root's own high-water mark: `peak_kib` is the larger of the two."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval = pid, interval
        self.tree_kib = self.root_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        self.tree_kib = max(self.tree_kib, tree_pss_kib(self.pid))
        self.root_kib = max(self.root_kib, peak_rss_kib(self.pid))

    def stop(self) -> int:
        """Stop sampling (before the process is killed) and return the peak in KiB."""
        self.sample()
        self._stop.set()
        self._thread.join()
        return max(self.tree_kib, self.root_kib)
