"""Django's DiscoverRunner that also writes per-test outcomes as JSON to $CLIENTS_DJANGO_REPORT."""

# The result class is lib/unittest_json.py's (per-test timeout, the same JSON as the
# psycopg2 suite: passed, failed, skipped, details). Selected by `TEST_RUNNER` in
# lib/django_settings.py.

import json
import os
import signal
import time

from django.test.runner import DiscoverRunner

from unittest_json import Recorder, on_alarm


class JSONDiscoverRunner(DiscoverRunner):
    def get_resultclass(self):
        return super().get_resultclass() or Recorder

    def run_suite(self, suite, **kwargs):
        signal.signal(signal.SIGALRM, on_alarm)
        t0 = time.monotonic()
        result = super().run_suite(suite, **kwargs)
        outcomes = getattr(result, "outcomes", {})
        data = {"passed": [], "failed": [], "skipped": [], "details": getattr(result, "details", {}),
                "seconds": round(time.monotonic() - t0, 1)}
        for name, outcome in sorted(outcomes.items()):
            data[outcome].append(name)
        with open(os.environ["CLIENTS_DJANGO_REPORT"], "w") as f:
            json.dump(data, f, indent=1)
        print(f"{len(data['passed'])} passed, {len(data['failed'])} failed, {len(data['skipped'])} skipped")
        return result
