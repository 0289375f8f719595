"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one.

Every result file deepdiag writes (``result.json``, ``data.csv``, ``studies.csv``, ``checks.csv``,
figures and their specs, ``report.html``) goes through here: the bytes go to a temporary file in the
same directory, are flushed and ``fsync``-ed, and the temporary file is renamed over the target with
``os.replace`` (atomic on POSIX and Windows when both lie on one file system). A crash, a ``kill -9`` or
a full disk leaves the previous version in place and at worst a ``.<name>.tmp-*`` file, never a
half-written result.

Damaged files found when reading are set aside with ``set_aside`` (renamed to
``<name>.corrupt-<timestamp>``), so that one bad file never blocks the rest of a directory and its
bytes are kept for inspection.

>>> write_text("results/l2/result.json", text)
>>> with temporary_path("results/l2/curve.png") as tmp:
...     fig.savefig(tmp)          # libraries that write files themselves
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mode(path: Path) -> int:
    """The permissions `path` has, or those a plain ``open(path, "w")`` would give it (0666 less umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


@contextlib.contextmanager
def temporary_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; on a clean exit it is fsync-ed and renamed onto `path`,
    on an exception it is removed and `path` is left as it was. The temporary name keeps the suffix, so
    libraries that choose the format from it (``savefig``) still do."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.tmp-", suffix=path.suffix)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, _mode(path))  # mkstemp's 0600 would make every result private
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and e.filename is None:  # a failed write(): name the file meant
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    _fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically; return the path."""
    with temporary_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; return the path."""
    return write_bytes(path, text.encode(encoding))


def set_aside(path: str | Path) -> Path:
    """Rename a damaged file to ``<name>.corrupt-<UTC timestamp>`` beside it and return the new path,
    so that it stops blocking readers and its bytes stay available for a bug report."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():  # two damaged versions within one second
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    return target
