"""Fixtures for console tests: an organization with one member per role, and a second
organization whose objects must stay invisible (404)."""

from __future__ import annotations

import pytest

from routing.models import Role
from tests import factories


@pytest.fixture
def org(db):
    return factories.make_org("Acme")


@pytest.fixture
def other_org(db):
    return factories.make_org("Globex")


@pytest.fixture
def members(org):
    return {role: factories.make_member(org, role=role).user for role in Role.values}


@pytest.fixture
def as_role(client, members):
    """as_role("viewer") -> the test client signed in as that role's member of `org`."""

    def sign_in(role: str):
        client.force_login(members[role])
        return client

    return sign_in


@pytest.fixture
def owner_client(as_role):
    return as_role("owner")


@pytest.fixture
def world(org, other_org):
    """A small but complete configuration in `org`, and a mirror of it in `other_org`."""

    def build(o):
        provider = factories.make_provider(o, name=f"{o.name} upstream")
        pm1 = factories.make_physical_model(provider, "fake-a")
        pm2 = factories.make_physical_model(provider, "fake-b")
        lm = factories.make_logical_model(o, name="chat", routes=[(pm1, 0, 3), (pm2, 1, 1)])
        ve = factories.make_ve(o, name=f"{o.name} app", models=[lm], credits=1000)
        key, _ = factories.make_key(ve, name="backend")
        return {"provider": provider, "pm1": pm1, "pm2": pm2, "lm": lm, "ve": ve, "key": key, "route": lm.routes.first()}

    return {"mine": build(org), "theirs": build(other_org)}


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    # Four members per test: PBKDF2 would dominate the run time of the role matrix.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
