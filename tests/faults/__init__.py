"""Fault-injection and hostile-input tests (issue 4); see conftest.py for the two levels."""
