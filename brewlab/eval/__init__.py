"""Layer 6: scores per split and per example, the linear baseline and the significance tests (significance imports numpy only)."""
