"""The results store: one SQLite file per results directory (``DIR/runs.sqlite``), keyed by config hash.

Schema (two tables)::

    runs(hash TEXT PRIMARY KEY, config JSON, status TEXT, result JSON, error TEXT,
         wall_time REAL, versions JSON, engine TEXT, finished_at REAL)
    trials(key TEXT PRIMARY KEY, record JSON, version TEXT, finished_at REAL)

``trials`` holds the candidate trainings of ``dd.repair`` (a user's model, not a ``RunConfig``), keyed by
the SHA-256 of what shaped them (see ``deepdiag.repair.trial_key``), so an interrupted repair resumes.

``result`` holds ``{"history": ..., "metrics": ..., "probes": ...}``: the run's curves, final metrics and
the outputs of its post-training probes (``deepdiag.probes``; absent in runs stored before probes).

Durability: WAL journal, ``synchronous=NORMAL`` (a committed run survives the process being killed; an
OS crash may lose the last few), and each finished run is written in its own ``BEGIN IMMEDIATE``
transaction, so ``kill -9`` of the driver loses only the runs still in flight. Concurrency: several
processes may write the same file; SQLite serialises the writers and ``busy_timeout`` makes each wait
its turn instead of failing. A run is replaced only by a later result for the same hash (a retry of a
failed run, or ``resume=False``).
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ._version import __version__
from .engines import numeric_class, reuses
from .jsonsafe import dumps
from .runs import FIELDS, METRICS, RunConfig, RunResult

if TYPE_CHECKING:
    import pandas as pd

FILENAME = "runs.sqlite"
FINISHED = ("done", "diverged")  # failed runs are retried on resume
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    hash TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    wall_time REAL,
    versions TEXT,
    engine TEXT,
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    key TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    version TEXT NOT NULL,
    finished_at REAL NOT NULL
)"""


class StoreError(ValueError):
    """A store file that cannot be used (not a SQLite database, damaged, or not writable); the message
    names the file. ``deepdiag run --fresh`` sets a damaged one aside and starts a new one."""


