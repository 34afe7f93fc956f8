"""Beside `run`, at the top: the sweep report, read from run directories alone. Imports no torch (checked by import-linter and a test)."""
