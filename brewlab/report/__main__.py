"""`python -m brewlab.report <sweep-dir>`: the sweep report (see `brewlab.report.cli`)."""

import sys

from brewlab.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
