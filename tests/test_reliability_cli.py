"""The command's exit codes (0 fine, 1 finding / not reproduced, 2 usage, 3 the user's code, 4 internal),
a reader that stops early, user text that looks like markup, and errors that name what the user gave."""
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import deepdiag as dd
from deepdiag import study as S
from deepdiag.cli import app, parse_value

runner = CliRunner()


@dataclass(frozen=True)
class RelToyConfig:
    width: int = 4
    rate: float = 0.5


def _measure(config, seeds):
    checks = [S.check_rule("ok", "the toy holds", config.width, 4, "width > 0", config.width > 0)]
    return S.Measurement(checks, pd.DataFrame({"experiment": ["t"] * len(seeds), "seed": seeds}))


S.register(S.Study("reltoy", claim='"toys hold"', theory="none", config=RelToyConfig, quick={"width": 2},
                   measure=_measure, plot=lambda result, folder: [], seeds_quick=2))

FACTORIES = '''
import sys
import torch
from torch import nn

def healthy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))

def exits():
    sys.exit(0)

def bracketed():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("[/]", nn.Linear(20, 8))
    model.add_module("[bold]act", nn.ReLU())
    model.add_module("out[/]", nn.Linear(8, 3))
    for p in model.parameters():
        nn.init.zeros_(p)  # symmetric units: a finding that names these layers
    return model, torch.randn(64, 20), torch.randint(0, 3, (64,)), nn.CrossEntropyLoss()

class Crashes(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(20, 3)

    def forward(self, x):
        raise RuntimeError("the user's forward failed")

def crashes():
    return Crashes(), torch.randn(8, 20)
'''


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(FACTORIES)
    return path


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", **(env or {})})


def one_line(result) -> str:
    """The one error line (progress lines such as "running ..." may precede it)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_factory_calling_sys_exit_is_the_users_code_failing(factory_file):
    result = invoke("check", f"{factory_file}:exits")
    assert result.exit_code == 3, result.output
    assert "sys.exit(0)" in one_line(result)


def test_module_failing_on_import_is_the_users_code_failing(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("import torch\nraise ImportError('no module named fancy_layers')\n")
    result = invoke("check", f"{path}:build")
    assert result.exit_code == 3, result.output
    assert "fancy_layers" in one_line(result) and "bad.py" in one_line(result)


def test_forward_failing_inside_checkup_is_the_users_code_failing(factory_file):
    result = invoke("check", f"{factory_file}:crashes")
    assert result.exit_code == 3, result.output
    assert "the user's forward failed" in one_line(result)


def test_a_failure_inside_deepdiag_is_an_internal_error(factory_file, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("an internal bug")

    monkeypatch.setattr(dd, "checkup", broken)
    result = invoke("check", f"{factory_file}:healthy")
    assert result.exit_code == 4, result.output
    line = one_line(result)
    assert "internal error" in line and "please report" in line and "KeyError" in line
    debug = invoke("--debug", "check", f"{factory_file}:healthy")
    assert isinstance(debug.exception, KeyError)  # --debug: the real exception, with its traceback


def test_layer_names_that_look_like_markup_are_printed_as_they_are(factory_file):
    result = invoke("check", f"{factory_file}:bracketed", "--fail-on", "warning")
    assert result.exit_code == 1, result.output  # symmetric units found, nothing crashed
    assert "[/]" in result.stdout and "[bold]act" in result.stdout or "out[/]" in result.stdout


def test_broken_pipe_keeps_the_exit_code_and_stays_quiet(factory_file):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(dd.__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "deepdiag.cli", "check", f"{factory_file}:healthy"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the first line (`| head -0`)
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, stderr  # the healthy model's code, not click's EPIPE exit 1
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "Exception ignored" not in stderr


def test_set_with_a_non_finite_value_names_the_knob():
    for raw in ("inf", "nan", "-inf", "1,inf"):
        with pytest.raises(Exception) as info:
            parse_value("a_values", raw, (0.9, 1.0, 1.1))
        assert "a_values" in str(info.value) and "finite" in str(info.value)
    result = invoke("run", "vanishing", "--quick", "--set", "a_values=inf")
    assert result.exit_code == 2 and "a_values" in one_line(result) and "gain" not in one_line(result)


def test_out_that_is_a_file_names_out(tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a directory")
    result = invoke("run", "reltoy", "--quick", "--out", target)
    assert result.exit_code == 2, result.output
    line = one_line(result)
    assert "--out" in line and str(target) in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_out_names_out(tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o555)
    try:
        result = invoke("run", "reltoy", "--quick", "--out", target)
    finally:
        target.chmod(0o755)
    assert result.exit_code == 2 and "--out" in one_line(result)


def test_full_disk_names_out(tmp_path, monkeypatch):
    """A disk that fills up while results are written: ENOSPC from the writer, reported against --out."""
    import errno

    from deepdiag import atomic

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(atomic, "write_bytes", full)
    result = invoke("run", "reltoy", "--quick", "--out", tmp_path)
    assert result.exit_code == 2, result.output
    line = one_line(result)
    assert "--out" in line and "No space left" in line


def test_help_lists_the_exit_codes():
    result = invoke("--help")
    assert result.exit_code == 0
    for words in ("2 usage error", "3 your code", "4 internal error"):
        assert words in " ".join(result.stdout.split()), result.stdout
