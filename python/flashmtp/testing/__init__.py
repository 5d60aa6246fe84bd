"""Helpers shared by the test suite and the benchmarks (fetching real model files)."""
