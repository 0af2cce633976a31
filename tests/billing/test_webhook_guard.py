"""The alert webhook reaches only public addresses (tokenbill/netguard.py): checked when a
merchant (console) or an operator (admin, tests/test_admin.py) saves the URL and again right
before each send, unless ALERT_WEBHOOK_ALLOW_PRIVATE.

No network here: names under `.test` resolve through the `dns` fixture's table."""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.urls import reverse

from billing.alerts import check_low_balance
from console.forms import OrganizationSettingsForm
from routing.models import Role
from tests import factories
from tokenbill import netguard

CREDIT = 1_000_000
PUBLIC = "93.184.216.34"


@pytest.fixture(autouse=True)
def _private_targets_refused(settings):
    # The default, whatever the environment running the tests says; tests that allow set True.
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = False


@pytest.fixture
def dns(monkeypatch):
    """{name: [address, ...]} that socket.getaddrinfo answers for `*.test` names; other
    names (the databases, Redis) still resolve for real."""
    records: dict[str, list[str]] = {}
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if not str(host).endswith(".test"):
            return real_getaddrinfo(host, port, *args, **kwargs)
        if host not in records:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)) if ":" in a
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in records[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return records


@pytest.fixture
def hook_server():
    """A webhook receiver on 127.0.0.1 that records every request; /redirect answers 307."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "host": self.headers["Host"]})
            if self.path == "/redirect":
                self.send_response(307)
                self.send_header("Location", "/internal")
            else:
                self.send_response(204)
            self.end_headers()

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], received
    server.shutdown()
    server.server_close()


def _alert(org, url: str) -> None:
    """Save `url` as org's webhook without a form (as a row saved before the check existed), then
    cross a threshold."""
    org.alert_webhook_url = url
    org.save()
    factories.make_member(org, Role.OWNER)
    ve = factories.make_ve(org, credits=100, low_balance_threshold=20 * CREDIT)
    assert check_low_balance(ve.pk, balance=1 * CREDIT) is True


# --- the check ----------------------------------------------------------------------------


def test_public_address_is_allowed(dns):
    # given a name that resolves to a public address
    dns["hooks.shop.test"] = [PUBLIC]
    # when / then
    assert [str(a) for a in netguard.check_url("https://hooks.shop.test/alerts?token=t")] == [PUBLIC]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("10.0.0.5", "a private address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("::1", "a loopback address"),
        ("fd00::1", "a private address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("::ffff:10.0.0.5", "a private address"),
        ("2002:7f00:1::", "a loopback address"),  # 6to4 around 127.0.0.1
        ("100.64.0.1", "a non-public address"),  # carrier-grade NAT
        ("224.0.0.1", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),
    ],
)
def test_non_public_addresses_are_refused_by_name_and_as_literals(dns, address, reason):
    # given a name that resolves to the address, and the address written in the URL
    dns["hooks.shop.test"] = [address]
    literal = f"[{address}]" if ":" in address else address
    for url in ("http://hooks.shop.test/hook", f"http://{literal}:8080/hook"):
        # when / then
        with pytest.raises(netguard.UnsafeURL) as refused:
            netguard.check_url(url)
        assert str(refused.value) == f"the host resolves to {reason}"


def test_a_name_resolving_to_public_and_private_addresses_is_refused(dns):
    dns["hooks.shop.test"] = [PUBLIC, "10.0.0.5"]
    with pytest.raises(netguard.UnsafeURL, match="a private address"):
        netguard.check_url("https://hooks.shop.test/hook")


@pytest.mark.parametrize("url", ["ftp://hooks.shop.test/hook", "file:///etc/passwd", "gopher://hooks.shop.test/"])
def test_non_http_schemes_are_refused(dns, url):
    dns["hooks.shop.test"] = [PUBLIC]
    with pytest.raises(netguard.UnsafeURL, match="only http and https"):
        netguard.check_url(url)


def test_unresolvable_and_hostless_urls_are_refused(dns):
    with pytest.raises(netguard.UnsafeURL, match="could not be resolved"):
        netguard.check_url("https://nowhere.test/hook")
    with pytest.raises(netguard.UnsafeURL, match="no host"):
        netguard.check_url("http:///hook")


def test_allow_private_lets_loopback_through_but_never_the_metadata_address(dns):
    dns["metadata.shop.test"] = ["169.254.169.254"]
    assert [str(a) for a in netguard.check_url("http://127.0.0.1:8080/hook", allow_private=True)] == ["127.0.0.1"]
    with pytest.raises(netguard.UnsafeURL, match="cloud metadata"):
        netguard.check_url("http://metadata.shop.test/latest/meta-data/", allow_private=True)


def test_redacted_url_keeps_no_credentials_query_or_fragment():
    assert netguard.redact("https://user:pw@hooks.shop.test:8443/a/b?token=s3cret#x") == "https://hooks.shop.test:8443/a/b"


# --- save time: the console form ------------------------------------------------------------


def test_console_form_refuses_a_private_webhook_with_a_field_error(org, dns):
    # given a name that resolves to the LAN
    dns["nas.shop.test"] = ["10.0.0.5"]
    data = {"name": "Acme", "markup": "1.2", "alert_webhook_url": "http://nas.shop.test/hook?token=s3cret"}
    # when
    form = OrganizationSettingsForm(data, instance=org)
    # then the reason is on the field, without the URL or the address
    assert not form.is_valid()
    [error] = form.errors["alert_webhook_url"]
    assert "a private address" in error and "10.0.0.5" not in error and "s3cret" not in error


def test_console_settings_page_shows_the_error_and_keeps_the_old_url(org, dns, client):
    # given an owner signed in, and a saved public webhook
    dns["hooks.shop.test"] = [PUBLIC]
    org.alert_webhook_url = "https://hooks.shop.test/hook"
    org.save()
    client.force_login(factories.make_member(org, Role.OWNER).user)
    # when the owner points it at the loopback
    answer = client.post(reverse("console:org_settings"),
                         {"name": "Acme", "markup": "1.2", "alert_webhook_url": "http://127.0.0.1:6379/"})
    # then the page answers 422 with the reason, and nothing changed
    assert answer.status_code == 422
    assert b"the host resolves to a loopback address" in answer.content
    org.refresh_from_db()
    assert org.alert_webhook_url == "https://hooks.shop.test/hook"


def test_console_form_accepts_a_public_webhook(org, dns):
    dns["hooks.shop.test"] = [PUBLIC]
    form = OrganizationSettingsForm(
        {"name": "Acme", "markup": "1.2", "alert_webhook_url": "https://hooks.shop.test/hook"}, instance=org)
    assert form.is_valid(), form.errors
    form.save()
    org.refresh_from_db()
    assert org.alert_webhook_url == "https://hooks.shop.test/hook"


def test_console_form_accepts_a_lan_webhook_when_private_targets_are_allowed(org, settings):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    form = OrganizationSettingsForm(
        {"name": "Acme", "markup": "1.2", "alert_webhook_url": "http://127.0.0.1:8080/hook"}, instance=org)
    assert form.is_valid(), form.errors


# --- send time: billing.alerts --------------------------------------------------------------


def test_send_time_refusal_sends_nothing_and_logs_without_the_query(org, hook_server, caplog, mailoutbox):
    # given a URL on 127.0.0.1 saved without a form (before this check existed)
    port, received = hook_server
    caplog.set_level(logging.WARNING, logger="billing.alerts")
    # when the balance crosses the threshold
    _alert(org, f"http://127.0.0.1:{port}/hook?token=s3cret")
    # then the email still goes, no request reaches the server, and the log names the reason only
    assert len(mailoutbox) == 1
    assert received == []
    assert "refused: the host resolves to a loopback address" in caplog.text
    assert f"http://127.0.0.1:{port}/hook" in caplog.text and "s3cret" not in caplog.text


def test_a_name_that_turns_private_after_saving_is_refused_at_send_time(org, dns, hook_server):
    # given a name that was public when the merchant saved it (DNS rebinding)
    port, received = hook_server
    dns["hooks.shop.test"] = [PUBLIC]
    form = OrganizationSettingsForm(
        {"name": "Acme", "markup": "1", "alert_webhook_url": f"http://hooks.shop.test:{port}/hook"}, instance=org)
    assert form.is_valid(), form.errors
    form.save()
    # when it resolves to the loopback at send time
    dns["hooks.shop.test"] = ["127.0.0.1"]
    _alert(org, org.alert_webhook_url)
    # then nothing reached the local server
    assert received == []


def test_allow_private_lets_the_alert_reach_127_0_0_1(org, hook_server, settings):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    port, received = hook_server
    _alert(org, f"http://127.0.0.1:{port}/hook")
    assert [r["path"] for r in received] == ["/hook"]


def test_the_post_goes_to_the_checked_address_with_the_original_host_header(org, dns, hook_server, settings):
    # given a name (that no real resolver knows) resolving to the LAN, allowed
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    port, received = hook_server
    dns["hooks.lan.test"] = ["127.0.0.1"]
    # when
    _alert(org, f"http://hooks.lan.test:{port}/hook")
    # then the request reached the checked address, still addressed to the name
    assert received == [{"path": "/hook", "host": f"hooks.lan.test:{port}"}]


def test_redirects_are_not_followed(org, hook_server, settings):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    port, received = hook_server
    _alert(org, f"http://127.0.0.1:{port}/redirect")
    assert [r["path"] for r in received] == ["/redirect"]