class Store:
    """A SQLite results store. ``Store(path)`` opens or creates the file; ``Store(None)`` is in memory."""

    def __init__(self, path: str | Path | None = None, timeout: float = 60.0):
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.where = ":memory:" if self.path is None else str(self.path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per run
        try:
            self._db = sqlite3.connect(self.where, timeout=timeout, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            if self.path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._db.execute("SELECT COUNT(*) FROM runs").fetchone()
        except sqlite3.Error as e:
            raise store_error(self.where, e) from None

    def put(self, result: RunResult) -> None:
        """Commit one finished run (its own transaction)."""
        row = (result.hash, result.config.canonical_json(), result.status,
               dumps({"history": result.history, "metrics": result.metrics, "probes": result.probes}),
               result.error, result.wall_time, dumps(result.versions), result.engine, time.time())
        self._write("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def _write(self, sql: str, row: tuple) -> None:
        """One statement in its own ``BEGIN IMMEDIATE`` transaction (rolled back if anything interrupts it)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(sql, row)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def put_trial(self, key: str, record: dict) -> None:
        """Commit one finished repair trial (a JSON-safe dict) under `key` (its own transaction)."""
        self._write("INSERT OR REPLACE INTO trials VALUES (?, ?, ?, ?)", (key, dumps(record), __version__, time.time()))

    def trial(self, key: str) -> dict | None:
        """The stored trial `key` when this deepdiag version trained it, else None."""
        row = self._db.execute("SELECT record, version FROM trials WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row and row[1] == __version__ else None

    def finished_hashes(self) -> set[str]:
        """Hashes of runs that need no redoing (done or diverged; failed ones are retried)."""
        marks = ",".join("?" * len(FINISHED))
        return {h for (h,) in self._db.execute(f"SELECT hash FROM runs WHERE status IN ({marks})", FINISHED)}

    def reusable(self, hashes: Iterable[str], engine: str) -> tuple[set[str], str]:
        """The finished runs among `hashes` that a sweep on `engine` may reuse, and one line on those it
        may not ("" when none). A stored run is reused only when its numbers are the ones this sweep
        would compute: trained by an engine of a class `engine` accepts (``engines.reuses``: the
        vectorized engine's numbers differ from the reference loop's) and by this deepdiag version (a
        run with no recorded version is trusted). The others are retrained, and replaced."""
        hashes = list(dict.fromkeys(hashes))
        marks = ",".join("?" * len(FINISHED))
        rows = []
        for i in range(0, len(hashes), 500):
            chunk = hashes[i:i + 500]
            rows += self._db.execute(f"SELECT engine, versions, hash FROM runs WHERE status IN ({marks}) "
                                     f"AND hash IN ({','.join('?' * len(chunk))})", (*FINISHED, *chunk))
        ok, other_engine, other_version = set(), {}, {}
        for engine_was, vers, h in rows:
            version = json.loads(vers or "{}").get("deepdiag", __version__)
            if version != __version__:
                other_version[version] = other_version.get(version, 0) + 1
            elif not reuses(engine, engine_was or ""):
                other_engine[engine_was] = other_engine.get(engine_was, 0) + 1
            else:
                ok.add(h)
        notes = [f"{n} stored run(s) from engine {e} ({numeric_class(e)} numbers)"
                 for e, n in other_engine.items()]
        notes += [f"{n} stored run(s) from deepdiag {v}" for v, n in other_version.items()]
        note = ""
        if notes:
            note = (f"{'; '.join(notes)} in {self.where} not reused by engine {engine} "
                    f"({numeric_class(engine)} numbers, deepdiag {__version__}): retraining them")
        return ok, note

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def results(self, hashes: Iterable[str] | None = None) -> list[RunResult]:
        """Stored runs as RunResults (all, or the given hashes in that order, missing ones skipped)."""
        cols = "hash, config, status, result, error, wall_time, versions, engine"
        if hashes is None:
            rows = self._db.execute(f"SELECT {cols} FROM runs ORDER BY finished_at").fetchall()
        else:
            hashes = list(hashes)
            found = {}
            for i in range(0, len(hashes), 500):
                chunk = hashes[i:i + 500]
                q = f"SELECT {cols} FROM runs WHERE hash IN ({','.join('?' * len(chunk))})"
                found.update({r[0]: r for r in self._db.execute(q, chunk)})
            rows = [found[h] for h in hashes if h in found]
        out = []
        for _, config, status, result, error, wall, vers, engine in rows:
            res = json.loads(result) if result else {}
            out.append(RunResult(RunConfig.from_dict(json.loads(config)), status, res.get("history", {}),
                                 res.get("metrics", {}), error, wall or 0.0, json.loads(vers or "{}"),
                                 engine or "", res.get("probes", {})))
        return out

    def table(self, hashes: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per run: config columns, hash, status, final metrics, the probes' scalar values (one
        column per key, in order of first appearance; empty where a run had not that probe), error,
        wall_time, engine."""
        import pandas as pd  # only where a table is asked for: import deepdiag stays light

        results = self.results(hashes)
        probed = dict.fromkeys(k for r in results for k in r.probe_values())
        columns = [*FIELDS, "hash", "status", *METRICS, *probed, "error", "wall_time", "engine"]
        return pd.DataFrame([r.row() for r in results], columns=columns)

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def store_error(where: str, e: sqlite3.Error) -> StoreError:
    """One line naming the store file and what is wrong with it (and what to do)."""
    text = str(e)
    if "readonly" in text or "unable to open" in text:
        return StoreError(f"run store {where!r} cannot be opened for writing ({text}); check the "
                          "permissions of the file and its directory (SQLite writes a -wal file beside it)")
    return StoreError(f"run store {where!r} is damaged ({text}); set it aside (deepdiag run --fresh "
                      "renames it *.corrupt-<time> and starts a new one)")


def open_store(store) -> Store:
    """A Store from None (in memory), a Store, a ``.sqlite``/``.db`` file or a results directory."""
    if store is None or isinstance(store, Store):
        return store if isinstance(store, Store) else Store(None)
    if not isinstance(store, (str, Path)):
        raise TypeError(f"store={store!r} must be a results directory, a .sqlite file, a Store or None")
    path = Path(store)
    return Store(path if path.suffix in (".sqlite", ".db") else path / FILENAME)


def load_runs(directory: str | Path) -> pd.DataFrame:
    """The runs table of a results directory's store (``DIR/runs.sqlite``)."""
    path = Path(directory)
    path = path if path.suffix in (".sqlite", ".db") else path / FILENAME
    if not path.exists():
        raise ValueError(f"no run store at {str(path)!r}; write one with dd.sweep(..., store={str(directory)!r})")
    with Store(path) as s:
        try:
            return s.table()
        except sqlite3.DatabaseError as e:  # damage found only when its pages are read
            raise store_error(str(path), e) from None
