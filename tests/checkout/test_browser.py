"""The checkout page in a real browser (Playwright + Debian Chromium), served by a live server.

The checkout link comes from billing.checkout_links.checkout_url: the 429 answer of the
gateway carries the same link (billing.biller), but the gateway is a separate ASGI app
that the live server does not serve.
"""

import os
import re
from pathlib import Path

import pytest

from billing.checkout_links import checkout_url
from billing.models import LedgerEntry, Payment
from tests import factories

CHROMIUM = "/usr/lib/chromium/chromium"
# test-results/ is gitignored (and emptied by pytest-playwright at every session start, so
# parallel runs in one tree may remove it: point CHECKOUT_SHOTS_DIR elsewhere to keep them).
SHOTS = Path(os.environ.get("CHECKOUT_SHOTS_DIR") or Path(__file__).resolve().parents[2] / "test-results" / "checkout")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"LOUD SKIP: {CHROMIUM} missing, run `make system-deps`"),
]


@pytest.fixture
def chromium_browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        yield browser
        browser.close()


@pytest.fixture
def shop(settings, live_server, test_mode, rates, org, monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls made between
    # browser steps are still plain blocking calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    settings.PUBLIC_BASE_URL = live_server.url
    ve = factories.make_ve(org, name="Acme Chat", credits=0)
    SHOTS.mkdir(parents=True, exist_ok=True)
    return ve


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)])
def test_pick_50_see_preview_pay_in_test_mode_and_land_on_success(shop, chromium_browser, width, height):
    ve = shop
    page = chromium_browser.new_page(viewport={"width": width, "height": height})
    # given the link a 429 "budget exhausted" answer carries
    page.goto(checkout_url(ve.public_id))
    assert page.locator("h1").inner_text() == "Acme Chat"
    assert page.get_by_text("Exhausted").is_visible()
    # when the payer picks $10 then $50
    page.locator("label.co-amount").filter(has_text=re.compile(r"^\s*\$10\s*$")).click()
    page.wait_for_function("document.querySelector('#preview').innerText.includes('1,000,000')")
    # (a typed amount updates the preview as the payer types)
    page.locator("#custom_amount").fill("25")
    page.wait_for_function("document.querySelector('#preview').innerText.includes('2,500,000')")
    page.locator("label.co-amount").filter(has_text=re.compile(r"^\s*\$50\s*$")).click()
    # then the preview says what $50 buys (updated by HTMX without a reload)
    page.wait_for_function("document.querySelector('#preview').innerText.includes('5,000,000')")
    preview = " ".join(page.locator("#preview").inner_text().split())
    assert preview == "$50.00 → + 5,000,000 Credits"
    # and the typed amount no longer shows beside the $50 it does not apply to
    assert page.locator("#custom_amount").input_value() == ""
    page.screenshot(path=str(SHOTS / f"checkout-{width}.png"), full_page=True)
    # when they pay securely, in test mode
    page.get_by_role("button", name="Pay securely").click()
    page.wait_for_url("**/checkout/test?ref=*")
    assert "no real card is charged" in page.content()
    page.screenshot(path=str(SHOTS / f"test-pay-{width}.png"), full_page=True)
    page.get_by_role("button", name="Confirm test payment").click()
    # then they land on the success page with the new balance
    page.wait_for_url("**/checkout/success?ref=*")
    page.get_by_text("Payment confirmed").wait_for()
    assert page.get_by_test_id("new-balance").inner_text() == "5,000,000"
    page.screenshot(path=str(SHOTS / f"success-{width}.png"), full_page=True)
    assert LedgerEntry.objects.filter(virtual_endpoint=ve, kind="top_up").count() == 1
    ve.refresh_from_db()
    assert ve.balance == 5_000_000 * 1_000_000


def test_success_page_polls_until_the_payment_is_confirmed(shop, chromium_browser, live_server):
    from billing import payments

    ve = shop
    started = payments.checkout_start(virtual_endpoint=ve, amount_minor=10000, currency="USD")
    page = chromium_browser.new_page(viewport={"width": 390, "height": 844})
    # given the payer waits on the success page while the payment is pending
    page.goto(f"{live_server.url}/checkout/success?ref={payments.payment_ref(started.payment.pk)}")
    page.get_by_text("Confirming your payment").wait_for()
    page.screenshot(path=str(SHOTS / "success-pending-390.png"), full_page=True)
    # when the payment is confirmed elsewhere (a webhook, in production)
    payments.payment_credit(payment_id=started.payment.pk)
    # then the page updates by itself within a few polls
    page.get_by_text("Payment confirmed").wait_for(timeout=5000)
    assert page.get_by_test_id("new-balance").inner_text() == "10,000,000"
    assert Payment.objects.get(pk=started.payment.pk).status == "paid"


# The gateway's fixtures (live ASGI app = gateway + Django pages, fake OpenAI upstream).
from tests.gateway.conftest import live_gateway, openai_up  # noqa: E402,F401


def test_budget_exhausted_answer_links_to_checkout_and_the_call_succeeds_after_paying(
    settings, test_mode, rates, live_gateway, openai_up, chromium_browser, monkeypatch
):
    import httpx

    from billing import gate
    from routing.cache import routing_cache

    if isinstance(gate.get_biller(), gate.NullBiller):
        pytest.skip("LOUD SKIP: the real biller (billing/biller.py) is not installed: no 429 to follow")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    settings.PUBLIC_BASE_URL = live_gateway.url
    SHOTS.mkdir(parents=True, exist_ok=True)
    # given a VE with no credits, behind the real gateway
    org = factories.make_org()
    provider = factories.make_provider(org, kind="openai", base_url=openai_up.base_url, api_key=openai_up.api_key)
    model = factories.make_logical_model(org, "chat", routes=[factories.make_physical_model(provider, "gpt-up")])
    ve = factories.make_ve(org, name="Empty Chat", models=[model])
    _, secret = factories.make_key(ve)
    routing_cache.refresh_now()
    book = getattr(gate.get_biller(), "rates", None)
    if book is not None:
        book.refresh()
    call = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    headers = {"Authorization": f"Bearer {secret}"}
    url = f"{live_gateway.url}/{ve.public_id}/v1/chat/completions"
    # when the app calls it: 429 with the checkout link
    refused = httpx.post(url, json=call, headers=headers, timeout=20)
    assert refused.status_code == 429, refused.text
    link = refused.json()["error"]["checkout_url"]
    assert link.startswith(f"{live_gateway.url}/checkout?ve_id={ve.public_id}&token=")
    # when the end user follows it, picks $50 and pays in test mode
    page = chromium_browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(link)
    page.locator("label.co-amount").filter(has_text=re.compile(r"^\s*\$50\s*$")).click()
    page.wait_for_function("document.querySelector('#preview').innerText.includes('5,000,000')")
    page.get_by_role("button", name="Pay securely").click()
    page.get_by_role("button", name="Confirm test payment").click()
    page.get_by_text("Payment confirmed").wait_for()
    page.screenshot(path=str(SHOTS / "gateway-topped-up-1280.png"), full_page=True)
    # then the same call now succeeds
    served = httpx.post(url, json=call, headers=headers, timeout=20)
    assert served.status_code == 200, served.text
    assert served.json()["choices"][0]["message"]["content"]
