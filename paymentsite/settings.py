"""Settings, read from the environment or a `.env` file (django-environ).

Defaults give a working local setup with no service running: SQLite for the read
models in `var/db.sqlite3` and the embedded event store in `var/events.sqlite3`.
"""

import ipaddress
import os
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"



class Env(environ.Env):
    """django-environ's ``Env``, except that a boolean must read as one.

    Out of the box any value that is not true-like reads as false, so a typo
    (``METRICS_ENABLED=ture``, ``CONN_HEALTH_CHECKS=maybe``) would quietly turn a
    setting off; here the start-up stops instead, naming the variable. Every boolean
    setting (and DATABASE_URL's ``?conn_health_checks=``) is read through this.
    """

    BOOLEAN_FALSE_STRINGS = ("false", "off", "no", "n", "0", "")

    @classmethod
    def parse_value(cls, value: object, cast: object) -> object:
        if cast is bool and isinstance(value, str):
            word = value.strip().lower()
            if word not in cls.BOOLEAN_TRUE_STRINGS and word not in cls.BOOLEAN_FALSE_STRINGS:
                try:
                    int(word)  # any number, as django-environ reads one: 0 is false
                except ValueError:
                    raise ValueError(f"{value!r} is neither true nor false") from None
        return super().parse_value(value, cast)

    def get_value(self, var: str, cast: object = None, default: object = environ.Env.NOTSET,
                  parse_default: bool = False) -> object:
        try:
            return super().get_value(var, cast=cast, default=default,
                                     parse_default=parse_default)
        except ValueError as e:
            if cast is not bool:
                raise
            raise ImproperlyConfigured(f"{var} must be true or false (on/off, yes/no, 1/0),"
                                       f" not {self.ENVIRON.get(var)!r}") from e


env = Env()
Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)
# A development key is generated locally by dev.py into .env; production sets its own.
SECRET_KEY = env.str("SECRET_KEY", default="insecure-only-for-tests" if DEBUG else None)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # whitenoise serves static files under runserver too, exactly as in production
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    # Failed logins counted per username and address; lock-out after AXES_FAILURE_LIMIT.
    "axes",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "payments",
    "projections",
    # The project's own start-up: traces when the environment asks (paymentsite/tracing.py).
    "paymentsite.apps.PaymentsiteConfig",
]

# Prometheus metrics (paymentsite/metrics.py, docs/OPERATIONS.md): off, nothing is
# recorded, /metrics is a 404 and run_projection serves none.
METRICS_ENABLED = env.bool("METRICS_ENABLED", default=True)
# HTTP requests by view and status (paymentsite.metrics.HttpMetricsMiddleware), inside the
# others (just before axes, which must stay last), so it sees the view and the status the
# site answers.
_http_metrics = ["paymentsite.metrics.HttpMetricsMiddleware"]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # JSON errors under /api/, the site's 404/405 pages elsewhere, also with DEBUG on.
    "paymentsite.errors.ErrorPagesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # Django's, but APPEND_SLASH never redirects a POST (it would become a GET).
    "paymentsite.errors.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Django's, its storage made on first use (the API never uses it).
    "paymentsite.messages.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "payments.middleware.EventStoreUnavailableMiddleware",
    *(_http_metrics if METRICS_ENABLED else []),
    # django-axes: last, as its documentation asks; answers a locked-out login.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "paymentsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "paymentsite.context_processors.read_after",
            ],
        },
    },
]

WSGI_APPLICATION = "paymentsite.wsgi.application"

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}


def _connection_setting(name: str, cast: type, default: int | bool) -> int | bool:
    """CONN_MAX_AGE or CONN_HEALTH_CHECKS: DATABASE_URL's own ``?conn_max_age=`` (or
    ``?conn_health_checks=``) where it has one, else the variable of that name; both,
    disagreeing, stop the start-up rather than one silently losing."""
    in_url = DATABASES["default"].get(name)
    try:
        if in_url is None:
            return env(name, cast=cast, default=default)
        value = env.parse_value(str(in_url), cast)
        if name in os.environ and env(name, cast=cast) != value:
            raise ImproperlyConfigured(f"DATABASE_URL's ?{name.lower()}={in_url} and"
                                       f" {name}={os.environ[name]} disagree: set one of them")
        return value
    except ValueError:  # the variable's own errors say so themselves (Env.get_value)
        raise ImproperlyConfigured(
            f"{name} must be a whole number of seconds" if cast is int
            else f"DATABASE_URL's ?{name.lower()}= must be true or false, not {in_url!r}"
        ) from None


