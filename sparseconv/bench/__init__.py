"""Benchmarks (``sparseconv bench ...``): in-run, interleaved comparisons with peers."""
