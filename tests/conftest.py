import pytest

from tests import factories


@pytest.fixture
def org(db):
    return factories.make_org("Acme")


@pytest.fixture
def owner(org):
    return factories.make_member(org).user
