"""One exception type for user mistakes, so `run.py` can print them as one line."""

from __future__ import annotations

from collections.abc import Iterable


class BrewlabError(ValueError):
    """A problem with the user's config, data or models (not a bug in brewlab)."""


def bad_choice(key: str, value: object, choices: Iterable[str]) -> BrewlabError:
    """Error naming the key, the rejected value and the allowed values."""
    allowed = ", ".join(sorted(str(c) for c in choices))
    return BrewlabError(f"{key}={value!r} is not valid; choose one of: {allowed}")
