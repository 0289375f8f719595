"""Gradients carried over between optimizer steps (optimizer.zero_grad() forgotten): named by the Monitor
from the mechanism (``.grad`` not reset when backward brings the fresh gradient), never for loops that
zero, accumulate on purpose or evaluate between steps."""
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import deepdiag as dd
from deepdiag.measure.records import CarryFacts
from deepdiag.monitor import Monitor
from deepdiag.rules.updates import CARRY_RUN, carried_gradients

STEPS = 24  # > CARRY_RUN + 1: a loop that never zeroes carries over at steps 1..23


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.rnn, self.out = nn.Embedding(12, 8), nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 3)

    def forward(self, x):
        h, _ = self.rnn(self.embed(x))
        return self.out(h[:, -1])


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, nhead=2, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.embed, self.enc, self.out = nn.Embedding(12, 16), nn.TransformerEncoder(layer, 2), nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.enc(self.embed(x)).mean(1))


def mlp():
    return dd.mlp(8, 3, width=16, depth=3, seed=0)


MODELS = {"mlp": (mlp, lambda n: torch.randn(n, 8)), "lstm": (Recurrent, lambda n: torch.randint(0, 12, (n, 6))),
          "transformer": (Encoder, lambda n: torch.randint(0, 12, (n, 6)))}


@dataclass(frozen=True)
class Loop:
    """How the training loop handles .grad: `zero` "none" | "before_forward" | "before_backward" |
    "after_step"; `set_to_none`; `micro`: backward passes per optimizer step; `evals`: no_grad forwards
    between steps; `give_optimizer`: the Monitor is given the optimizer; `step_per_micro`: Monitor.step
    after every micro-batch (the monitor then counts micro-batches as steps)."""

    zero: str = "before_backward"
    set_to_none: bool = True
    micro: int = 1
    evals: bool = False
    give_optimizer: bool = True
    step_per_micro: bool = False
    every: int = 1
    skip_once: int | None = None  # the step at which zero_grad alone is skipped


LOOPS = {  # id -> (loop, the finding expected)
    "no_zero_grad": (Loop(zero="none"), True),
    "no_zero_grad_monitor_without_optimizer": (Loop(zero="none", give_optimizer=False), True),
    "no_zero_grad_every_2": (Loop(zero="none", every=2), True),  # checks at steps 0, 2, ..., 22
    "zero_before_backward": (Loop(), False),
    "zero_before_backward_to_zeros": (Loop(set_to_none=False), False),
    "zero_before_forward": (Loop(zero="before_forward"), False),
    "zero_before_forward_to_zeros": (Loop(zero="before_forward", set_to_none=False), False),
    "zero_after_step": (Loop(zero="after_step"), False),
    "accumulate_4": (Loop(zero="after_step", micro=4), False),
    "accumulate_4_monitor_without_optimizer": (Loop(zero="after_step", micro=4, give_optimizer=False), False),
    "accumulate_4_step_per_micro_batch": (Loop(zero="after_step", micro=4, give_optimizer=False,
                                               step_per_micro=True), False),
    "eval_between_steps": (Loop(evals=True), False),
    "eval_between_steps_to_zeros": (Loop(evals=True, set_to_none=False), False),
    "zero_grad_skipped_once": (Loop(skip_once=10), False),
}


def train(model_name: str, loop: Loop, steps: int = STEPS):
    build, data = MODELS[model_name]
    torch.manual_seed(0)
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    mon = Monitor(model, every=loop.every, optimizer=opt if loop.give_optimizer else None)
    zero = lambda: opt.zero_grad(set_to_none=loop.set_to_none)  # noqa: E731
    for s in range(steps):
        for k in range(loop.micro):
            if loop.zero == "before_forward" and s != loop.skip_once:
                zero()
            x, y = data(8), torch.randint(0, 3, (8,))
            loss = nn.functional.cross_entropy(model(x), y) / loop.micro
            if loop.zero == "before_backward" and s != loop.skip_once:
                zero()
            loss.backward()
            if loop.step_per_micro and k < loop.micro - 1:
                mon.step(loss)
        opt.step()
        if loop.zero == "after_step":
            zero()
        mon.step(loss)
        if loop.evals:
            with torch.no_grad():
                model(data(8))
    findings = mon.diagnose()
    return mon, findings


def carried(findings):
    return [f for f in findings if f.evidence.get("cause") == "gradients_not_reset"]


# every loop on the MLP; the recurrent and attention models get the fault and two controls
CASES = [("mlp", k) for k in LOOPS] + [(m, k) for m in ("lstm", "transformer")
                                        for k in ("no_zero_grad", "zero_before_backward", "accumulate_4")]


@pytest.mark.parametrize("model_name,loop_id", CASES, ids=[f"{m}-{k}" for m, k in CASES])
def test_gradients_carried_over_are_named(model_name, loop_id):
    loop, expected = LOOPS[loop_id]
    mon, findings = train(model_name, loop)
    mon.close()
    f = carried(findings)
    if not expected:
        assert f == [], [str(x) for x in f]
        return
    assert len(f) == 1 and findings[0] is f[0], [str(x) for x in findings]  # the first finding: the cause
    f = f[0]
    assert (f.code, f.severity, f.fix) == ("exploding_gradients", "error", None)
    assert "zero_grad()" in f.remedy and "zero_grad()" in f.summary
    ev = f.evidence
    assert ev["first_step"] == loop.every and ev["last_step"] == STEPS - loop.every  # step 0 starts from None
    assert ev["consecutive_checks"] == (STEPS - 1) // loop.every >= CARRY_RUN
    assert ev["applied_grad_norm_last"] > ev["applied_grad_norm_first"] > 0


