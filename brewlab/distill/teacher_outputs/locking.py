"""One builder per store entry across processes (a file lock), and the threads of the processes
waiting for it lent to the builder."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("brewlab")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` across processes (parallel jobs, torchrun ranks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("teacher store: waiting for another process to finish %s", path.with_suffix("").name)
            with _waiting(path):
                fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _waiting(lock: Path) -> Iterator[None]:
    """Say, while this process waits for `lock`, how many threads it leaves idle."""
    directory = lock.with_name(lock.name + ".waiting")
    mine = directory / f"{socket.gethostname()}-{os.getpid()}"
    try:
        directory.mkdir(exist_ok=True)
        mine.write_text(str(torch.get_num_threads()))
    except OSError:  # only a hint to the lock's holder: waiting works without it
        yield
        return
    try:
        yield
    finally:
        mine.unlink(missing_ok=True)


def waiting_threads(lock: Path) -> int:
    """The threads of the live processes on this machine that wait for `lock`."""
    host, total = socket.gethostname(), 0
    for path in lock.with_name(lock.name + ".waiting").glob(f"{host}-*"):
        try:
            pid, threads = int(path.name.rsplit("-", 1)[1]), int(path.read_text())
            os.kill(pid, 0)  # still there (a killed waiter leaves its file behind)
        except (OSError, ValueError):
            continue
        total += threads
    return total


class Borrowed:
    """While one process computes what others wait for, their threads would sit idle: it takes
    them (up to its CPUs) batch by batch and gives them back when done. The thread count does
    not change the teacher's outputs; only the batch shapes do."""

    def __init__(self, lock: Path) -> None:
        self.lock, self.own, self.most = lock, torch.get_num_threads(), torch.get_num_threads()
        self.cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or self.own

    def __enter__(self) -> Borrowed:
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.own)

    def each(self, items: Iterator[Any]) -> Iterator[Any]:
        """`items`, each computed with this process's threads and those of the waiting ones."""
        while True:
            threads = max(self.own, min(self.cpus, self.own + waiting_threads(self.lock)))
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
            if threads > self.most:
                self.most = threads
                log.info("teacher store: computing with %d threads while other processes wait for it", threads)
            try:
                yield next(items)
            except StopIteration:
                return
