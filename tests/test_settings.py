"""Settings come from the environment, and production refuses development secrets."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from tokenbill.security import assert_production_ready

ROOT = Path(__file__).resolve().parent.parent
GOOD_SECRET = "a-very-long-random-production-secret-0123456789"


def test_production_refuses_the_insecure_default_secret(settings):
    # given
    settings.DEBUG = False
    settings.SECRET_KEY = settings.INSECURE_SECRET_KEY
    settings.FIELD_ENCRYPTION_KEY = "x" * 44
    # then
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY"):
        assert_production_ready()


def test_production_refuses_a_short_secret_and_a_missing_encryption_key(settings):
    settings.DEBUG = False
    settings.SECRET_KEY = "short"
    settings.FIELD_ENCRYPTION_KEY = ""
    with pytest.raises(ImproperlyConfigured) as excinfo:
        assert_production_ready()
    assert "SECRET_KEY" in str(excinfo.value) and "FIELD_ENCRYPTION_KEY" in str(excinfo.value)


def test_production_accepts_real_secrets_and_debug_accepts_anything(settings):
    settings.DEBUG = False
    settings.SECRET_KEY = GOOD_SECRET
    settings.FIELD_ENCRYPTION_KEY = "x" * 44
    settings.STRIPE_SECRET_KEY = ""
    settings.CHECKOUT_TEST_MODE = False
    assert_production_ready()
    settings.DEBUG = True
    settings.SECRET_KEY = settings.INSECURE_SECRET_KEY
    assert_production_ready()


def test_production_refuses_free_test_mode_checkout(settings):
    # given: real secrets, but no Stripe key and test-mode checkout still on
    settings.DEBUG = False
    settings.SECRET_KEY = GOOD_SECRET
    settings.FIELD_ENCRYPTION_KEY = "x" * 44
    settings.STRIPE_SECRET_KEY = ""
    settings.CHECKOUT_TEST_MODE = True
    # then
    with pytest.raises(ImproperlyConfigured, match="test mode"):
        assert_production_ready()


def _settings_in_subprocess(env: dict, expression: str) -> subprocess.CompletedProcess:
    code = f"import django; django.setup(); from django.conf import settings; print({expression})"
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY"}}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**clean, "DJANGO_SETTINGS_MODULE": "tokenbill.settings", **env})


def test_asgi_entry_point_refuses_to_start_with_the_default_secret(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import tokenbill.asgi"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={**{k: v for k, v in os.environ.items()
                                                if k not in {"DEBUG", "SECRET_KEY", "DATABASE_URL", "REDIS_URL"}},
                                             "TOKENBILL_DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "refuses to start" in result.stderr


def test_embedded_default_and_production_shape_from_env(tmp_path):
    # when
    embedded = _settings_in_subprocess({"TOKENBILL_DATA_DIR": str(tmp_path)},
                                       "settings.DATABASES['default']['ENGINE'], settings.CACHES['default']['BACKEND'],"
                                       " settings.CELERY_BROKER_URL")
    production = _settings_in_subprocess(
        {"TOKENBILL_DATA_DIR": str(tmp_path), "DATABASE_URL": "postgres://u:p@db:5432/tb",
         "REDIS_URL": "redis://r:6379/0"},
        "settings.DATABASES['default']['ENGINE'], settings.CACHES['default']['BACKEND'], settings.CELERY_BROKER_URL")
    # then
    assert embedded.returncode == 0, embedded.stderr
    assert "sqlite3" in embedded.stdout and "LocMemCache" in embedded.stdout and "tbfilesystem://" in embedded.stdout
    assert production.returncode == 0, production.stderr
    assert "postgresql" in production.stdout and "RedisCache" in production.stdout
    assert "redis://r:6379/0" in production.stdout


def test_bad_boolean_env_value_is_refused(tmp_path):
    result = _settings_in_subprocess({"TOKENBILL_DATA_DIR": str(tmp_path), "DEBUG": "maybe"}, "settings.DEBUG")
    assert result.returncode != 0 and "DEBUG must be a boolean" in result.stderr
