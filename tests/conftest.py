import pytest

from tests import factories


@pytest.fixture(scope="session", autouse=True)
def _test_database_can_be_dropped(django_db_setup, django_db_blocker):
    """Torn down just before pytest-django drops the test database: on PostgreSQL, end the
    sessions that threads of live servers, log writers and caches may still hold on it,
    so the pid-named test database is dropped instead of left behind on the CI machine."""
    yield
    from django.db import connection, connections

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        connections.close_all()


@pytest.fixture
def org(db):
    return factories.make_org("Acme")


@pytest.fixture
def owner(org):
    return factories.make_member(org).user


def pytest_sessionfinish(session, exitstatus):
    """Let the interpreter exit: collect unclosed aiohttp sessions now, while every thread
    is alive, and silence logging. Otherwise a daemon server thread frozen at shutdown
    while holding a logging handler's lock deadlocks the finalizer that logs "Unclosed
    client session" (seen once as a CI run that passed and never exited)."""
    import gc
    import logging

    gc.collect()
    logging.disable(logging.CRITICAL)
