"""Benchmarks: side-by-side comparisons that print a table (see RESULTS.md)."""
