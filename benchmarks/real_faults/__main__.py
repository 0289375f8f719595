"""Run the real-fault benchmark and print its tables (results on stdout, progress on stderr).

    PYTHONPATH=src python -m benchmarks.real_faults                       # everything (~10 min, 1 core)
    PYTHONPATH=src python -m benchmarks.real_faults --quick               # 6 bases x 12 operators
    PYTHONPATH=src python -m benchmarks.real_faults --family rnn --operator lr_up,init_zeros
    PYTHONPATH=/other/src python -m benchmarks.real_faults --reuse results/real_faults.json

For each base: plain runs at seeds 0, 1, 2 (the kill reference; the base must be healthy), and one
watched run at seed 0 (a finding >= warning is a false alarm). For each mutant: one plain run at seed 0
(``harness.killed`` decides whether it is a real fault), and, for real faults, one watched run
(detected when a finding >= warning has an accepted code). ``--reuse FILE`` takes the plain runs from
an earlier results file (they do not depend on deepdiag), so judging another deepdiag tree costs only
the watched runs. Writes ``--out`` (JSON) and the same rows as CSV beside it.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

import deepdiag as dd
from deepdiag.jsonsafe import dumps

from .harness import Run, killed, train
from .operators import ACCEPTED, OPERATORS, mutants
from .programs import Program, bases

SEEDS = (0, 1, 2)
QUICK_BASES = ("mlp", "regression", "cnn_bn", "lstm", "bert", "embedding")
QUICK_OPERATORS = ("act_sigmoid", "init_zeros", "init_large", "bias_negative", "freeze", "lr_up", "lr_down",
                   "loss_double_softmax", "loss_nll_raw", "inputs_x1000", "targets_offset", "no_zero_grad")


def healthy(p: Program, metrics: list[float]) -> bool:
    """Clearly better than chance: accuracy at least halfway from chance (1/classes) to 1, or a
    validation MSE below a quarter of the targets' variance (R^2 >= 0.75)."""
    mean = sum(metrics) / len(metrics)
    if p.data.task == "regression":
        return mean <= 0.25 * float(p.data.y_val.var())
    chance = 1.0 / p.data.n_classes
    return mean >= chance + 0.5 * (1.0 - chance)


def _list(s: str | None) -> list[str] | None:
    return None if s is None else [x for x in s.split(",") if x]


def fingerprint(p: Program) -> str:
    """The budget and training switches of `p`: a reused plain run must have been trained with these.
    (Model code is not in it: reuse results only from the same benchmark commit.)"""
    return repr((p.name, p.optimizer, p.batch_size, p.epochs, p.max_steps, p.shuffle, p.zero_grad,
                 p.target_scale, p.target_shift, len(p.data.x_train)))


