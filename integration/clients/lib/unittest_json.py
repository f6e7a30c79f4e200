#!/usr/bin/env python3
"""Runs a unittest suite and writes per-test outcomes as JSON.

usage: unittest_json.py MODULE:FUNCTION OUT.json
    MODULE:FUNCTION returns a unittest.TestSuite (psycopg2: tests:test_suite).
Writes {"passed": [...], "failed": [...], "skipped": [...], "details": {test: message}}
and prints the usual verbose unittest output.
"""

import importlib
import json
import os
import signal
import sys
import time
import unittest


class Recorder(unittest.TextTestResult):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.outcomes = {}
        self.details = {}
        self._t0 = {}

    @staticmethod
    def name(test) -> str:
        # "test_module.Class.test_method" (unittest's id without the package prefix)
        tid = test.id()
        return tid[len("tests."):] if tid.startswith("tests.") else tid

    def _set(self, test, outcome, err=None):
        n = self.name(test)
        # An error in tearDown after a failure: keep the failure.
        if self.outcomes.get(n) == "failed":
            return
        self.outcomes[n] = outcome
        if err is not None:
            exc = err[1]
            self.details[n] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:1000]

    # A hung test fails alone (TestTimeout) instead of eating the whole suite's time.
    def startTest(self, test):
        super().startTest(test)
        signal.alarm(int(os.environ.get("UNITTEST_TEST_TIMEOUT", "60")))

    def stopTest(self, test):
        signal.alarm(0)
        super().stopTest(test)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._set(test, "passed")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, "failed", err)

    def addError(self, test, err):
        super().addError(test, err)
        self._set(test, "failed", err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set(test, "skipped")

    def addSubTest(self, test, subtest, err):
        # A failing subTest fails its test (unittest then calls no addSuccess for it, so
        # without this the test would be missing from the report).
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._set(test, "failed", err)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set(test, "passed")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, "failed")


class TestTimeout(Exception):
    pass


def on_alarm(signum, frame):
    raise TestTimeout("test did not finish within UNITTEST_TEST_TIMEOUT seconds")


def main():
    signal.signal(signal.SIGALRM, on_alarm)
    target, out = sys.argv[1], sys.argv[2]
    mod, func = target.split(":")
    sys.argv = sys.argv[:1]
    suite = getattr(importlib.import_module(mod), func)()
    runner = unittest.TextTestRunner(verbosity=2, resultclass=Recorder, stream=sys.stdout)
    t0 = time.monotonic()
    result = runner.run(suite)
    data = {"passed": [], "failed": [], "skipped": [], "details": result.details,
            "seconds": round(time.monotonic() - t0, 1)}
    for name, outcome in sorted(result.outcomes.items()):
        data[outcome].append(name)
    with open(out, "w") as f:
        json.dump(data, f, indent=1)
    print(f"{len(data['passed'])} passed, {len(data['failed'])} failed, {len(data['skipped'])} skipped")


if __name__ == "__main__":
    main()
