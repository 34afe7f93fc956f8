"""Atomic writes: every output a later run reads (metrics, caches, checkpoints, saved models) goes
through here, so a kill or a full disk leaves the old file or the new one, never a truncated one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from brewlab.core.errors import BrewlabError


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", prefix: str = ".", fsync: bool = False) -> Iterator[IO[Any]]:
    """A temporary file beside `path`, renamed onto it when the block ends; on any error or
    interrupt the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    with atomic_open(path, "w") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)


def write_jsonl(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Rows as JSON lines (exported splits, cached augmented data, predictions, fixtures)."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def publish_dir(build: Path, final: Path) -> None:
    """Move a fully written directory into place; an older copy is replaced only now."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(build, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(build, final)
        except OSError:
            if not final.is_dir():
                raise
            # a parallel job (joblib launcher, empty cache) published the same entry first;
            # entries are keyed by content, so its copy serves and ours is dropped
            shutil.rmtree(build, ignore_errors=True)


def check_writable(path: str, key: str) -> None:
    """`path` can hold files, so that a run never fails on its output directory after training."""
    where = Path(path).expanduser()
    try:
        where.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=where).close()
    except OSError as exc:
        raise BrewlabError(f"{key}={path!r} is not a writable directory ({exc.strerror or exc})") from None