def _plain(reuse: dict, p: Program, seed: int) -> tuple[float, bool, float]:
    """(metric, finite, seconds) of a plain run, from `reuse` when it holds one."""
    r = reuse.get(f"{p.name}@{seed}")
    if r is not None and r.get("fingerprint") == fingerprint(p):
        return r["metric"], r["finite"], 0.0
    r = train(p, seed)
    return r.metric, r.finite, r.seconds


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.real_faults", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"bases {','.join(QUICK_BASES)} and 12 operators")
    ap.add_argument("--family", help="comma-separated families (mlp, cnn, resnet, rnn, transformer, ...)")
    ap.add_argument("--base", help="comma-separated base names")
    ap.add_argument("--operator", help=f"comma-separated operators, of: {', '.join(OPERATORS)}")
    ap.add_argument("--all-verdicts", action="store_true", help="also judge mutants that are not real faults")
    ap.add_argument("--reuse", help="take plain runs from this earlier results JSON")
    ap.add_argument("--out", default="results/real_faults.json")
    ap.add_argument("--update", action="store_true",
                    help="replace only the selected programs' rows in an existing --out file")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    ops, fams, names = _list(a.operator), _list(a.family), _list(a.base)
    unknown = set(ops or ()) - set(OPERATORS)
    if unknown:
        ap.error(f"--operator: unknown {sorted(unknown)}; allowed: {', '.join(OPERATORS)}")
    if a.quick:
        names = [n for n in QUICK_BASES if names is None or n in names]
        ops = [o for o in QUICK_OPERATORS if ops is None or o in ops]
    chosen = [b for b in bases().values()
              if (names is None or b.name in names) and (fams is None or b.family in fams)]
    if not chosen:
        ap.error(f"no base matches --family/--base; bases: "
                 f"{', '.join(f'{b.name} ({b.family})' for b in bases().values())}")
    reuse = {}
    if a.reuse:
        for r in json.loads(Path(a.reuse).read_text())["plain"]:
            reuse[f"{r['program']}@{r['seed']}"] = r
    t0 = time.perf_counter()
    rows, plain = [], []
    for base in chosen:
        runs = [_plain(reuse, base, s) for s in SEEDS]
        metrics = [m for m, _, _ in runs]
        plain += [{"program": base.name, "seed": s, "metric": m, "finite": f, "fingerprint": fingerprint(base)}
                  for s, (m, f, _) in zip(SEEDS, runs)]
        w = train(base, 0, watch=True)
        rows.append(_row(base, None, metrics[0], w, metrics, healthy=healthy(base, metrics)))
        _progress(f"{base.name:28s} {base.metric} {metrics[0]:.3f} (sd {_sd(metrics):.3f}) "
                  f"{'healthy' if rows[-1]['healthy'] else 'NOT HEALTHY'} codes={w.codes}")
        for m in mutants(base, ops):
            metric, finite, _ = _plain(reuse, m, 0)
            plain.append({"program": m.name, "seed": 0, "metric": metric, "finite": finite,
                          "fingerprint": fingerprint(m)})
            real = killed(metrics, metric, finite, base.data.task)
            w = train(m, 0, watch=True) if real or a.all_verdicts else None
            rows.append(_row(m, base, metric, w, metrics, real=real, finite=finite))
            r = rows[-1]
            _progress(f"  {m.name:26s} {metric:8.3f} {'REAL' if real else 'no  '} "
                      f"{'detected' if r['detected'] else ('missed' if real else '')} {r['codes']}")
    out = Path(a.out)
    if a.update and out.exists():
        old = json.loads(out.read_text())
        fresh = {r["program"] for r in rows}
        rows = [r for r in old["rows"] if r["program"] not in fresh] + rows
        plain = [r for r in old["plain"] if r["program"] not in fresh] + plain
    summary = _summary(rows)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["deepdiag"] = dd.__file__
    summary["command"] = " ".join(["python -m benchmarks.real_faults", *(argv if argv is not None else sys.argv[1:])])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps({"summary": summary, "rows": rows, "plain": plain}))
    _write_csv(out.with_suffix(".csv"), rows)
    print(render(summary, rows))
    return 0


