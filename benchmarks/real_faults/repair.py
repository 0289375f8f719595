"""Repair rate on the real-fault benchmark: ``dd.repair`` on every real-fault mutant it can retrain.

    PYTHONPATH=src python -m benchmarks.real_faults.repair --faults results/real_faults.json [--quick]
        [--operator O,...] [--base B,...] [--rounds 2] [--candidates 8] [--out results/repair.json]

``--faults`` is a results file of ``python -m benchmarks.real_faults``: it says which mutants are real
faults (trained in plain torch, they measurably hurt their base; ``harness.killed``). Each such mutant
becomes what ``dd.repair`` takes: ``build`` (the mutant's model), ``data`` (its data, targets as the
program feeds them to the loss), ``config`` (its optimizer, lr, momentum, weight decay, batch size and
epochs as a ``dd.TrainConfig``) and its ``loss_fn``. dd.repair trains with ``dd.fit``'s loop, which
shuffles and zeroes gradients; the faults that live in the user's loop itself (``no_shuffle``,
``no_zero_grad``) and the fixed-step budget of ``batch_one`` cannot be expressed that way and are
listed as not retrainable.

Per mutant: *detected* when dd.repair's own diagnosis (checkup + Monitor at seed 0) finds a problem of
severity warning or worse; *repaired* when dd.repair returns a verified and confirmed fix (the findings
it answers gone; the validation metric better than the mutant's by more than the seed-noise margin at
seeds 0 and 1); *first guess* when every finding's own ``Finding.fix``, merged and applied once, was
verified and confirmed; *restored* when the repaired mutant's metric is also back within the kill
margin of its base (no longer a real fault by the benchmark's own criterion). Also: candidate
trainings and wall time per repair.

``--quick`` takes one real fault per operator (the first base in the file's order that has one).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from deepdiag.jsonsafe import dumps
from deepdiag.repair import ArrayData, repair
from deepdiag.train import TrainConfig

from .harness import worse
from .operators import OPERATORS
from .programs import Program, bases

LOOP_FAULTS = ("no_shuffle", "no_zero_grad", "batch_one")


def program(name: str) -> Program:
    """The base or mutant called `name` ("base" or "base/operator")."""
    base, _, op = name.partition("/")
    p = bases()[base]
    return p if not op else OPERATORS[op](p)


def build(name: str):
    """A fresh model of program `name` (dd.repair seeds the RNG before calling it)."""
    return program(name).fresh()


def inputs(p: Program) -> tuple:
    """(build, data, config, loss_fn) for dd.repair."""
    d = p.data
    regression = d.task == "regression"
    scale = (lambda y: y * p.target_scale + p.target_shift) if regression else (lambda y: y)
    data = ArrayData(d.x_train, scale(d.y_train), d.x_val, scale(d.y_val),
                   "regression" if regression else "classification")
    name, kw = p.optimizer[0], dict(p.optimizer[1])
    config = TrainConfig(optimizer=name, lr=kw["lr"], momentum=kw.get("momentum", 0.0),
                         weight_decay=kw.get("weight_decay", 0.01 if name == "adamw" else 0.0),
                         batch_size=p.batch_size, epochs=p.epochs)
    return functools.partial(build, p.name), data, config, p.loss_fn


def restored(row: dict, after: float) -> bool:
    """The repaired metric back within the kill margin of the base (``harness.worse``, inverted)."""
    task = "regression" if row["metric_name"] == "val_mse" else "classification"
    return not worse(after, row["base_mean"], row["base_sd"], task)


def select(rows: list[dict], quick: bool, operators, bases_) -> list[dict]:
    faults = [r for r in rows if r.get("real_fault") and r["operator"] not in LOOP_FAULTS
              and (operators is None or r["operator"] in operators) and (bases_ is None or r["base"] in bases_)]
    if quick:
        seen, out = set(), []
        for r in faults:
            if r["operator"] not in seen:
                seen.add(r["operator"])
                out.append(r)
        return out
    return faults


def run_one(row: dict, rounds: int, candidates: int, store) -> dict:
    p = program(row["program"])
    b, data, config, loss_fn = inputs(p)
    t0 = time.perf_counter()
    result = repair(b, data, config, loss_fn=loss_fn, rounds=rounds, engine="local", store=store,
                    max_candidates=candidates, progress=False)
    d = result.to_dict()
    after = d["after"]
    return {"program": row["program"], "base": row["base"], "family": row["family"], "operator": row["operator"],
            "detected": bool(result.findings), "codes": [f.code for f in result.findings],
            "repaired": result.repaired, "first_guess": d["first_guess"],
            "first_guess_repaired": bool(result.first_guess_repaired), "fix": result.fix,
            "before": d["before"], "after": after, "base_mean": row["base_mean"], "base_sd": row["base_sd"],
            "metric_name": row["metric_name"],
            "restored": bool(result.repaired and after is not None and restored(row, after)),
            "trainings": result.trainings + result.reused, "seconds": time.perf_counter() - t0,
            "candidates": d["candidates"]}


def table(results: list[dict], by: str) -> str:
    groups = defaultdict(list)
    for r in results:
        groups[r[by]].append(r)
    lines = [f"| {by} | real faults | detected | repaired | first guess | restored | trainings / repair | s / repair |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k in sorted(groups):
        rs = groups[k]
        det = [r for r in rs if r["detected"]]
        rate = lambda key: sum(r[key] for r in det)
        lines.append(f"| {k} | {len(rs)} | {len(det)} | {rate('repaired')} | {rate('first_guess_repaired')} | "
                     f"{rate('restored')} | {_mean(r['trainings'] for r in det):.1f} | "
                     f"{_mean(r['seconds'] for r in det):.0f} |")
    return "\n".join(lines)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else math.nan


def hurt(r: dict) -> bool:
    """Whether the fault still hurts in dd.repair's own training: the baseline it measured (``before``, at
    seed 0 in ``dd.fit``'s loop) worse than the healthy base's plain runs by the kill margin
    (``harness.worse``). A mutant that is a real fault in its own loop may train as well as its base in
    dd.fit's (which shuffles, zeroes gradients and evaluates in eval mode): then no fix can beat the
    baseline by the margin, whatever it does."""
    if r.get("before") is None or r.get("base_sd") is None:
        return True
    task = "regression" if r.get("metric_name") == "val_mse" else "classification"
    return worse(r["before"], r["base_mean"], r["base_sd"], task)


def summary(results: list[dict]) -> str:
    det = [r for r in results if r["detected"]]
    n = len(det)
    pct = lambda k, rs=det: (f"{sum(r[k] for r in rs)} of {len(rs)} "
                             f"({100 * sum(r[k] for r in rs) / max(len(rs), 1):.1f} %)")
    still = [r for r in det if hurt(r)]
    learnable = [r for r in still if r["operator"] != "labels_shuffled"]
    return (f"real faults retrained: {len(results)}, detected by dd.repair's diagnosis: {n}\n"
            f"repaired (verified, confirmed at 2 seeds): {pct('repaired')}; goal >= 95 %\n"
            f"Finding.fix alone (first guess, one round): {pct('first_guess_repaired')}; goal >= 80 %\n"
            f"restored to the base's level: {pct('restored')}\n"
            f"of the detected, still hurt in dd.fit's loop (baseline worse than the base by the kill margin): "
            f"{len(still)}; repaired {pct('repaired', still)}, by Finding.fix alone "
            f"{pct('first_guess_repaired', still)}\n"
            f"of those, without every training label random (labels_shuffled: nothing left to learn): "
            f"{len(learnable)}; repaired {pct('repaired', learnable)}\n"
            f"candidate trainings per repair: {_mean(r['trainings'] for r in det):.1f}, "
            f"wall time per repair: {_mean(r['seconds'] for r in det):.0f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.real_faults.repair", description=__doc__.split("\n")[0])
    ap.add_argument("--faults", required=True, help="results JSON of python -m benchmarks.real_faults")
    ap.add_argument("--quick", action="store_true", help="one real fault per operator")
    ap.add_argument("--operator", help="comma-separated operators")
    ap.add_argument("--base", help="comma-separated bases")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--out", default="results/repair_real_faults.json")
    ap.add_argument("--store", default=None, help="a .sqlite store: trials are kept there and reused")
    ap.add_argument("--summarize", metavar="RESULTS", help="print the tables of an earlier --out file (no training)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = json.loads(Path(a.faults).read_text())["rows"]
    if a.summarize:
        return _summarize(Path(a.summarize), rows)
    split = lambda s: None if s is None else s.split(",")
    todo = select(rows, a.quick, split(a.operator), split(a.base))
    skipped = sorted({r["program"] for r in rows if r.get("real_fault") and r["operator"] in LOOP_FAULTS})
    results, t0 = [], time.perf_counter()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(todo, 1):
        try:
            r = run_one(row, a.rounds, a.candidates, a.store)
        except Exception as e:  # noqa: BLE001  (one program's failure is a row, not the end of the run)
            r = {"program": row["program"], "base": row["base"], "family": row["family"],
                 "operator": row["operator"], "detected": False, "error": f"{type(e).__name__}: {e}",
                 "repaired": False, "first_guess_repaired": False, "restored": False, "fix": None,
                 "before": None, "after": None, "trainings": 0, "seconds": 0.0, "codes": [], "candidates": []}
        results.append(r)
        print(f"[{i}/{len(todo)}] {r['program']}: {'repaired' if r['repaired'] else 'NOT repaired' if r['detected'] else 'not detected'}"
              f" {r['before']} -> {r['after']} fix={r['fix']} first={r['first_guess_repaired']} "
              f"({r['trainings']} runs, {r['seconds']:.0f} s)", file=sys.stderr, flush=True)
        out.write_text(dumps({"results": results, "skipped_loop_faults": skipped}))
    print(summary(results))
    failed = [f"{r['program']} ({r['error']})" for r in results if r.get("error")]
    if failed:
        print(f"failed to run: {len(failed)}: " + "; ".join(failed))
    print(f"not retrainable by dd.repair (faults in the training loop itself): {len(skipped)}")
    print(f"wall time: {time.perf_counter() - t0:.0f} s\n")
    print(table(results, "operator"))
    print()
    print(table(results, "family"))
    return 0


def _summarize(path: Path, rows: list[dict]) -> int:
    """The summary and tables of a results file; a row written before base_sd / metric_name were
    recorded takes them from the faults file."""
    by_name = {r["program"]: r for r in rows}
    results = json.loads(path.read_text())["results"]
    for r in results:
        src = by_name.get(r["program"], {})
        r.setdefault("base_sd", src.get("base_sd"))
        r.setdefault("metric_name", src.get("metric_name"))
    print(summary(results))
    print(f"not retrainable by dd.repair (faults in the training loop itself): "
          f"{len(json.loads(path.read_text()).get('skipped_loop_faults', []))}\n")
    print(table(results, "operator"))
    print()
    print(table(results, "family"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
