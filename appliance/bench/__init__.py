"""Benchmarks: measured figures as JSON and a table, with baselines measured in the same run."""