# Persistent connections: a thread (a gunicorn worker's) keeps its connection across
# requests for CONN_MAX_AGE seconds (0: one connection per request, Django's default;
# opening one cost more than half of a GET's CPU, docs/BENCHMARKS.md), and with
# CONN_HEALTH_CHECKS tests it before the first query of each request (one `SELECT 1` on
# PostgreSQL), so that a restarted database costs no request an error. Only the request
# cycle closes or checks a connection: a projection runner keeps its own for its whole
# life (projections/locks.py; docs/OPERATIONS.md, "Database connections").
DATABASES["default"]["CONN_MAX_AGE"] = _connection_setting("CONN_MAX_AGE", int, 600)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = _connection_setting("CONN_HEALTH_CHECKS", bool, True)
if DATABASES["default"]["CONN_MAX_AGE"] < 0:
    raise ImproperlyConfigured("CONN_MAX_AGE must be 0 or more seconds")
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL: the admin reads while a projection runner writes. IMMEDIATE: a writer takes
    # the lock when its transaction starts, so two writers queue instead of deadlocking.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    )
    # Tests run runners in threads: they need a real file, not memory (one per test run).
    DATABASES["default"].setdefault("TEST", {}).setdefault(
        "NAME", str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")
    )

# The event store: `sqlite:////absolute/path` for the embedded store (the default), or
# `esdb://host:2113?Tls=false` / `esdb+discover://…` for EventStoreDB.
EVENTSTORE_URI = env.str("EVENTSTORE_URI", default=f"sqlite:///{VAR_DIR / 'events.sqlite3'}")
# Seconds any single event store call may take before it counts as "unavailable".
EVENTSTORE_TIMEOUT = env.float("EVENTSTORE_TIMEOUT", default=5.0)
# Seconds a command may wait for its turn on a payment and back off after races lost
# to other processes; then it is a 409 "try again" (payments/services.py).
COMMAND_DEADLINE = env.float("COMMAND_DEADLINE", default=5.0)
if not COMMAND_DEADLINE > 0:
    raise ImproperlyConfigured(f"COMMAND_DEADLINE must be more than 0 s, not {COMMAND_DEADLINE}")

# Seconds a read of a projection given ``?after=<position>`` (a command's event) may
# wait for the projection to apply it; then it answers marked stale, never an error
# (projections/read_your_writes.py). 0: never wait, only say whether it is there.
READ_YOUR_WRITES_TIMEOUT = env.float("READ_YOUR_WRITES_TIMEOUT", default=2.0)
if not 0 <= READ_YOUR_WRITES_TIMEOUT <= 30:
    raise ImproperlyConfigured("READ_YOUR_WRITES_TIMEOUT must be from 0 to 30 s (a request"
                               f" waits at most this long), not {READ_YOUR_WRITES_TIMEOUT}")

DEFAULT_CURRENCY = env.str("DEFAULT_CURRENCY", default="EUR")

# Who may scrape /metrics and a runner's metrics port: a request with the header
# `Authorization: Bearer <METRICS_TOKEN>`, or from an address in METRICS_ALLOWED_IPS
# (addresses or networks, comma-separated: 10.0.0.0/8,192.0.2.7; the peer's address, not a
# proxy's X-Forwarded-For). Either one lets a scrape in. With neither set, /metrics is open
# with DEBUG on (dev.py run) and closed to everybody with DEBUG off: production sets one.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
if METRICS_TOKEN and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 16 characters (or unset)")

def _networks(name: str) -> list[str]:
    """Addresses and networks, checked here so that a typo stops the start-up."""
    networks = []
    for value in env.list(name, default=[]):
        try:
            networks.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}: {value!r} is not an address or a network such as 10.0.0.0/8"
            ) from None
    return networks


METRICS_ALLOWED_IPS = _networks("METRICS_ALLOWED_IPS")
# `run_projection --metrics-port` by default (none: a runner serves no metrics), and the
# address it listens on (0.0.0.0 in a container, where Prometheus is another host).
METRICS_PORT = env.int("METRICS_PORT", default=None)
METRICS_ADDRESS = env.str("METRICS_ADDRESS", default="127.0.0.1")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Production serves hashed, compressed files from STATIC_ROOT (run collectstatic);
# with DEBUG on (development, tests) files come straight from the apps and static/.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage" if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage",
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# The HTML pages: everything needs a login (Django's auth views under /accounts/).
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "projections:overview"
LOGOUT_REDIRECT_URL = "login"

