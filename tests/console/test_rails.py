"""Issue 21 without a browser: session expiry for htmx, money rails' validation."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_htmx_request_without_session_gets_hx_redirect_to_login_with_the_current_page(client):
    response = client.get("/console/providers/new/", HTTP_HX_REQUEST="true",
                          HTTP_HX_CURRENT_URL="http://testserver/console/providers/?q=a")
    assert response.status_code == 401
    assert response["HX-Redirect"] == "/console/login/?next=%2Fconsole%2Fproviders%2F%3Fq%3Da"
    assert b"<form" not in response.content


def test_htmx_post_without_session_never_comes_back_to_the_post_url(client):
    response = client.post("/console/providers/new/", HTTP_HX_REQUEST="true")
    assert response.status_code == 401
    assert response["HX-Redirect"] == "/console/login/"


def test_htmx_current_url_of_another_host_is_not_followed(client):
    response = client.get("/console/providers/new/", HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL="https://evil.example/x")
    assert response["HX-Redirect"] == "/console/login/?next=%2Fconsole%2Fproviders%2Fnew%2F"


def test_plain_request_without_session_still_gets_a_302(client):
    response = client.get("/console/providers/")
    assert response.status_code == 302
    assert response["Location"] == "/console/login/?next=/console/providers/"
