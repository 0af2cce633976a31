import json

import pytest
from django.test import Client

from routing.services import management_token_create
from tests import factories


class ApiClient:
    """Django's test client speaking JSON with a management token."""

    def __init__(self, secret: str | None):
        self.client = Client()
        self.headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret else {}

    def _send(self, method: str, path: str, body=None):
        kwargs = dict(self.headers)
        if body is not None:
            kwargs.update(data=json.dumps(body), content_type="application/json")
        return getattr(self.client, method)(f"/api/v1{path}", **kwargs)

    def get(self, path):
        return self._send("get", path)

    def post(self, path, body=None):
        return self._send("post", path, body if body is not None else {})

    def patch(self, path, body):
        return self._send("patch", path, body)

    def put(self, path, body):
        return self._send("put", path, body)

    def delete(self, path):
        return self._send("delete", path)


@pytest.fixture
def api(org):
    _, secret = management_token_create(organization=org)
    return ApiClient(secret)


@pytest.fixture
def other_org(db):
    return factories.make_org("Other Co")


@pytest.fixture
def other_api(other_org):
    _, secret = management_token_create(organization=other_org)
    return ApiClient(secret)
