"""Example workspaces (importable so tests and benchmarks share their layout code)."""
