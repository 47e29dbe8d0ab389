"""Benchmarks of tokenwire against peer servers and in-process baselines (`python -m bench`).

Not timed tests: a run takes minutes and writes BENCHMARKS.md.
"""
