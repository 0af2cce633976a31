"""TokenBill settings: one file, every value from the environment.

With no environment at all this is the embedded default: SQLite in ./data, no Redis,
an in-process cache and channel layer, and a Celery broker on the filesystem.
Setting DATABASE_URL and REDIS_URL turns it into the production shape.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from tokenbill.env import env, envbool, envfloat, envint, envlist

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env("TOKENBILL_DATA_DIR", str(BASE_DIR / "data")))
DATA_DIR.mkdir(parents=True, exist_ok=True)

INSECURE_SECRET_KEY = "insecure-dev-only-secret-key-do-not-use-in-production"
DEBUG = envbool("DEBUG", False)
SECRET_KEY = env("SECRET_KEY", INSECURE_SECRET_KEY)
# Fernet key (urlsafe base64, 32 bytes) for provider credentials at rest.
# Empty means "derive one from SECRET_KEY", which production refuses (see tokenbill/security.py).
FIELD_ENCRYPTION_KEY = env("FIELD_ENCRYPTION_KEY", "")

PUBLIC_BASE_URL = env("PUBLIC_BASE_URL", "http://localhost:8000").rstrip("/")
GATEWAY_BASE_DOMAIN = env("GATEWAY_BASE_DOMAIN", "localhost").lower()
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "*" if DEBUG else "localhost,127.0.0.1,.localhost")
if GATEWAY_BASE_DOMAIN and "*" not in ALLOWED_HOSTS:
    ALLOWED_HOSTS.append(f".{GATEWAY_BASE_DOMAIN}")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", PUBLIC_BASE_URL)
CSRF_FAILURE_VIEW = "console.views.common.csrf_failure"  # the console's own page, saying what to do

# daphne is not listed here on purpose: it only replaces `runserver`, and as an app it
# imports Twisted into every gateway worker (+150 ms start, more memory). Serve with
# uvicorn (make run, docker-compose) or `daphne tokenbill.asgi:application`.
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "django_htmx",
    "template_partials",
    "ninja",
    "routing",
    "billing",
    "gateway",
    "console",
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
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "tokenbill.urls"
ASGI_APPLICATION = "tokenbill.asgi.application"

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
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
DATABASE_URL = env("DATABASE_URL", f"sqlite:///{DATA_DIR / 'tokenbill.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=envint("DB_CONN_MAX_AGE", 0))}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db["CONN_MAX_AGE"] = 0
    _db["OPTIONS"] = {
        # WAL lets the gateway's log writer and the console read while another writes;
        # IMMEDIATE transactions take the write lock up front instead of failing mid-way.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # Tests share one file between threads and the live servers they start (an in-memory
    # database would not be visible to them); one file per test process keeps parallel runs apart.
    _db["TEST"] = {"NAME": env("TEST_DATABASE_NAME", str(DATA_DIR / f"test-{os.getpid()}.sqlite3"))}
else:
    _db["TEST"] = {"NAME": env("TEST_DATABASE_NAME", f"test_tokenbill_{os.getpid()}")}
    _db.setdefault("OPTIONS", {})["application_name"] = env("DB_APPLICATION_NAME", "tokenbill")
    # Under ASGI, Django runs sync code on a thread pool and keeps one persistent connection
    # per thread: with CONN_MAX_AGE > 0 every thread that ever served a request held one
    # (issue 17: "too many clients"). The default is CONN_MAX_AGE=0 (a Django request closes
    # its connection when it ends). psycopg's pool (DB_POOL=1) is faster and bounds them per
    # process, but a connection borrowed by a long-lived thread that never ends a request
    # (the gateway's background writers and lookups) is never given back: in the full suite
    # the pool ran dry (8 connections, "couldn't get a connection after 10 s"). Opt-in until
    # every such thread returns its connection.
    if envbool("DB_POOL", False):
        _db["CONN_MAX_AGE"] = 0
        _db["OPTIONS"]["pool"] = {"min_size": envint("DB_POOL_MIN_SIZE", 1), "max_size": envint("DB_POOL_MAX_SIZE", 8),
                                  "timeout": envfloat("DB_POOL_TIMEOUT", 10.0)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, cache, channels -------------------------------------------------------------
REDIS_URL = env("REDIS_URL", "")
if REDIS_URL:
    from tokenbill import redisconf

    try:
        # Read once, as redis-py reads it; a form we do not support (Sentinel, Cluster, a
        # typo'd scheme) stops start-up here instead of failing every call later.
        REDIS_OPTIONS = redisconf.parse(REDIS_URL)
    except redisconf.RedisURLError as exc:
        raise ImproperlyConfigured(str(exc)) from None
# Every Redis key TokenBill writes starts with this, so several deployments (or test runs)
# can share one server.
REDIS_PREFIX = env("REDIS_PREFIX", "tb:")
if "pytest" in sys.modules and not env("REDIS_PREFIX"):
    # Parallel test runs against one Redis server must not see each other's keys.
    REDIS_PREFIX = f"tbtest{os.getpid()}:"
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_PREFIX + "cache",
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": REDIS_PREFIX + "ch"},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

SESSION_ENGINE = "django.contrib.sessions.backends.db"

# --- Celery -----------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", "")
CELERY_BROKER_USE_SSL = None
if REDIS_URL and not CELERY_BROKER_URL:
    # kombu would take rediss:// as "TLS, certificate not checked" and unix:// not at all.
    CELERY_BROKER_URL, CELERY_BROKER_USE_SSL = redisconf.celery_broker(REDIS_URL, REDIS_OPTIONS)
# Embedded default: kombu's filesystem transport with atomic writes (tokenbill/kombu_fs.py).
CELERY_BROKER_URL = CELERY_BROKER_URL or "tbfilesystem://"
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {}
    if REDIS_URL or env("CELERY_BROKER_URL")
    else {
        "data_folder_in": str(DATA_DIR / "celery" / "queue"),
        "data_folder_out": str(DATA_DIR / "celery" / "queue"),
        "processed_folder": str(DATA_DIR / "celery" / "processed"),
        "store_processed": False,
        "control_folder": str(DATA_DIR / "celery" / "control"),
    }
)
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", "") or None
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE: dict = {}  # filled by billing (see billing/apps.py)
CELERY_BEAT_SCHEDULE["checkout-catch-up"] = {"task": "billing.checkout_catch_up", "schedule": 300.0}
CELERY_BEAT_SCHEDULE.update({
    "billing-flush-request-logs": {"task": "billing.flush_request_logs", "schedule": 1.0},
    "billing-release-expired-reservations": {"task": "billing.release_expired_reservations", "schedule": 60.0},
    "billing-reconcile-counters": {"task": "billing.reconcile_counters", "schedule": 60.0},
    "billing-rollup-usage": {"task": "billing.rollup_usage", "schedule": 300.0},
})

# --- Auth, i18n, static -----------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/console/login/"
LOGIN_REDIRECT_URL = "/console/"
LOGOUT_REDIRECT_URL = "/console/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env("STATIC_ROOT", str(DATA_DIR / "static_root")))
WHITENOISE_USE_FINDERS = True

# --- Email ------------------------------------------------------------------------------
EMAIL_BACKEND = env("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25)
EMAIL_HOST_USER = env("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "TokenBill <billing@localhost>")

# --- Stripe -----------------------------------------------------------------------------
STRIPE_SECRET_KEY = env("STRIPE_SECRET_KEY", "")
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET", "")
# Only for tests and local fakes: where the Stripe client sends its calls.
STRIPE_API_BASE = env("STRIPE_API_BASE", "")
# Without a Stripe key the checkout page offers a labelled test-mode payment (credits for
# nothing): on by default only in the embedded default (no DATABASE_URL).
CHECKOUT_TEST_MODE = envbool("CHECKOUT_TEST_MODE", not env("DATABASE_URL", ""))

# --- Alerts -----------------------------------------------------------------------------
# Low-balance webhooks go only to public addresses (tokenbill/netguard.py). A self-hosted
# TokenBill whose merchants' webhooks live on its LAN may allow non-public targets
# (private, loopback, link-local, ...); the cloud metadata addresses stay refused.
ALERT_WEBHOOK_ALLOW_PRIVATE = envbool("ALERT_WEBHOOK_ALLOW_PRIVATE", False)

# --- Credit leases (billing/leases.py; Redis budget only) --------------------------------
# A gateway process reserves a slice of a large balance and admits calls from it without a
# Redis round trip; a slice takes new calls this many seconds, then what is left goes back.
BILLING_LEASES = envbool("BILLING_LEASES", True)
BILLING_LEASE_SECONDS = envfloat("BILLING_LEASE_SECONDS", 2.0)
# After Redis loses its data, counters are rebuilt only this long after (every gateway
# pushes its undrained charges again meanwhile; billing/logspool.py). Tests: no wait.
BILLING_REDIS_LOSS_GRACE = envfloat("BILLING_REDIS_LOSS_GRACE", 0.0 if "pytest" in sys.modules else 3.0)

# --- Gateway ----------------------------------------------------------------------------
GATEWAY_MAX_BODY_BYTES = envint("GATEWAY_MAX_BODY_BYTES", 8 * 1024 * 1024)
GATEWAY_MAX_ATTEMPTS = envint("GATEWAY_MAX_ATTEMPTS", 4)
GATEWAY_TOTAL_TIMEOUT = envfloat("GATEWAY_TOTAL_TIMEOUT", 600.0)
GATEWAY_BREAKER_THRESHOLD = envint("GATEWAY_BREAKER_THRESHOLD", 3)
GATEWAY_BREAKER_COOLDOWN = envfloat("GATEWAY_BREAKER_COOLDOWN", 30.0)
# A route whose provider account is out of money (OpenAI 429 insufficient_quota) rests this long.
GATEWAY_QUOTA_COOLDOWN = envfloat("GATEWAY_QUOTA_COOLDOWN", 600.0)
# How often a process checks whether the configuration changed (embedded default).
# Freeze what startup loaded out of the garbage collector's reach (gateway/app.py _tune_gc).
# Off under pytest: the gateway there shares the test runner's process.
GATEWAY_GC_TUNING = envbool("GATEWAY_GC_TUNING", "pytest" not in sys.modules)
GATEWAY_CONFIG_POLL_SECONDS = envfloat("GATEWAY_CONFIG_POLL_SECONDS", 0.5)
# Access keys held per gateway process (most recently used; a cold key is one SQL lookup on
# its first call), and unknown keys/VEs remembered so repeats do not reach SQL.
GATEWAY_KEY_CACHE_SIZE = envint("GATEWAY_KEY_CACHE_SIZE", 50_000)
GATEWAY_NEGATIVE_CACHE_SIZE = envint("GATEWAY_NEGATIVE_CACHE_SIZE", 10_000)
GATEWAY_NEGATIVE_CACHE_SECONDS = envfloat("GATEWAY_NEGATIVE_CACHE_SECONDS", 5.0)
# Audio uploads (/v1/audio/transcriptions, /translations): the whole multipart body; OpenAI takes 25 MB files.
GATEWAY_MAX_UPLOAD_BYTES = envint("GATEWAY_MAX_UPLOAD_BYTES", 26 * 1024 * 1024)

# --- Upstream network (gateway/httpclient.py; README "Network settings") ---------------------
# Provider base URLs on private, loopback or link-local addresses (a LAN vLLM, a compose
# service): allowed in the embedded default (one operator, the demo's fake upstream on
# 127.0.0.1) and under tests; refused when DATABASE_URL is set unless allowed here or by the
# provider's own flag (Django admin). Cloud metadata addresses are refused always.
UPSTREAM_ALLOW_PRIVATE = envbool("UPSTREAM_ALLOW_PRIVATE", not env("DATABASE_URL", "") or "pytest" in sys.modules)
UPSTREAM_DNS_TTL = envfloat("UPSTREAM_DNS_TTL", 30.0)  # seconds a resolved (and checked) name is reused
UPSTREAM_MAX_CONNECTIONS_PER_HOST = envint("UPSTREAM_MAX_CONNECTIONS_PER_HOST", 256)  # excess calls wait
UPSTREAM_MAX_ANSWER_BYTES = envint("UPSTREAM_MAX_ANSWER_BYTES", 64 * 1024 * 1024)  # decoded, per answer
UPSTREAM_HAPPY_EYEBALLS_DELAY = envfloat("UPSTREAM_HAPPY_EYEBALLS_DELAY", 0.25)  # RFC 8305 attempt delay

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}

if not DEBUG:
    SESSION_COOKIE_HTTPONLY = True
    CSRF_COOKIE_HTTPONLY = False
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SESSION_COOKIE_SECURE = PUBLIC_BASE_URL.startswith("https://")
    CSRF_COOKIE_SECURE = PUBLIC_BASE_URL.startswith("https://")
