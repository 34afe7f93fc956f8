"""Sweep report from the repo root: `python scripts/compare.py <sweep-dir> [--out DIR] [--metric NAME] [--title TEXT]`.

A thin wrapper so the report is runnable without installing brewlab; see brewlab/report/cli.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brewlab.report.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