def _sd(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _row(p: Program, base: Program | None, metric: float, w: Run | None, base_metrics: list[float],
         real: bool = False, finite: bool = True, healthy: bool | None = None) -> dict:
    accepted = sorted(ACCEPTED[p.operator]) if p.operator else []
    codes = w.codes if w is not None else None
    return {
        "program": p.name, "base": (base or p).name, "family": p.family, "operator": p.operator,
        "metric_name": p.metric, "metric": metric, "finite": finite,
        "base_mean": sum(base_metrics) / len(base_metrics), "base_sd": _sd(base_metrics),
        "healthy": healthy, "real_fault": real,
        "watched_metric": w.metric if w is not None else None,
        "same_as_plain": (w.metric == metric or (math.isnan(w.metric) and math.isnan(metric)))
        if w is not None else None,
        "codes": codes, "checkup_codes": w.checkup_codes if w else None,
        "monitor_codes": w.monitor_codes if w else None, "info_codes": w.info if w else None,
        "accepted": accepted,
        "detected": bool(real and codes and set(codes) & set(accepted)),
        "any_code": bool(codes),
        "false_alarm": bool(p.operator is None and codes),
        "summaries": w.summaries if w else None,
        "seconds": round(w.seconds, 2) if w else None,
    }


def _summary(rows: list[dict]) -> dict:
    b = [r for r in rows if r["operator"] is None]
    m = [r for r in rows if r["operator"] is not None]
    real = [r for r in m if r["real_fault"]]
    det = [r for r in real if r["detected"]]
    return {"bases": len(b), "healthy_bases": sum(bool(r["healthy"]) for r in b),
            "false_alarms": sum(r["false_alarm"] for r in b),
            "false_alarm_bases": [f"{r['program']}: {','.join(r['codes'])}" for r in b if r["false_alarm"]],
            "mutants": len(m), "real_faults": len(real), "detected": len(det),
            "detected_any_code": sum(r["any_code"] for r in real),
            "accepted_at_info_only": sum(bool(set(r["info_codes"] or ()) & set(r["accepted"])) for r in real
                                         if not r["detected"]),
            "detection_rate": len(det) / len(real) if real else None,
            "goals": {"false_alarms": 0, "detection_rate": 0.95},
            "mismatched_watched_runs": [r["program"] for r in rows if r["same_as_plain"] is False]}


def _table(rows: list[dict], key: str, with_bases: bool) -> list[str]:
    groups: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        g = groups[r[key] or "(base)"] if key == "operator" else groups[r[key]]
        if r["operator"] is None:
            g["bases"] += 1
            g["false_alarms"] += r["false_alarm"]
            continue
        g["mutants"] += 1
        g["real"] += r["real_fault"]
        g["detected"] += r["detected"]
        g["any"] += bool(r["real_fault"] and r["any_code"])
    head = f"| {key} | mutants | real faults | detected | missed | any code |" + (" bases | false alarms |" if with_bases else "")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for name, g in groups.items():
        if key == "operator" and name == "(base)":
            continue
        line = (f"| {name} | {g['mutants']} | {g['real']} | {g['detected']} | {g['real'] - g['detected']} "
                f"| {g['any']} |")
        if with_bases:
            line += f" {g['bases']} | {g['false_alarms']} |"
        lines.append(line)
    return lines


def render(summary: dict, rows: list[dict]) -> str:
    s = summary
    rate = f"{100 * s['detection_rate']:.1f} %" if s["detection_rate"] is not None else "n/a"
    out = [f"bases: {s['bases']} ({s['healthy_bases']} healthy), false alarms: {s['false_alarms']} (goal 0)"
           + (f" -- {'; '.join(s['false_alarm_bases'])}" if s["false_alarm_bases"] else ""),
           (f"mutants: {s['mutants']}, real faults: {s['real_faults']}, detected with an accepted code: "
            f"{s['detected']} ({rate}, goal >= 95 %), with any code: {s['detected_any_code']}; "
            f"missed but an accepted code at severity info: {s['accepted_at_info_only']}"), ""]
    out += _table(rows, "family", with_bases=True) + [""] + _table(rows, "operator", with_bases=False)
    missed = [r for r in rows if r["real_fault"] and not r["detected"]]
    if missed:
        out += ["", "missed real faults (codes seen >= warning):"]
        out += [f"  {r['program']}: {','.join(r['codes'] or []) or '-'}" for r in missed]
    if s["mismatched_watched_runs"]:
        out += ["", f"watched run differs from plain: {', '.join(s['mismatched_watched_runs'])}"]
    return "\n".join(out)


def _write_csv(path: Path, rows: list[dict]) -> None:
    cols = ["program", "base", "family", "operator", "metric_name", "metric", "finite", "base_mean", "base_sd",
            "healthy", "real_fault", "watched_metric", "detected", "false_alarm", "codes", "accepted"]
    with path.open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(cols)
        for r in rows:
            wr.writerow([";".join(r[c]) if isinstance(r[c], list) else r[c] for c in cols])


if __name__ == "__main__":
    sys.exit(main())
