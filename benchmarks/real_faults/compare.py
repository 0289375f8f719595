"""Two results files of the real-fault benchmark side by side (e.g. main's deepdiag and a branch's).

    python -m benchmarks.real_faults.compare results/a.json results/b.json [--names main,branch]

Per family and per operator: real faults (from the first file; the second must agree, since the plain
runs do not depend on deepdiag), detected by each, and false alarms on the bases.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def _load(path: str) -> dict[str, dict]:
    return {r["program"]: r for r in json.loads(Path(path).read_text())["rows"]}


def table(a: dict[str, dict], b: dict[str, dict], key: str, names: tuple[str, str]) -> list[str]:
    g: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for name, r in a.items():
        k = r[key] if r["operator"] is not None or key == "family" else None
        if k is None:
            continue
        s = g[k]
        if r["operator"] is None:
            s["bases"] += 1
            s["fa_a"] += r["false_alarm"]
            s["fa_b"] += b[name]["false_alarm"]
            continue
        s["real"] += r["real_fault"]
        s["det_a"] += r["detected"]
        s["det_b"] += b[name]["detected"]
    fam = key == "family"
    head = f"| {key} | real faults | detected {names[0]} | detected {names[1]} |"
    head += f" bases | false alarms {names[0]} | false alarms {names[1]} |" if fam else ""
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for k, s in g.items():
        line = f"| {k} | {s['real']} | {s['det_a']} | {s['det_b']} |"
        lines.append(line + (f" {s['bases']} | {s['fa_a']} | {s['fa_b']} |" if fam else ""))
    real = sum(s["real"] for s in g.values())
    da, db = sum(s["det_a"] for s in g.values()), sum(s["det_b"] for s in g.values())
    total = f"| **total** | {real} | {da} ({100 * da / real:.1f} %) | {db} ({100 * db / real:.1f} %) |"
    if fam:
        total += (f" {sum(s['bases'] for s in g.values())} | {sum(s['fa_a'] for s in g.values())} "
                  f"| {sum(s['fa_b'] for s in g.values())} |")
    return lines + [total]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.real_faults.compare")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--names", default="A,B")
    args = ap.parse_args(argv)
    a, b = _load(args.a), _load(args.b)
    names = tuple(args.names.split(",", 1))
    if set(a) != set(b):
        raise SystemExit(f"the files hold different programs: {sorted(set(a) ^ set(b))[:5]} ...")
    differ = [p for p in a if a[p]["real_fault"] != b[p]["real_fault"]]
    if differ:
        print(f"real-fault verdicts differ (plain runs not identical): {differ}")
    print("\n".join(table(a, b, "family", names) + [""] + table(a, b, "operator", names)))
    gained = [p for p in a if b[p]["detected"] and not a[p]["detected"]]
    lost = [p for p in a if a[p]["detected"] and not b[p]["detected"]]
    print(f"\ndetected only by {names[1]}: {', '.join(gained) or '-'}")
    print(f"detected only by {names[0]}: {', '.join(lost) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
