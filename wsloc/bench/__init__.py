"""Benchmarks that print a Markdown table and write JSON (run by ``wsloc bench ...``)."""
