"""The merchant's main journey in a real browser (Playwright + Debian Chromium).

The server is the real ASGI application (console + gateway + websockets) under uvicorn,
not pytest-django's WSGI live_server: the playground and the live feed need the gateway
and Channels, which only the ASGI stack serves. Data is committed (transactional_db) so
the server's threads see it. Screenshots at 1280 and 390 px go to test-results/console/.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

import pytest

from routing.models import Role
from tests import factories

CHROMIUM = "/usr/lib/chromium/chromium"
# test-results/ is emptied by pytest-playwright at every session start (also by parallel
# sessions), so CONSOLE_SHOTS_DIR can point elsewhere while looking at the screenshots.
SHOTS = Path(os.environ.get("CONSOLE_SHOTS_DIR") or Path(__file__).resolve().parents[2] / "test-results" / "console")
PASSWORD = "browser-pass-123"

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def chromium_browser(monkeypatch):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/system-deps.sh` (make system-deps)")
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls
    # (factories) are still plain sync code. Scoped to this test only.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                                               "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture
def server(transactional_db):
    from django.core.asgi import get_asgi_application

    from tests.fakes.gateway_server import LiveServer
    from tokenbill.routing import build_application

    with LiveServer(build_application(get_asgi_application())) as live, request_log_drainer():
        yield live


@contextlib.contextmanager
def request_log_drainer(every: float = 0.3):
    """What Celery beat does in production: billing.flush_request_logs every second (here
    more often). With Redis the gateway only spools its log rows; the console's request
    log and live feed see them once drained."""
    from django.db import connections

    from billing.tasks import flush_request_logs

    stop = threading.Event()

    def loop():
        try:
            while not stop.wait(every):
                try:
                    flush_request_logs()
                except Exception:  # a test database going away at teardown
                    pass
        finally:
            connections.close_all()

    thread = threading.Thread(target=loop, name="test-log-drainer", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


@pytest.fixture
def upstream():
    from tests.fakes.openai_server import OpenAIFake

    with OpenAIFake(api_key="sk-browser-upstream") as fake:
        yield fake


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width, height in ((1280, 860), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(150)
        page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 860})


def nav(page, name: str) -> None:
    page.locator(".sidebar").get_by_role("link", name=name, exact=True).click()
    page.wait_for_load_state()


def sign_in(page, base: str, email: str) -> None:
    page.goto(f"{base}/console/login/")
    page.fill("#id_username", email)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/console/")


def submit_modal(page) -> None:
    page.click("#modal button[type=submit]")


def test_merchant_journey_provider_to_playground(chromium_browser, server, upstream):
    # given a merchant with a fresh organization
    org = factories.make_org("Journey Co")
    user = factories.make_user("merchant@example.com", password=PASSWORD)
    factories.make_member(org, role=Role.OWNER, user=user)
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    base = server.url

    # when they sign in (a wrong password first), they land on the dashboard with the getting-started steps
    page.goto(f"{base}/console/login/")
    page.fill("#id_username", "merchant@example.com")
    page.fill("#id_password", "wrong-password")
    page.click("button[type=submit]")
    page.wait_for_selector(".form-errors")
    shot(page, "00-login-error")
    sign_in(page, base, "merchant@example.com")
    assert page.locator("h1").inner_text() == "Dashboard"
    assert page.get_by_text("Get started in four steps").is_visible()
    shot(page, "01-dashboard-empty")

    # and add a provider pointing at the fake upstream (modal form, inline errors first)
    nav(page, "Providers")
    page.get_by_role("link", name="+ Add provider").click()
    page.wait_for_selector("#modal form")
    submit_modal(page)
    page.wait_for_selector("#modal .has-error")
    shot(page, "02-provider-errors")
    page.fill("#modal #id_name", "Fake OpenAI")
    page.select_option("#modal #id_kind", "openai_compatible")
    page.fill("#modal #id_base_url", upstream.base_url)
    page.fill("#modal #id_api_key", "sk-browser-upstream")
    submit_modal(page)
    page.wait_for_selector("text=Fake OpenAI")
    assert "sk-browser-upstream" not in page.content()
    page.get_by_role("button", name="Test connection").click()
    page.wait_for_selector("[data-test-result]")
    shot(page, "03-providers")

    # and two physical models
    nav(page, "Models & routes")
    for name in ("fake-a", "fake-b"):
        page.get_by_role("link", name="+ Physical model").click()
        page.wait_for_selector("#modal form")
        page.fill("#modal #id_upstream_model", name)
        page.select_option("#modal #id_provider", label="Fake OpenAI")
        page.fill("#modal #id_input_cost_per_mtok", "0.5")
        page.fill("#modal #id_output_cost_per_mtok", "1.5")
        submit_modal(page)
        page.wait_for_selector(f"td >> text={name}")

    # and a logical model with two routes (second one in a fallback tier)
    page.get_by_role("link", name="+ Logical model").click()
    page.wait_for_selector("#modal form")
    page.fill("#modal #id_name", "chat")
    submit_modal(page)
    page.wait_for_selector("h1 >> text=chat")
    page.select_option("#id_physical_model", label="fake-a @ Fake OpenAI")
    page.get_by_role("button", name="Add route").click()
    page.wait_for_selector("tr[data-route]")
    page.select_option("#id_physical_model", label="fake-b @ Fake OpenAI")
    page.fill("#id_priority", "1")
    page.get_by_role("button", name="Add route").click()
    page.wait_for_function("document.querySelectorAll('tr[data-route]').length === 2")
    assert page.locator("tr[data-route]").first.get_by_text("100%").is_visible()
    shot(page, "04-routes")

    # and a Virtual Endpoint allowed to call it, with credits
    nav(page, "Virtual Endpoints")
    page.get_by_role("link", name="+ New endpoint").click()
    page.wait_for_selector("#modal form")
    page.fill("#modal #id_name", "Browser app")
    page.check("#modal input[name=allowed_models]")
    submit_modal(page)
    page.wait_for_selector("h1 >> text=Browser app")
    page.get_by_role("link", name="Grant credits").click()
    page.wait_for_selector("#modal form")
    page.fill("#modal #id_credits", "500")
    submit_modal(page)
    page.wait_for_selector("[data-balance] >> text=500")

    # and a key, whose secret is shown once and copied with one click
    page.get_by_role("link", name="+ New key").click()
    page.wait_for_selector("#modal form")
    page.fill("#modal #id_name", "backend")
    submit_modal(page)
    secret = page.locator("[data-secret]").inner_text()
    assert re.fullmatch(r"tb-\S{30,}", secret)
    page.locator("#modal").get_by_role("button", name="Copy").click()
    assert page.evaluate("window.__lastCopied") == secret
    shot(page, "05-key-created")
    page.get_by_role("link", name="Done").click()
    assert secret not in page.content()
    shot(page, "06-endpoint")

    # and an exchange rate, so provider costs convert to credits
    nav(page, "Exchange rates")
    page.fill("#id_currency", "USD")
    page.fill("#id_credits_per_unit", "100000")
    page.get_by_role("button", name="Save rate").click()
    page.wait_for_selector("dd >> text=100,000")
    shot(page, "07-rates")

    # then, with the dashboard open in a second tab (live feed connected),
    feed = context.new_page()
    feed.goto(f"{base}/console/")
    feed.wait_for_selector("#live-dot.on")
    # the playground streams an answer through the gateway
    nav(page, "Playground")
    page.fill("#pg-message", "ping from the browser")
    page.click("#pg-send")
    answer = page.locator("[data-answer=chat]")
    try:
        answer.locator(".pill", has_text="done").wait_for(timeout=15000)
    finally:
        shot(page, "08-playground")
    assert "ping from the browser" in answer.locator(".out").inner_text()
    answer.locator("[data-charge]").wait_for(timeout=15000)  # with its charge, once billed
    shot(page, "08-playground")
    # and the call arrived in the other tab's live feed as it was logged
    feed.wait_for_selector("#live-feed li[data-live]", timeout=15000)
    assert "chat" in feed.locator("#live-feed li[data-live]").first.inner_text()
    feed.close()

    # and the call appears in the request log, with its route trail in the drawer
    nav(page, "Request log")
    row = page.locator("tr[data-request]").first
    for _ in range(40):  # the log is written off the hot path, in batches
        if row.count():
            break
        page.wait_for_timeout(250)
        page.reload()
    row.click()
    page.wait_for_selector("#drawer [data-attempt]")
    assert "fake-a" in page.locator("#drawer .trail").inner_text()
    shot(page, "09-request-drawer")
    page.keyboard.press("Escape")

    # and the dashboard counts it
    nav(page, "Dashboard")
    assert page.locator(".chart svg rect").count() >= 1
    assert page.locator("#live-feed li").first.inner_text().count("chat") == 1
    page.wait_for_selector("#live-dot.on")  # the live feed's websocket is connected
    shot(page, "12-dashboard")
    # and on a phone the chart, wider than the screen, opens at its newest bars
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.wait_for_load_state("networkidle")
    scroll = page.evaluate("(() => { const c = document.querySelector('.chart'); "
                           "return [c.scrollLeft, c.clientWidth, c.scrollWidth]; })()")
    assert scroll[2] > scroll[1] and scroll[0] + scroll[1] >= scroll[2] - 1, scroll
    page.set_viewport_size({"width": 1280, "height": 860})

    # and a member of two organizations switches between them from the sidebar
    second = factories.make_org("Second Co")
    factories.make_member(second, role=Role.VIEWER, user=user)
    page.reload()
    page.select_option("#org-select", label="Second Co")
    page.wait_for_selector(".sidebar >> text=Viewer")
    assert page.locator("#org-select option:checked").inner_text() == "Second Co"
    page.select_option("#org-select", label="Journey Co")
    page.wait_for_selector(".sidebar >> text=Owner")

    # and the other pages render cleanly at both widths
    for name, link in (("10-members", "Members"), ("11-settings", "Settings"), ("13-models", "Models & routes"),
                       ("14-endpoints", "Virtual Endpoints"), ("15-requests", "Request log"), ("16-providers", "Providers")):
        page.set_viewport_size({"width": 1280, "height": 860})
        nav(page, link)
        shot(page, name)
