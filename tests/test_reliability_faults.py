"""Fault injection beyond test_reliability_signals: SIGKILL and SIGINT of ``deepdiag run`` on the local
engine, SIGKILL on the process engine, each followed by the same command: 0 finished runs lost, 0 redone,
no process left; and a disk that fills up during ``run`` (a file-size limit): exit 2 naming --out,
finished runs kept, the next run redoes nothing."""
import os
import resource
import signal
import subprocess
import sys

import pytest
from test_reliability_signals import RUNS, command, environment, start_and_signal, stored, wait_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.mark.parametrize("engine, sig, code", [
    pytest.param("local", signal.SIGKILL, -signal.SIGKILL, id="local-SIGKILL"),
    pytest.param("local", signal.SIGINT, 130, id="local-SIGINT"),
    pytest.param("process", signal.SIGKILL, -signal.SIGKILL, id="process-SIGKILL"),
])
def test_resume_after_a_signal_loses_and_redoes_nothing(tmp_path, engine, sig, code):
    proc, seen, before = start_and_signal(tmp_path, engine, sig)
    proc.communicate(timeout=60)
    assert proc.returncode == code
    assert not wait_gone(seen), "processes left running after the command ended"
    after = stored(tmp_path)
    assert all(after.get(h) == t for h, t in before.items())  # committed before the signal: kept
    again = subprocess.run(command(tmp_path, engine), env=environment(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode in (0, 1), again.stderr
    assert "Traceback" not in again.stderr
    final = stored(tmp_path)
    assert len(final) == RUNS  # 0 lost
    assert all(final[h] == t for h, t in after.items())  # 0 redone


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))  # the report (~4 MB) cannot fit
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no file-size limit on this platform")
def test_a_disk_filling_up_during_run_keeps_every_finished_run(tmp_path):
    cmd = [sys.executable, "-m", "deepdiag.cli", "run", "l2", "--quick", "--set", "epochs=3", "--out",
           str(tmp_path)]
    full = subprocess.run(cmd, env=environment(), capture_output=True, text=True, timeout=600,
                          preexec_fn=_limit_file_size)
    assert full.returncode == 2, full.stderr
    assert "--out" in full.stderr and "Traceback" not in full.stderr
    runs = stored(tmp_path)
    assert len(runs) == RUNS  # every run trained before the disk filled is in the store
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]  # no torn temporary file left
    again = subprocess.run(cmd, env=environment(), capture_output=True, text=True, timeout=600)
    assert again.returncode in (0, 1), again.stderr
    assert stored(tmp_path) == runs  # nothing retrained
    assert (tmp_path / "report.html").stat().st_size > 1_000_000
    assert os.path.exists(tmp_path / "l2" / "result.json")
