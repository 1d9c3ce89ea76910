"""Django settings for the tests: the payshop example's settings, with the
database at $CHERGA_TEST_DB, cherga at $CHERGA_URL, and the test tasks' app."""

import os

from payshop.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.djapp"]  # noqa: F405

DATABASES["default"]["NAME"] = os.environ["CHERGA_TEST_DB"]  # noqa: F405

_URL = os.environ["CHERGA_URL"]

TASKS = {
    # Outbox: what the example uses. QUEUES [] lets tests use their own queues.
    "default": {
        "BACKEND": "cherga.django.ChergaBackend",
        "QUEUES": [],
        "OPTIONS": {"URL": _URL, "OUTBOX": True, "RETRIES": 2},
    },
    # Direct: task.enqueue() sends to cherga at once.
    "direct": {
        "BACKEND": "cherga.django.ChergaBackend",
        "QUEUES": [],
        "OPTIONS": {"URL": _URL, "RETRIES": 2},
    },
    # Direct, for one Django queue only.
    "emails": {
        "BACKEND": "cherga.django.ChergaBackend",
        "QUEUES": ["emails"],
        "OPTIONS": {"URL": _URL, "RETRIES": 2},
    },
    # Direct, each task run at most once (Django's own semantics).
    "once": {
        "BACKEND": "cherga.django.ChergaBackend",
        "QUEUES": [],
        "OPTIONS": {"URL": _URL, "MAX_ATTEMPTS": 1, "QUEUE_PREFIX": "once-"},
    },
}

LOGGING = {"version": 1, "disable_existing_loggers": False}
