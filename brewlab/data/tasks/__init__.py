"""Tasks: data sources and task kinds, each registered by name (the contract is in `base`).

Importing the package registers every built-in kind and source; a kind or source module imports
what it needs from `brewlab.data.tasks.base`, never from this package, so there is no import cycle.
"""

from brewlab.data.tasks import (
    classification,  # noqa: E402,F401
    cmrc_pd98,  # noqa: E402,F401
    mlm,  # noqa: E402,F401
    mrc,  # noqa: E402,F401
    ner,  # noqa: E402,F401
    readers,  # noqa: E402,F401,I001 (kinds and sources register themselves on import)
)
from brewlab.data.tasks.base import (
    KINDS,
    SOURCES,
    SPLITS,
    Example,
    KindBase,
    TaskData,
    TaskKind,
    example_id,
    kind_of,
)
from brewlab.data.tasks.loading import load_task_data

__all__ = ["KINDS", "SOURCES", "SPLITS", "Example", "KindBase", "TaskData", "TaskKind", "example_id", "kind_of", "load_task_data"]
