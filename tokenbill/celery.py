import os

from celery import Celery
from celery.signals import beat_init, worker_init

from tokenbill import kombu_fs  # noqa: F401  (registers the embedded broker's tbfilesystem://)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenbill.settings")

app = Celery("tokenbill")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
@beat_init.connect
def _refuse_insecure_production(**kwargs):
    # Same rule as the ASGI entry point: no worker or beat on development secrets.
    from tokenbill.security import assert_production_ready

    assert_production_ready()
