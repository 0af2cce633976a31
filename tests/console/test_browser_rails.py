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


@pytest.mark.parametrize("viewport", WIDTHS, ids=["1280", "390"])
def test_selling_below_cost_warns_and_asks_for_confirmation(chromium_browser, server, viewport):
    from decimal import Decimal

    from django.utils import timezone

    from billing.models import ExchangeRate
    from routing.models import LogicalModel

    # given a route costing 1.5 USD (150,000 credits) per 1M output tokens
    org, _ = merchant()
    ExchangeRate.objects.create(organization=org, currency="USD", credits_per_unit=Decimal("100000"),
                                effective_from=timezone.now() - timezone.timedelta(days=1))
    pm = factories.make_physical_model(factories.make_provider(org, name="Up"), "fake-a",
                                       output_cost_per_mtok=Decimal("1.5"))
    lm = factories.make_logical_model(org, name="chat", routes=[pm])
    context = chromium_browser.new_context(viewport=viewport)
    page = context.new_page()
    sign_in(page, server.url, "rails@example.com")
    page.goto(f"{server.url}/console/models/logical/{lm.pk}/")
    # when the merchant sets a sale price of 600 credits
    page.get_by_role("link", name="Edit model & prices").click()
    page.wait_for_selector("#modal form")
    assert "fake-a 1.5 USD = 150,000 credits" in page.locator("#modal").inner_text()
    page.fill("#modal #id_output_price_per_mtok", "600")
    page.click("#modal button[type=submit]")
    # then it is not saved: the modal says it sells below cost and asks to confirm
    page.wait_for_selector("#modal .form-errors")
    assert "sells below cost" in page.locator("#modal .form-errors").inner_text()
    shot(page, f"22-loss-warning-{viewport['width']}")
    assert LogicalModel.objects.get(pk=lm.pk).output_price_per_mtok is None
    # and ticking "Save anyway" saves it
    page.check("#modal #id_confirm_loss")
    page.click("#modal button[type=submit]")
    page.wait_for_selector(".toast")
    assert LogicalModel.objects.get(pk=lm.pk).output_price_per_mtok == 600
    context.close()


@pytest.mark.parametrize("viewport", WIDTHS, ids=["1280", "390"])
def test_checkout_settings_in_dollars_refuse_min_above_max(chromium_browser, server, viewport):
    from routing.models import VirtualEndpoint

    # given a Virtual Endpoint with the default checkout settings
    org, _ = merchant()
    ve = factories.make_ve(org, name="Shop")
    context = chromium_browser.new_context(viewport=viewport)
    page = context.new_page()
    sign_in(page, server.url, "rails@example.com")
    page.goto(f"{server.url}/console/endpoints/{ve.pk}/")
    # when the merchant opens Edit, the amounts read in dollars
    page.locator(".page-head").get_by_role("link", name="Edit", exact=True).click()
    page.wait_for_selector("#modal form")
    assert page.input_value("#modal #id_checkout_min_amount") == "5.00"
    # and a minimum of $50 above a maximum of $1 is refused where it was typed
    page.fill("#modal #id_checkout_min_amount", "50")
    page.fill("#modal #id_checkout_max_amount", "1")
    page.click("#modal button[type=submit]")
    page.wait_for_selector("#modal .has-error")
    assert "Must be at least the smallest custom amount." in page.locator("#modal .has-error").inner_text()
    shot(page, f"23-checkout-range-{viewport['width']}")
    assert VirtualEndpoint.objects.get(pk=ve.pk).checkout_min_amount == 500
    # and $50–$1,000 saves as minor units, once the $10 button is inside the range too
    page.fill("#modal #id_checkout_max_amount", "1000")
    page.click("#modal button[type=submit]")
    page.wait_for_selector("#modal .has-error >> text=Outside the custom range $50.00–$1,000.00: $10.00.")
    page.fill("#modal #id_checkout_amounts", "50, 100")
    page.click("#modal button[type=submit]")
    page.wait_for_selector(".toast")
    saved = VirtualEndpoint.objects.get(pk=ve.pk)
    assert (saved.checkout_amounts, saved.checkout_min_amount, saved.checkout_max_amount) == ([5000, 10000], 5000, 100000)
    context.close()


