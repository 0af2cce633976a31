"""Issue 21 in a real browser: the console's rails and breaks, each at 1280 and 390 px.

Reuses the ASGI server and Chromium fixtures of test_browser.py."""

from __future__ import annotations

import pytest

from routing.models import Role
from tests import factories
from tests.console.test_browser import PASSWORD, chromium_browser, server, shot, sign_in  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTHS = ({"width": 1280, "height": 860}, {"width": 390, "height": 844})


def merchant(email: str = "rails@example.com", role: str = Role.OWNER):
    org = factories.make_org("Rails Co")
    user = factories.make_user(email, password=PASSWORD)
    factories.make_member(org, role=role, user=user)
    return org, user


@pytest.mark.parametrize("viewport", WIDTHS, ids=["1280", "390"])
def test_expired_session_sends_htmx_request_to_the_login_page_with_next(chromium_browser, server, viewport):
    # given a signed-in merchant on the providers page
    merchant()
    context = chromium_browser.new_context(viewport=viewport)
    page = context.new_page()
    sign_in(page, server.url, "rails@example.com")
    page.goto(f"{server.url}/console/providers/")
    # when the session expires and they open the "Add provider" modal (an htmx GET)
    context.clear_cookies()
    page.get_by_role("link", name="+ Add provider").click()
    # then the whole page goes to the login, which brings them back to the providers page
    page.wait_for_url(f"{server.url}/console/login/?next=%2Fconsole%2Fproviders%2F")
    assert page.locator("#modal form").count() == 0
    assert page.locator("form #id_username").count() == 1 and page.locator(".sidebar").count() == 0  # the login page itself
    shot(page, f"21-session-expired-{viewport['width']}")
    page.fill("#id_username", "rails@example.com")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/console/providers/")
    context.close()
