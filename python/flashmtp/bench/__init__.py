"""Benchmarks behind ``flashmtp bench ...``: each prints one table and writes it as CSV."""
