"""payshop: a tiny shop whose "Pay" button charges a card exactly once.

Settings read from the environment: CHERGA_URL (cherga's address),
PAYSHOP_DB (the SQLite file).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("PAYSHOP_SECRET_KEY", "payshop-example-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.staticfiles",
    "cherga.django",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

ROOT_URLCONF = "payshop.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
WSGI_APPLICATION = "payshop.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("PAYSHOP_DB", BASE_DIR / "db.sqlite3"),
        "OPTIONS": {
            # Writers take the lock when the transaction begins, so two
            # concurrent "Pay" requests queue up instead of failing with
            # "database is locked" when both try to upgrade a read lock.
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }
}

TASKS = {
    "default": {
        "BACKEND": "cherga.django.ChergaBackend",
        "QUEUES": ["payments"],
        "OPTIONS": {
            "URL": os.environ.get("CHERGA_URL", "http://127.0.0.1:7700"),
            # The charge task is written to the outbox in the same transaction
            # as the Payment row: it exists exactly when the payment does.
            "OUTBOX": True,
        },
    }
}

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# One handler, on the root logger: cherga's loggers and Django's propagate to
# it, so each line is printed once. ("django" loses the handler Django gives it
# by default, which would print Django's lines a second time.)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {
        "django": {"handlers": [], "level": "INFO"},
        # httpx logs every request to cherga at INFO.
        "httpx": {"level": "WARNING"},
    },
}
