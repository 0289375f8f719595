"""The real-fault benchmark's harness stays runnable: every base and every mutant builds and trains
two steps through the same loop the benchmark uses (no deepdiag verdict is asserted here: the
benchmark measures those, see docs/real_faults.md)."""
from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds benchmarks/

from benchmarks.real_faults.harness import killed, train
from benchmarks.real_faults.operators import ACCEPTED, OPERATORS, mutants
from benchmarks.real_faults.programs import bases
from deepdiag.findings import CODES

pytestmark = pytest.mark.filterwarnings("ignore")


def _two_steps(p):
    return train(replace(p, epochs=1, max_steps=2), seed=0)


@pytest.mark.parametrize("name", list(bases()))
def test_base_and_its_mutants_train_two_steps(name):
    base = bases()[name]
    programs = [base, *mutants(base)]
    assert len(programs) > 15, f"only {len(programs) - 1} operators apply to {name}"
    for p in programs:
        run = _two_steps(p)
        assert run.steps == min(2, math.ceil(len(p.data.x_train) / p.batch_size)), p.name
        assert isinstance(run.metric, float), p.name


def test_every_operator_applies_somewhere_and_accepts_known_codes():
    applied = {m.operator for b in bases().values() for m in mutants(b)}
    assert applied == set(OPERATORS)
    for op, codes in ACCEPTED.items():
        assert codes and codes <= set(CODES), (op, codes - set(CODES))


@pytest.mark.parametrize("program", ["mlp", "transformer/act_sigmoid"])
def test_watched_run_is_the_plain_run(program):
    """deepdiag (checkup forks the RNG, the Monitor only reads) must not change training; a mutant
    must run the same code with or without hooks (nn.TransformerEncoderLayer's hook-free eval fast
    path once kept ReLU after the activation swap)."""
    base, _, op = program.partition("/")
    p = bases()[base] if not op else next(m for m in mutants(bases()[base], [op]))
    p = replace(p, epochs=1, max_steps=3)
    assert train(p, 0, watch=True).metric == train(p, 0).metric


def test_kill_criterion():
    base = [0.90, 0.92, 0.91]  # sd 0.01: 3 sd = 0.03 > floor 0.02
    assert not killed(base, 0.885, True, "classification")
    assert killed(base, 0.875, True, "classification")
    assert killed(base, 0.95, False, "classification")  # a non-finite loss is a fault
    assert killed([0.1, 0.1, 0.1], 0.12, True, "regression") and not killed([0.1, 0.1, 0.1], 0.105, True, "regression")
