"""Suites kept out of runner.py, one module each; runner.py lists them in SUITES."""
