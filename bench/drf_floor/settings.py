"""The DRF floor's settings: stock Django and DRF, with the project's own where they
would change the cost of a request.

From ``paymentsite.settings`` (read from the same environment): the database connection
settings (``DATABASE_URL``, ``CONN_MAX_AGE``, ``CONN_HEALTH_CHECKS`` and the SQLite
pragmas), the security settings, and the logging. The middleware is the project's list
less the project's own and its features: ``ErrorPagesMiddleware`` and
``EventStoreUnavailableMiddleware`` (its error pages), ``HttpMetricsMiddleware`` (metrics) and
django-axes' (login lock-out) are left out; the project's ``CommonMiddleware`` is
Django's here. DRF: ``TokenAuthentication`` as DRF ships it, JSON in and out, no
throttling (the benchmark turns the project's user throttle off too).
"""

from pathlib import Path

from paymentsite.settings import (  # noqa: F401 (settings Django reads by name)
    ALLOWED_HOSTS,
    DATABASES,
    DEBUG,
    LOGGING,
    SECRET_KEY,
    SECURE_SSL_REDIRECT,
    env,
)

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "rest_framework",
    "rest_framework.authtoken",
    "bench.drf_floor",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "bench.drf_floor.urls"
WSGI_APPLICATION = "bench.drf_floor.wsgi.application"
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The durable variant's rows: a database file of their own, beside the default one,
# committed as the embedded event store commits (WAL, synchronous=FULL).
_default = DATABASES["default"]
DATABASES["writes"] = {
    **_default,
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": env.str("DRF_FLOOR_WRITES",
                    default=str(Path(str(_default["NAME"])).with_name("floor-writes.sqlite3"))),
    "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
                "transaction_mode": "IMMEDIATE", "timeout": 20},
}
DATABASE_ROUTERS = ["bench.drf_floor.models.WritesRouter"]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}
