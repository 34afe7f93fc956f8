"""Models and data that installed Python packages ship, named as ``pkg:<module>/<path inside it>``.

Offline machines reach PyPI but not the model hub, and a few PyPI packages carry real pretrained
encoders and labelled corpora. A preset names such a file or directory by its package, so no
user types a site-packages path, and records the SHA-256 of the files whose content the results
depend on: a package that changed under the same name is refused in one line instead of
silently giving other numbers.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from brewlab.core.errors import BrewlabError

SCHEME = "pkg:"


def is_packaged(name: str) -> bool:
    return str(name).startswith(SCHEME)


def package_path(spec: str, key: str, distribution: str | None = None) -> Path:
    """The installed file or directory that ``pkg:<module>/<path>`` names (found without
    importing the package). `distribution` is the pip name to suggest when it is missing."""
    module, _, relative = str(spec)[len(SCHEME) :].partition("/")
    found = importlib.util.find_spec(module) if module.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        hint = f"pip install {distribution or module}"
        raise BrewlabError(f"{key}={spec!r}: package {module!r} is not installed ({hint})")
    path = Path(next(iter(found.submodule_search_locations))) / relative
    if not path.exists():
        raise BrewlabError(f"{key}={spec!r}: {relative!r} is not in the installed package {module} ({path.parent})")
    return path


def sha256(path: Path) -> str:
    """The file's SHA-256, computed once per process while its size and mtime stay the same
    (a run checks the teacher at startup and again when it loads it)."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(root: Path, checksums: Mapping[str, str], key: str) -> None:
    """Every file named in `checksums` (relative to `root`) has the recorded SHA-256."""
    for relative, expected in checksums.items():
        file = root / relative
        if not file.is_file():
            raise BrewlabError(f"{key}: {file} is missing; reinstall the package")
        actual = sha256(file)
        if actual != str(expected).lower():
            raise BrewlabError(
                f"{key}: {file} has SHA-256 {actual[:16]}..., not the recorded {str(expected)[:16]}...: "
                "the installed package differs from the one the preset was made for (reinstall it, or "
                "update the checksum if the change is intended)"
            )


def resolve(spec: str, key: str, checksums: Mapping[str, str] | None = None, distribution: str | None = None) -> str:
    """A usable local path for `spec`: a ``pkg:`` name resolved and checked, anything else as is."""
    if not is_packaged(spec):
        return str(spec)
    path = package_path(spec, key, distribution)
    if checksums:
        verify(path if path.is_dir() else path.parent, checksums, key)
    return str(path)
