"""deepdiag's false alarms on healthy models of families it was not written from (reports, does not assert).

The programs of ``unseen_programs.py`` (tiny transformers models built from a config: encoders,
encoder-decoders, causal LMs, vision models; plain-PyTorch transformers, CNNs, RNNs, MLPs) are trained
with the loop of ``benchmarks/real_faults/harness.py`` and watched as a user would watch them:
``dd.checkup`` on the first batch, then ``dd.Monitor`` at every step and epoch. Each of them learns on
every seed (``healthy``: accuracy at least halfway from chance to 1, or a validation MSE under a quarter
of the targets' variance; the table marks a seed that does not), so every finding at severity warning or
error is a false alarm; info findings are not. Each program and seed is also trained unwatched
(``harness.train(watch=False)``): deepdiag must not change training, so the two metrics must be equal.

    PYTHONPATH=src:. python benchmarks/unseen_healthy.py [--programs a,b] [--seeds 0,1,2] [--out results.json]
        [--threads 1]

Prints (stdout) a markdown table, per seed: the validation metric, the checkup's and the Monitor's codes
at severity >= warning; then the programs with any false alarm, false alarms per code, and each false
alarm's code, severity, layers and summary. Progress goes to stderr; ``--out`` writes every run and every
finding (info included) as JSON.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.real_faults import harness
from benchmarks.real_faults.__main__ import healthy
from benchmarks.real_faults.harness import WARNING, Run
from benchmarks.real_faults.programs import Program
from benchmarks.unseen_programs import programs
from deepdiag.findings import Finding
from deepdiag.jsonsafe import dumps


@dataclass
class Result:
    """One program at one seed: the watched run with its findings, and the unwatched run."""
    program: Program
    watched: Run
    checkup: list[Finding]
    monitor: list[Finding]
    plain: Run

    @property
    def alarms(self) -> list[tuple[str, Finding]]:
        """(source, finding) at severity >= warning: on a healthy program, false alarms."""
        found = [("checkup", f) for f in self.checkup] + [("monitor", f) for f in self.monitor]
        return [(source, f) for source, f in found if f.rank >= WARNING]

    @property
    def same(self) -> bool:
        return self.watched.metric == self.plain.metric


def measure(p: Program, seed: int) -> Result:
    found: list[tuple[str, Finding]] = []
    run = harness.train(p, seed, watch=True, found=found)
    return Result(p, run, [f for s, f in found if s == "checkup"], [f for s, f in found if s == "monitor"],
                  harness.train(p, seed, watch=False))


def baseline(p: Program) -> str:
    """The metric and what it is held against: chance accuracy, or the MSE of predicting the training mean."""
    d = p.data
    if d.task == "regression":
        return f"mse; mean-pred {float(((d.y_val - d.y_train.mean(0)) ** 2).mean()):.3f}"
    return f"acc; chance {1 / d.n_classes:.3f}"


def _metric(r: Result) -> str:
    s = f"{r.watched.metric:.3f}"
    if not r.same:
        s += f" ≠ plain {r.plain.metric:.3f}"
    return s if healthy(r.program, [r.watched.metric]) else s + " (!)"


def _codes(r: Result, source: str) -> str:
    return ",".join(sorted({f.code for s, f in r.alarms if s == source})) or "-"


def table(results: list[Result]) -> list[str]:
    out = ["| program | family | metric; baseline | metric (seeds) | checkup >= warning | Monitor >= warning |",
           "|---|---|---|---|---|---|"]
    by_program: dict[str, list[Result]] = {}
    for r in results:
        by_program.setdefault(r.program.name, []).append(r)
    for name, rs in by_program.items():
        p = rs[0].program
        cells = [" / ".join(_metric(r) for r in rs), " / ".join(_codes(r, "checkup") for r in rs),
                 " / ".join(_codes(r, "monitor") for r in rs)]
        out.append(f"| {name} | {p.family} | {baseline(p)} | " + " | ".join(cells) + " |")
    return out


def summary(results: list[Result], seconds: float) -> list[str]:
    codes = {(r.program.name, r.watched.seed): {f.code for _, f in r.alarms} for r in results}
    runs = Counter(c for found in codes.values() for c in found)
    alarmed = sorted({name for (name, _), found in codes.items() if found})
    per_code = ", ".join(f"{c} {k} runs ({', '.join(sorted({n for (n, _), found in codes.items() if c in found}))})"
                         for c, k in runs.most_common()) or "none"
    sick = [f"{r.program.name}@{r.watched.seed}" for r in results if not healthy(r.program, [r.watched.metric])]
    differ = [f"{r.program.name}@{r.watched.seed}" for r in results if not r.same]
    out = [f"programs with any false alarm: {len(alarmed)} of {len({n for n, _ in codes})}"
           + (f" ({', '.join(alarmed)})" if alarmed else ""),
           f"false alarms per code (runs of {len(results)} with the code at >= warning): {per_code}",
           f"seeds not healthy (marked (!)): {', '.join(sick) or 'none'}",
           f"watched metric differs from plain: {', '.join(differ) or 'none'}",
           (f"time: {seconds / 60:.1f} min for {2 * len(results)} runs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s)")]
    details = [f"- {r.program.name} seed {r.watched.seed}, {source}: {f.code} ({f.severity}) "
               f"layers [{', '.join(f.layers)}]: {f.summary}"
               for r in results for source, f in r.alarms]
    return out + (["", "false alarms:"] + details if details else [])


def record(r: Result) -> dict:
    return {"program": r.program.name, "family": r.program.family, "seed": r.watched.seed,
            "metric_name": r.program.metric, "healthy": healthy(r.program, [r.watched.metric]),
            "same_as_plain": r.same, "watched": asdict(r.watched), "plain": asdict(r.plain),
            "findings": [{"source": "checkup", **f.to_dict()} for f in r.checkup]
            + [{"source": "monitor", **f.to_dict()} for f in r.monitor]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", help="comma-separated program names (default: all)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", help="write every run and finding as JSON here")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    every = programs()
    names = a.programs.split(",") if a.programs else list(every)
    unknown = [n for n in names if n not in every]
    if unknown:
        ap.error(f"--programs: unknown {unknown}; allowed: {', '.join(every)}")
    seeds = [int(s) for s in a.seeds.split(",")]
    t0 = time.perf_counter()
    results = []
    for name in names:
        for seed in seeds:
            r = measure(every[name], seed)
            results.append(r)
            print(f"{name:16s} seed {seed}: {r.program.metric} {_metric(r)}, watched {r.watched.seconds:.1f} s, "
                  f"plain {r.plain.seconds:.1f} s, alarms {[f.code for _, f in r.alarms]}",
                  file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    print("\n".join(table(results) + [""] + summary(results, seconds)))
    if a.out:
        Path(a.out).write_text(dumps({"seconds": seconds, "runs": [record(r) for r in results]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
