"""Data-quality gates: the Great Expectations adapter of the preflight gate."""