@pytest.mark.parametrize("viewport", WIDTHS, ids=["1280", "390"])
def test_key_created_modal_warns_before_closing_and_the_list_shows_the_new_key(chromium_browser, server, viewport):
    # given a Virtual Endpoint without keys
    org, _ = merchant()
    ve = factories.make_ve(org, name="Shop")
    context = chromium_browser.new_context(viewport=viewport)
    page = context.new_page()
    sign_in(page, server.url, "rails@example.com")
    page.goto(f"{server.url}/console/endpoints/{ve.pk}/")
    # when the merchant creates a key and presses Escape
    page.get_by_role("link", name="+ New key").click()
    page.wait_for_selector("#modal form")
    page.fill("#modal #id_name", "backend")
    page.click("#modal button[type=submit]")
    secret = page.locator("[data-secret]").inner_text()
    page.keyboard.press("Escape")
    # then the secret stays on screen with a warning
    assert page.locator("[data-secret]").inner_text() == secret
    assert page.locator("[data-close-warning]").is_visible()
    assert "loses the key" in page.locator("[data-close-warning]").inner_text()
    shot(page, f"24-key-close-warning-{viewport['width']}")
    # and a second try (a click outside) closes it, and the key list shows the new key, without its secret
    page.locator(".modal-backdrop").click(position={"x": 3, "y": 3})
    page.wait_for_selector("#modal .modal", state="detached")
    page.wait_for_load_state()
    page.wait_for_selector("text=backend")
    assert secret not in page.content()
    context.close()


@pytest.mark.parametrize("viewport", WIDTHS, ids=["1280", "390"])
def test_invalid_inline_route_edit_says_why_where_it_was_typed(chromium_browser, server, viewport):
    from decimal import Decimal

    from routing.models import Route

    # given a logical model with one route of weight 1
    org, _ = merchant()
    pm = factories.make_physical_model(factories.make_provider(org, name="Up"), "fake-a")
    lm = factories.make_logical_model(org, name="chat", routes=[pm])
    context = chromium_browser.new_context(viewport=viewport)
    page = context.new_page()
    sign_in(page, server.url, "rails@example.com")
    page.goto(f"{server.url}/console/models/logical/{lm.pk}/")
    # when the merchant types a weight of -3 and leaves the box
    weight = page.locator("tr[data-route] input[name=weight]")
    weight.fill("-3")
    weight.press("Tab")
    # then the row says why it was not saved, and the box still shows what was typed
    error = page.locator("tr[data-route] [data-route-error]")
    error.wait_for()
    assert "Weight" in error.inner_text() and "greater than or equal to 0" in error.inner_text()
    assert page.locator("tr[data-route] input[name=weight]").input_value() == "-3"
    assert page.locator("tr[data-route] input[name=weight]").get_attribute("aria-invalid") == "true"
    shot(page, f"25-inline-error-{viewport['width']}")
    assert Route.objects.get(logical_model=lm).weight == Decimal("1")
    # and a valid weight then saves, and the error goes
    page.locator("tr[data-route] input[name=weight]").fill("2")
    page.locator("tr[data-route] input[name=weight]").press("Tab")
    page.wait_for_selector("tr[data-route] [data-route-error]", state="detached")
    assert Route.objects.get(logical_model=lm).weight == Decimal("2")
    context.close()


@pytest.mark.parametrize("viewport", WIDTHS, ids=["1280", "390"])
def test_only_owner_demoting_themselves_is_told_what_to_do(chromium_browser, server, viewport):
    # given an organization with one owner
    merchant()
    context = chromium_browser.new_context(viewport=viewport)
    page = context.new_page()
    sign_in(page, server.url, "rails@example.com")
    page.goto(f"{server.url}/console/members/")
    # when they make themselves a viewer
    page.select_option("select[name=role]", "viewer")
    # then they stay on the members page, still owner, told what to do (not a bare 403)
    page.wait_for_selector(".toast-error")
    assert page.url == f"{server.url}/console/members/"
    assert "Make another member Owner first" in page.locator(".toast-error").inner_text()
    assert page.locator(".sidebar").get_by_text("Owner").count() == 1
    shot(page, f"26-last-owner-{viewport['width']}")
    context.close()


def test_phone_menu_and_skip_link_work_from_the_keyboard(chromium_browser, server):
    # given a merchant on a phone
    merchant()
    context = chromium_browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    sign_in(page, server.url, "rails@example.com")
    # when they press Tab, the first stop is the skip link, which moves focus to the content
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    # and from the top, the second stop is the menu toggle, exposed with a name; Space opens the menu
    page.reload()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "nav-toggle"
    assert page.get_by_role("checkbox", name="Menu").count() == 1
    assert not page.locator(".sidebar").get_by_role("link", name="Providers").is_visible()
    page.keyboard.press("Space")
    page.locator(".sidebar").get_by_role("link", name="Providers").wait_for(state="visible")
    from tests.console.test_browser import SHOTS

    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(400)  # the slide-in transition (0.2 s) ends
    page.screenshot(path=str(SHOTS / "27-phone-menu-keyboard-390.png"))
    # and the sidebar's muted text has at least 4.5:1 contrast
    color = page.evaluate("getComputedStyle(document.querySelector('.sidebar .org-switch .muted')).color")
    assert color == "rgb(169, 176, 199)", color
    context.close()
