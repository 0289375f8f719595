"""Fault injection on the real command: SIGTERM, SIGINT and SIGKILL during ``deepdiag run``.

Each test starts ``python -m deepdiag.cli run l2 --quick`` in a subprocess with runs long enough to be
caught in flight, waits until the store holds a first finished run, sends the signal and then checks:
no process the command started is left (workers, the resource tracker), the exit code, the finished
runs are still in the store, and (SIGTERM) the same command afterwards trains only the missing runs:
0 finished runs lost, 0 redone.
"""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import deepdiag as dd

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

EPOCHS = 300  # ~0.4 s per run on one idle thread: some runs finish, others are in flight at the signal
RUNS = 10  # the l2 study's quick grid


def command(out: Path, engine: str) -> list[str]:
    cmd = [sys.executable, "-m", "deepdiag.cli", "run", "l2", "--quick", "--set", f"epochs={EPOCHS}",
           "--out", str(out), "--engine", engine]
    return cmd + (["--workers", "2"] if engine == "process" else [])


def environment() -> dict:
    src = str(Path(dd.__file__).resolve().parents[1])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, grandchildren...), from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stored(out: Path) -> dict[str, float]:
    """hash -> finished_at of the runs in the store (empty while it does not exist yet)."""
    path = out / "runs.sqlite"
    if not path.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            return dict(db.execute("SELECT hash, finished_at FROM runs WHERE status IN ('done', 'diverged')"))
    except sqlite3.OperationalError:  # the table is being created
        return {}


def start_and_signal(out: Path, engine: str, sig: int) -> tuple[subprocess.Popen, set[int], dict]:
    """Start the command, wait for its first committed run, note its processes, send `sig`."""
    proc = subprocess.Popen(command(out, engine), env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    seen: set[int] = set()
    while not stored(out):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no run finished in time"
        seen |= descendants(proc.pid)
        time.sleep(0.2)
    seen |= descendants(proc.pid)
    before = stored(out)
    assert len(before) < RUNS, "every run finished before the signal; raise EPOCHS"
    proc.send_signal(sig)
    return proc, seen, before


def wait_gone(pids: set[int], seconds: float = 30) -> set[int]:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return {p for p in pids if alive(p)}


@pytest.mark.parametrize("engine, sig, code", [
    ("process", signal.SIGTERM, 128 + signal.SIGTERM),
    ("process", signal.SIGINT, 130),
    ("local", signal.SIGTERM, 128 + signal.SIGTERM),
], ids=["process-SIGTERM", "process-SIGINT", "local-SIGTERM"])
def test_signal_stops_cleanly_and_keeps_finished_runs(tmp_path, engine, sig, code):
    proc, seen, before = start_and_signal(tmp_path, engine, sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr
    if engine == "process":
        assert len(seen) >= 2, "the workers were never seen"
    assert not wait_gone(seen), "processes left running after the command ended"
    after = stored(tmp_path)
    assert all(after.get(h) == t for h, t in before.items())  # finished before the signal: kept as they were
    if sig == signal.SIGTERM and engine == "process":  # resume: trains only what is missing
        again = subprocess.run(command(tmp_path, engine), env=environment(), capture_output=True, text=True,
                               timeout=600)
        assert again.returncode in (0, 1), again.stderr
        final = stored(tmp_path)
        assert len(final) == RUNS  # 0 lost
        assert all(final[h] == t for h, t in after.items())  # 0 redone


def test_sigkill_of_the_driver_takes_its_workers_down(tmp_path):
    proc, seen, before = start_and_signal(tmp_path, "process", signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert len(seen) >= 2, "the workers were never seen"
    assert not wait_gone(seen), "workers outlived a SIGKILL-ed driver"
    after = stored(tmp_path)
    assert all(after.get(h) == t for h, t in before.items())
