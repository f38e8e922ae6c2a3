"""Benchmarks of session-manager against its real parts (`python -m bench`; see README.md).

Not tests: every figure is a ratio measured in the same run, or a count, printed with its
target and PASS or MISS, and written to bench/results/.
"""
