"""The test suite; tests/deployed.py holds checks shared by several test modules."""

import pytest

# Shared checks are plain asserts: pytest reports their values as it does the tests' own.
pytest.register_assert_rewrite("tests.deployed")