# Login attempts (django-axes) on every login form: the site's, the admin's and DRF's.
# After AXES_FAILURE_LIMIT wrong passwords for one username from one address, that pair
# cannot log in for AXES_COOLOFF_MINUTES (a 429 page, paymentsite.errors); other
# addresses and users are not affected. `manage.py axes_reset` unlocks everyone.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out pair
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
_axes_cooloff_minutes = env.int("AXES_COOLOFF_MINUTES", default=15)
if AXES_FAILURE_LIMIT < 1 or _axes_cooloff_minutes < 1:
    raise ImproperlyConfigured("AXES_FAILURE_LIMIT and AXES_COOLOFF_MINUTES must be 1 or more")
AXES_COOLOFF_TIME = timedelta(minutes=_axes_cooloff_minutes)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True  # a login that works forgets the earlier typos
AXES_LOCKOUT_CALLABLE = "paymentsite.errors.login_locked_out"

# Production (DEBUG off) is HTTPS only. Behind a TLS-terminating proxy, set
# SECURE_PROXY_SSL_HEADER_NAME (e.g. HTTP_X_FORWARDED_PROTO) so Django sees https, or
# SECURE_SSL_REDIRECT=false if the proxy redirects plain HTTP itself.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# A container's healthcheck asks over plain HTTP on localhost (paymentsite/health.py).
# So does Prometheus, inside the network (/metrics answers only whom METRICS_* allow).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = 0 if DEBUG else env.int("SECURE_HSTS_SECONDS", default=31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG and env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS",
                                                         default=True)
SECURE_HSTS_PRELOAD = not DEBUG and env.bool("SECURE_HSTS_PRELOAD", default=True)
if env.str("SECURE_PROXY_SSL_HEADER_NAME", default=""):
    SECURE_PROXY_SSL_HEADER = (env.str("SECURE_PROXY_SSL_HEADER_NAME"), "https")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _throttle_rate(name: str, default: str) -> str | None:
    """A DRF rate such as "600/min" from the environment; "off" means no limit.

    Checked here so that a typo stops the start-up instead of every request.
    """
    value = env.str(name, default=default).strip()
    if value.lower() == "off":
        return None
    number, _, period = value.partition("/")
    if not (number.isdigit() and int(number) > 0
            and period in ("s", "sec", "second", "m", "min", "minute", "h", "hour", "d", "day")):
        raise ImproperlyConfigured(
            f"{name} must be a rate such as 600/min (per s, min, hour or day) or off,"
            f" not {value!r}")
    return value


# The REST API (payments/api): JSON only, never anonymous. Token first, so that an
# anonymous caller gets 401 with `WWW-Authenticate: Token` rather than a bare 403.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "payments.api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # DRF's JSON parser, bounded: a body over 64 KiB is a 413, nesting deeper than 32 a 400.
    "DEFAULT_PARSER_CLASSES": ["payments.api.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # DRF's, answering an absent Accept or */* without parsing it.
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "payments.api.negotiation.ContentNegotiation",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "payments.api.errors.exception_handler",
    # Requests per user (and per address for anonymous callers): a JSON 429 with
    # Retry-After beyond the rate. Counted in Django's cache, so per process with the
    # default local-memory cache.
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.UserRateThrottle",
        "rest_framework.throttling.AnonRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "user": _throttle_rate("API_THROTTLE_USER", "6000/min"),
        "anon": _throttle_rate("API_THROTTLE_ANON", "60/min"),
    },
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Payments API",
    "DESCRIPTION": (
        "Event-sourced payments: commands append events, the detail folds the stream, "
        "the lists read the projections. Amounts are decimal strings such as \"100.00\"."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and its docs need a login like every other endpoint.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI's assets come from the sidecar package, served locally: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {"PaymentStatusEnum": "payments.domain.PaymentStatus"},
}

# Logs go to stderr. LOG_LEVEL is for our own loggers (payments, projections; INFO:
# a line per command and per projection batch); Django and libraries say only
# warnings. LOG_FORMAT=json: one JSON object per line (paymentsite/logging.py).
# LOG_LEVEL stays None when unset: `manage.py api` then keeps its stderr for its own
# one-line errors (see payments/management/commands/api.py).
LOG_LEVEL = env.str("LOG_LEVEL", default=None)
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "paymentsite.logging.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "payments": {"level": (LOG_LEVEL or "INFO").upper()},
        "projections": {"level": (LOG_LEVEL or "INFO").upper()},
        # Django's console handler only speaks with DEBUG on; ours always does, in
        # LOG_FORMAT. django.server (runserver's request lines) keeps its own.
        "django": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
