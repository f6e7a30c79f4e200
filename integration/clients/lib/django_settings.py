"""Django settings for its own test suite against PostgreSQL; the target comes from CLIENTS_DJANGO_*."""

# Used by suites/django.py (`runtests.py --settings=django_settings`, with this directory
# on PYTHONPATH); the same file for every target, so the only difference between the
# columns is the endpoint. Nothing secret is written to disk: the password (a JWT for
# rlsgate) comes from the environment.
#
# Databases: `default` and `other` are two databases (`test_django`, `test_django_other`),
# each behind its own endpoint (one rlsgate instance serves exactly one database). `NAME`
# and `TEST["NAME"]` are the same, and `OPTIONS["dbname"]` pins every connection of an
# alias to that database, Django's maintenance connection included: Django opens that to
# `postgres` (refused by rlsgate with 3D000) and its fallback would use the first alias's
# NAME for every alias, which the second instance does not serve. With `--keepdb` the
# runner's own fresh databases are then used as they are (no CREATE DATABASE).

import os


def _database(alias: str) -> dict:
    env = lambda key: os.environ[f"CLIENTS_DJANGO_{alias.upper()}_{key}"]  # noqa: E731
    name = env("NAME")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": os.environ["CLIENTS_DJANGO_USER"],
        "PASSWORD": os.environ["CLIENTS_DJANGO_PASSWORD"],
        "HOST": env("HOST"),
        "PORT": env("PORT"),
        "OPTIONS": {"dbname": name, "sslmode": "disable", "connect_timeout": 10},
        "TEST": {"NAME": name},
    }


DATABASES = {"default": _database("default"), "other": _database("other")}

SECRET_KEY = "django_tests_secret_key"
# As in Django's own test_sqlite.py: a fast hasher.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False

# Per-test outcomes as JSON (lib/django_json_runner.py, next to this file).
TEST_RUNNER = "django_json_runner.JSONDiscoverRunner"
