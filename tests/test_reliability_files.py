"""Damaged and unwritable files: a bad result file is named, set aside and rebuilt, never blocking the
directory; a damaged run store is named and ``--fresh`` replaces it; the MNIST cache heals; every result
file is written atomically (a failed write leaves the previous version whole)."""
import json
import os
import resource
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import deepdiag as dd
from deepdiag import study as S
from deepdiag.cli import app
from deepdiag.store import Store

runner = CliRunner()


@dataclass(frozen=True)
class FileToyConfig:
    width: int = 4


def _measure(config, seeds):
    checks = [S.check_rule("ok", "the toy holds", config.width, 4, "width > 0", config.width > 0)]
    return S.Measurement(checks, pd.DataFrame({"experiment": ["t"] * len(seeds), "seed": seeds}))


for _name in ("filetoy_a", "filetoy_b"):
    S.register(S.Study(_name, claim='"toys hold"', theory="none", config=FileToyConfig, quick={"width": 2},
                       measure=_measure, plot=lambda result, folder: [], seeds_quick=2))


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture
def results(tmp_path):
    """A results directory with two studies."""
    assert invoke("run", "filetoy_a", "filetoy_b", "--quick", "--out", tmp_path).exit_code == 0
    return tmp_path


def test_truncated_result_json_is_named_set_aside_and_rebuilt(results):
    damaged = results / "filetoy_a" / "result.json"
    text = damaged.read_text()
    damaged.write_text(text[: len(text) // 2])  # what a crash mid-write used to leave
    report = invoke("report", results)
    assert report.exit_code == 0, report.output  # the other study still makes a report
    assert str(damaged) in report.stderr and "damaged" in report.stderr
    assert not damaged.exists() and list(damaged.parent.glob("result.json.corrupt-*"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(dd.load_results(results).studies["study"]) == ["filetoy_b"]  # nothing left to warn about
    again = invoke("run", "filetoy_a", "filetoy_b", "--quick", "--out", results)
    assert again.exit_code == 0, again.output
    assert json.loads(damaged.read_text())["verdict"] == "reproduced"  # rebuilt by the next run


@pytest.mark.parametrize("content", ["[1, 2]", '{"name": "filetoy_a"}', "\x00\xff garbage"],
                         ids=["not-a-dict", "missing-keys", "binary"])
def test_result_json_that_is_not_a_result_is_set_aside(results, content):
    damaged = results / "filetoy_a" / "result.json"
    damaged.write_bytes(content.encode("latin-1"))
    with pytest.warns(UserWarning, match="filetoy_a"):
        res = dd.load_results(results)
    assert list(res.studies["study"]) == ["filetoy_b"]


def test_damaged_data_csv_is_set_aside(results):
    csv = results / "filetoy_a" / "data.csv"
    csv.write_bytes(b'"unterminated\n1,2,3\n')
    with pytest.warns(UserWarning, match="data.csv"):
        res = dd.load_results(results)
    assert res.data["filetoy_a"].empty and list(csv.parent.glob("data.csv.corrupt-*"))


def test_garbage_store_is_named_and_fresh_sets_it_aside(results):
    store = results / "runs.sqlite"
    for side in (store.with_name("runs.sqlite-wal"), store.with_name("runs.sqlite-shm")):
        side.unlink(missing_ok=True)
    store.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="runs.sqlite"):
        dd.load_results(results)
    report = invoke("report", results)
    assert report.exit_code == 2 and str(store) in error_line(report)
    plain = invoke("run", "filetoy_a", "--quick", "--out", results)
    assert plain.exit_code == 2 and "--fresh" in error_line(plain)
    fresh = invoke("run", "filetoy_a", "--quick", "--out", results, "--fresh")
    assert fresh.exit_code == 0, fresh.output
    assert list(results.glob("runs.sqlite.corrupt-*"))  # the damaged bytes are kept, not dropped
    assert len(Store(store)) == 0  # a new, working store


def test_zero_byte_store_reads_as_empty(tmp_path):
    """SQLite treats a 0-byte file as an empty database: nothing was in it, so nothing is lost."""
    (tmp_path / "runs.sqlite").write_bytes(b"")
    assert dd.load_results(tmp_path).sweeps.empty


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only files")
def test_read_only_store_is_named(tmp_path):
    Store(tmp_path / "runs.sqlite").close()
    for p in tmp_path.iterdir():
        p.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="runs.sqlite"):
            dd.sweep({"epochs": 1}, {"width": [4]}, seeds=1, engine="local", store=tmp_path, progress=False)
    finally:
        tmp_path.chmod(0o755)


def test_truncated_mnist_cache_heals(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPDIAG_CACHE", str(tmp_path))
    first = dd.data.load("mnist", n_train=100)
    cache = tmp_path / "mnist_5k.npz"
    whole = cache.read_bytes()
    cache.write_bytes(whole[: len(whole) // 3])
    with pytest.warns(RuntimeWarning, match="mnist_5k.npz"):
        healed = dd.data.load("mnist", n_train=100)
    np.testing.assert_array_equal(np.asarray(healed.x_train), np.asarray(first.x_train))
    assert cache.read_bytes() == whole  # rebuilt in place


def test_atomic_write_that_fails_keeps_the_old_file(tmp_path):
    from deepdiag import atomic

    path = tmp_path / "result.json"
    atomic.write_text(path, "old and whole")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with atomic.temporary_path(path) as tmp:
            tmp.write_text("half")
            raise Boom
    assert path.read_text() == "old and whole"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left behind


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    from deepdiag import atomic

    mask = os.umask(0o022)
    try:
        path = atomic.write_text(tmp_path / "report.html", "x")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no file-size limit on this platform")
def test_report_on_a_full_disk_keeps_the_old_report(results):
    """A file-size limit stands in for a full disk: the report (a few MB) cannot be written."""
    report = results / "report.html"
    before = report.read_bytes()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(dd.__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "deepdiag.cli", "report", str(results)], env=env,
                          capture_output=True, text=True, timeout=120, preexec_fn=_limit_file_size)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "report.html" in proc.stderr
    assert report.read_bytes() == before  # the previous report, whole
    assert not [p for p in results.iterdir() if ".tmp-" in p.name]