def test_dd_fit_loop_with_a_monitor_is_silent():
    ds = dd.data.load("digits", seed=0)
    model = dd.mlp(64, 10, width=32, depth=2, seed=0)
    with Monitor(model) as mon:
        dd.fit(model, ds, lr=0.05, epochs=1, batch_size=64, seed=0, monitor=mon)
        assert mon._carry.optimizer_seen  # fit handed its optimizer over: its steps are the ones counted
        facts = mon._carry.facts()
        findings = mon.diagnose()
    assert facts.checks >= CARRY_RUN + 1 and facts.carried == 0
    assert carried(findings) == []


def test_close_removes_the_hooks_on_parameters_and_optimizer():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    mon = Monitor(model, optimizer=opt)
    assert mon._carry.n_hooks == 3  # first and last parameter, the optimizer's post-step hook
    mon.close()
    assert mon.n_hooks == 0
    assert not opt._optimizer_step_post_hooks
    assert all(not p._backward_hooks for p in model.parameters())
    mon.close()  # safe twice


@pytest.mark.parametrize("run,fires", [(CARRY_RUN - 1, False), (CARRY_RUN, True)])
def test_the_rule_needs_carry_run_consecutive_checks(run, fires):
    facts = CarryFacts(checks=20, carried=run, longest=run, first_step=3, last_step=3 + run - 1, held_first=1.0,
                       held_last=float(run), fresh_last=1.0, probes=("w", "b"))
    found = carried_gradients(facts, step=19)
    assert bool(found) == fires
    if fires:
        assert found[0].evidence["carried_steps"] == run and found[0].evidence["applied_over_batch"] == run


class Wrapper(torch.optim.Optimizer):
    """An optimizer wrapper that skips Optimizer.__init__ (as accelerate's does): no post-step hooks."""

    def __init__(self, inner):
        self.inner = inner

    @property
    def param_groups(self):
        return self.inner.param_groups

    def step(self, closure=None):
        return self.inner.step()

    def zero_grad(self, set_to_none=True):
        self.inner.zero_grad(set_to_none)


@pytest.mark.parametrize("zero", [False, True], ids=["no_zero_grad", "zero_grad"])
def test_an_optimizer_without_hooks_leaves_the_count_to_monitor_step(zero):
    model = mlp()
    opt = Wrapper(torch.optim.SGD(model.parameters(), lr=1e-3))
    with Monitor(model, optimizer=opt) as mon:
        for _ in range(STEPS):
            loss = nn.functional.cross_entropy(model(torch.randn(8, 8)), torch.randint(0, 3, (8,)))
            if zero:
                opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
        assert not mon._carry.optimizer_seen
        assert bool(carried(mon.diagnose())) != zero


def _phased(steps: int, zero_until: int, every: int = 1):
    """The MLP trained `steps` optimizer steps, zeroing .grad before backward only before `zero_until`."""
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    mon = Monitor(model, every=every, optimizer=opt)
    for s in range(steps):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 8)), torch.randint(0, 3, (8,)))
        if s < zero_until:
            opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss)
    return mon


@pytest.mark.parametrize("every", [1, 3])
def test_checks_are_dense_at_the_start_then_every_sparse_th(every):
    from deepdiag.measure.carryover import DENSE_CHECKS, SPARSE
    mon = _phased(steps=(DENSE_CHECKS + 3 * SPARSE) * every + 1, zero_until=0, every=every)
    probe = mon._carry
    checked = [s for s in range(1, probe.steps + 1) if probe.checked(s)]
    dense = [s for s in checked if s < DENSE_CHECKS * every]
    assert dense == list(range(every, DENSE_CHECKS * every, every))
    assert checked[len(dense):] == [k * SPARSE * every for k in range(-(-DENSE_CHECKS // SPARSE), DENSE_CHECKS
                                                                      // SPARSE + 4)]  # multiples of SPARSE·every
    facts = probe.facts()
    assert facts.checks - 1 == facts.carried == facts.longest == len(checked)  # step 0 (from None): no carry
    f = carried(mon.diagnose())[0]
    mon.close()
    assert f.evidence["consecutive_checks"] == len(checked)
    assert (f.evidence["first_step"], f.evidence["last_step"]) == (every, checked[-1])
    assert f.evidence["checked_every"] == SPARSE * every
    start = "every step" if every == 1 else f"every {every}th"
    assert f"{start}, then every {SPARSE * every}th from step {DENSE_CHECKS * every})" in f.summary


def test_a_loop_that_stops_zeroing_late_is_found_by_the_sparse_checks():
    from deepdiag.measure.carryover import DENSE_CHECKS, SPARSE
    start = DENSE_CHECKS + 5  # after the dense checks
    mon = _phased(steps=start + SPARSE * (CARRY_RUN + 1) + 1, zero_until=start)
    f = carried(mon.diagnose())
    facts = mon._carry.facts()
    mon.close()
    assert len(f) == 1 and f[0].evidence["consecutive_checks"] >= CARRY_RUN
    assert f[0].evidence["first_step"] > start and f"every {SPARSE}th" in f[0].summary
    assert "then" not in f[0].summary  # the run is all sparse checks
    assert facts.checks - facts.carried == DENSE_CHECKS  # the dense checks found .grad reset (step 0 included)
