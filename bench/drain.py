"""Drain the benchmark's spooled request-log rows into SQL, as Celery's
billing.flush_request_logs does in production, and print what it cost
(bench.py runs it after the load, so the drain never competes with the gateway for the
two cores; in production it runs in the Celery worker, not in the gateway process)."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenbill.settings")

import django  # noqa: E402

django.setup()

from billing.models import LedgerEntry, RequestLog  # noqa: E402
from billing.requestlog import get_writer  # noqa: E402


def main() -> None:
    writer = get_writer()
    queued = writer.queued() if hasattr(writer, "queued") else writer.pending()
    started = time.process_time()
    written = writer.flush_sync()
    cpu = time.process_time() - started
    print(f"drain: {written:,} rows written ({queued:,} queued), {cpu * 1000 / max(written, 1):.3f} ms CPU per row; "
          f"database now holds {RequestLog.objects.count():,} log rows and "
          f"{LedgerEntry.objects.filter(kind='charge').count():,} charge entries")


if __name__ == "__main__":
    main()
