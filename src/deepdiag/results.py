"""A results directory read back as tables: what ``deepdiag run --out DIR`` wrote, per study.

Layout: ``DIR/<study>/result.json`` (claim, verdict, checks, config, environment), ``DIR/<study>/data.csv``
(every run or measurement), ``DIR/<study>/<figure>.png`` and ``<figure>.json`` (its spec for the
interactive report), and ``DIR/runs.sqlite``, the store of ``dd.sweep(..., store=DIR)``. ``load_results``
turns that into pandas DataFrames; ``write_tables`` adds ``DIR/studies.csv`` and ``DIR/checks.csv`` (and
Parquet files when pyarrow is installed).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import atomic
from .store import FILENAME, load_runs
from .study import ORDER

RESULT_KEYS = ("name", "claim", "verdict", "checks", "seeds", "quick", "wall_time")


class DamagedFileWarning(UserWarning):
    """A result file that could not be read was set aside (renamed ``*.corrupt-<time>``) and skipped."""


def set_aside_damaged(path: Path, problem: str) -> None:
    """Warn, naming `path` and what is wrong with it, and rename it out of the way (``atomic.set_aside``)
    so that the rest of the directory stays readable and the next ``deepdiag run`` rebuilds it."""
    try:
        moved = atomic.set_aside(path)
        where = f"set aside as {moved.name}"
    except OSError as e:  # a read-only directory: leave it, but still skip it
        where = f"could not be set aside ({e.strerror})"
    warnings.warn(f"damaged result file {str(path)!r} ({problem}): {where}; the next deepdiag run "
                  "rebuilds it", DamagedFileWarning, stacklevel=3)


def read_result(path: str | Path) -> dict | None:
    """A study's saved ``result.json`` as a dict; None when it is missing, or damaged (truncated, not
    JSON, not a result), in which case it is set aside with a warning that names it."""
    path = Path(path)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        set_aside_damaged(path, f"not valid JSON: {e}")
        return None
    missing = [k for k in RESULT_KEYS if k not in saved] if isinstance(saved, dict) else list(RESULT_KEYS)
    if missing:
        set_aside_damaged(path, f"not a study result: no {', '.join(missing)}")
        return None
    return saved


def inside(directory: str | Path, path: str | Path) -> bool:
    """Whether `path`, with every symlink resolved, lies inside `directory` (resolved too): a results
    directory someone sent must not make deepdiag read files outside it."""
    try:
        Path(path).resolve().relative_to(Path(directory).resolve())
    except (ValueError, OSError, RuntimeError):  # outside, or a symlink loop
        return False
    return True


def local_file(folder: str | Path, recorded: str | Path) -> Path | None:
    """A file a study recorded (a figure), found in its study folder as it is now: ``folder / name``
    whatever directory was recorded (results written with an absolute ``--out`` and moved since still
    find their own files, never the old location's), None when it is missing or resolves outside the
    folder (a symlink out, or a crafted name)."""
    name = Path(str(recorded)).name
    if not name or name in (".", ".."):
        return None
    path = Path(folder) / name
    return path if path.is_file() and inside(folder, path) else None


@dataclass
class Results:
    """Everything in a results directory: one row per study, one row per check, each study's data, and
    ``sweeps``: the runs in the directory's sweep store (``DIR/runs.sqlite``; empty when there is none)."""

    directory: Path
    studies: pd.DataFrame
    checks: pd.DataFrame
    data: dict[str, pd.DataFrame] = field(default_factory=dict)
    raw: dict[str, dict] = field(default_factory=dict)
    sweeps: pd.DataFrame = field(default_factory=pd.DataFrame)
    folders: dict[str, Path] = field(default_factory=dict)  # study -> the folder its result.json is in

    @property
    def runs(self) -> pd.DataFrame:
        """All studies' data in one table, with a ``study`` column."""
        frames = [df.assign(study=name) for name, df in self.data.items()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


STUDY_COLUMNS = ["study", "verdict", "passed", "total", "wall_time", "quick", "seeds", "claim"]


def _study_folders(directory: Path) -> list[Path]:
    """The study folders: each ``DIR/<study>/`` holding a result.json, both inside DIR once symlinks are
    resolved (one pointing elsewhere is skipped with a warning)."""
    folders = []
    for p in directory.glob("*/result.json"):
        if inside(directory, p):
            folders.append(p.parent)
        else:
            warnings.warn(f"{str(p)!r} lies outside {str(directory)!r} (a symlink): skipped", UserWarning,
                          stacklevel=3)
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(folders, key=lambda p: (rank.get(p.name, len(rank)), p.name))


def load_results(directory: str | Path) -> Results:
    """Read a results directory into DataFrames; ValueError when it holds neither study results nor a
    sweep store. A directory with only a store gives empty ``studies`` and ``checks`` and its ``sweeps``.

    >>> res = dd.load_results("results/")
    >>> res.studies[["study", "verdict", "passed", "total"]]
    >>> res.sweeps.groupby(["width", "lr"]).val_loss.mean()   # runs of dd.sweep(..., store="results/")
    """
    directory = Path(directory)
    folders = _study_folders(directory) if directory.is_dir() else []
    has_store = directory.is_dir() and (directory / FILENAME).exists()
    if not folders and not has_store:
        raise ValueError(f"no study results in directory={str(directory)!r}; "
                         f"write some with: deepdiag run all --quick --out {directory}")
    sweeps = load_runs(directory) if has_store else pd.DataFrame()
    studies, checks, data, raw, where = [], [], {}, {}, {}
    for folder in folders:
        result = read_result(folder / "result.json")
        if result is None:
            continue
        name = result["name"]
        raw[name], where[name] = result, folder
        passed = sum(c["passed"] is True for c in result["checks"])
        studies.append({"study": name, "verdict": result["verdict"], "passed": passed,
                        "total": len(result["checks"]), "wall_time": result["wall_time"],
                        "quick": result["quick"], "seeds": len(result["seeds"]), "claim": result["claim"]})
        checks += [{"study": name, **c} for c in result["checks"]]
        csv = folder / "data.csv"
        data[name] = _read_data(csv)
    return Results(directory, pd.DataFrame(studies, columns=STUDY_COLUMNS),
                   pd.DataFrame(checks) if checks else pd.DataFrame(columns=["study"]), data, raw, sweeps, where)


def _read_data(csv: Path) -> pd.DataFrame:
    """A study's data.csv; empty when absent, and set aside (empty) when it cannot be parsed."""
    if not csv.exists() or csv.stat().st_size <= 1 or not inside(csv.parent, csv):
        return pd.DataFrame()
    try:
        return pd.read_csv(csv)
    except (ValueError, UnicodeDecodeError) as e:  # pandas' ParserError and EmptyDataError are ValueErrors
        set_aside_damaged(csv, str(e).strip().splitlines()[0])
        return pd.DataFrame()


def write_tables(directory: str | Path) -> list[Path]:
    """Write studies.csv and checks.csv (and .parquet when pyarrow is installed) into the directory."""
    res = load_results(directory)
    paths = []
    for name, frame in (("studies", res.studies), ("checks", res.checks)):
        path = Path(directory) / f"{name}.csv"
        with atomic.temporary_path(path) as tmp:
            frame.to_csv(tmp, index=False)
        paths.append(path)
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            continue
        table = frame.astype({c: str for c in ("measured", "expected") if c in frame})
        with atomic.temporary_path(path.with_suffix(".parquet")) as tmp:
            table.to_parquet(tmp, index=False)
        paths.append(path.with_suffix(".parquet"))
    return paths
