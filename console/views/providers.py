"""Providers: list, create, edit, enable/disable, delete, test connection. Credentials are
write-only: the pages say whether one is set, never what it is."""

from __future__ import annotations

import httpx
from django.conf import settings
from django.db.models import Count
from django.urls import reverse
from django.views.decorators.http import require_POST

from console.access import console_view, org_get
from console.forms import ProviderForm
from console.views.common import apply_service, done, render_form, render_page
from routing.models import Provider, Role, Route
from routing import services
from tokenbill import netguard

TEMPLATE = "console/providers.html"
CONFIRM_DELETE = "console/confirm_delete.html"


@console_view(read=Role.VIEWER)
def provider_list(request):
    providers = Provider.objects.filter(organization=request.org).annotate(n_models=Count("physical_models"))
    return render_page(request, TEMPLATE, {"providers": providers}, partial="_rows")


@console_view(read=Role.ADMIN, write=Role.ADMIN)
def provider_new(request):
    form = ProviderForm(request.POST or None, organization=request.org)
    if request.method == "POST" and form.is_valid():
        provider = apply_service(form, services.provider_create, organization=request.org, **form.cleaned_data)
        if provider is not None:
            return done(request, reverse("console:providers"), f"Provider “{provider.name}” added.")
    return render_form(request, form, title="Add a provider", action=reverse("console:provider_new"),
                       submit="Add provider", back=reverse("console:providers"),
                       intro="An upstream account: where calls go and the key they use.")


@console_view(read=Role.ADMIN, write=Role.ADMIN)
def provider_edit(request, pk: int):
    provider = org_get(Provider.objects, request=request, pk=pk)
    form = ProviderForm(request.POST or None, instance=provider, organization=request.org)
    if request.method == "POST" and form.is_valid():
        if apply_service(form, services.provider_update, provider=provider, **form.cleaned_data):
            return done(request, reverse("console:providers"), f"Provider “{provider.name}” saved.")
    intro = "An API key is set; type a new one to replace it." if provider.has_credentials else "No API key set yet."
    form.delete_url = reverse("console:provider_delete", args=[pk])  # form_page.html offers Delete under the form
    return render_form(request, form, title=f"Edit {provider.name}", action=reverse("console:provider_edit", args=[pk]),
                       back=reverse("console:providers"), intro=intro)


@console_view(read=Role.ADMIN, write=Role.ADMIN)
@require_POST
def provider_toggle(request, pk: int):
    provider = org_get(Provider.objects, request=request, pk=pk)
    services.provider_update(provider=provider, enabled=not provider.enabled)
    state = "enabled" if provider.enabled else "disabled"
    return done(request, reverse("console:providers"), f"Provider “{provider.name}” {state}.")


@console_view(read=Role.ADMIN, write=Role.ADMIN)
@require_POST
def provider_delete(request, pk: int):
    """POST opens the confirmation step; POST with confirm=yes deletes. The service has no
    guard here (the API's has none either): the provider's models and their routes go with it."""
    provider = org_get(Provider.objects, request=request, pk=pk)
    if request.POST.get("confirm") != "yes":
        n_models = provider.physical_models.count()
        n_routes = Route.objects.filter(physical_model__provider=provider).count()
        context = {"title": f"Delete provider “{provider.name}”?", "action": reverse("console:provider_delete", args=[pk]),
                   "back": reverse("console:providers"), "consequences": [
                       f"Its {n_models} physical model(s) and the {n_routes} route(s) to them are deleted too.",
                       "Request logs keep their rows.",
                       "To stop traffic but keep the configuration, disable it instead."]}
        return render_page(request, CONFIRM_DELETE, context, partial="_modal")
    services.provider_delete(provider=provider)
    return done(request, reverse("console:providers"), f"Provider “{provider.name}” deleted.")


@console_view(read=Role.ADMIN, write=Role.ADMIN)
@require_POST
def provider_test(request, pk: int):
    provider = org_get(Provider.objects, request=request, pk=pk)
    ok, message = check_connection(provider)
    return render_page(request, TEMPLATE, {"p": provider, "ok": ok, "message": message}, partial="_test_result")


def check_connection(provider: Provider) -> tuple[bool, str]:
    """One cheap authenticated call (list models). The message never contains the key."""
    url, headers, params = _probe(provider)
    refused = _refused(provider, url)
    if refused:
        return False, refused
    timeout = httpx.Timeout(min(provider.read_timeout, 10.0), connect=min(provider.connect_timeout, 5.0))
    try:
        response = httpx.get(url, headers=headers, params=params, timeout=timeout)
    except httpx.TimeoutException:
        return False, "Timed out."
    except httpx.HTTPError as exc:
        return False, f"Could not connect ({type(exc).__name__})."
    if response.status_code == 404 and provider.kind in ("openai", "openai_compatible"):
        return _check_with_chat(provider, headers, timeout)
    if response.status_code >= 400:
        hint = {401: "the API key was refused", 403: "the API key may not list models", 404: "check the base URL"}
        return False, f"HTTP {response.status_code}" + (f": {hint[response.status_code]}." if response.status_code in hint else ".")
    try:
        count = len(response.json().get("data") or response.json().get("models") or [])
    except ValueError:
        return True, f"Connected (HTTP {response.status_code})."
    return True, f"Connected: {count} model{'s' if count != 1 else ''} available."


def _check_with_chat(provider: Provider, headers: dict, timeout) -> tuple[bool, str]:
    """Servers without /models (some self-hosted ones): one 1-token chat call to the
    provider's first chat model instead, if it has one."""
    model = provider.physical_models.filter(modality="chat").order_by("id").values_list("upstream_model", flat=True).first()
    if model is None:
        return False, "HTTP 404 on /models: check the base URL, or add a chat model and test again."
    body = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    try:
        response = httpx.post(f"{provider.base_url.rstrip('/')}/chat/completions", json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return False, f"Could not connect ({type(exc).__name__})."
    if response.status_code >= 400:
        return False, f"HTTP {response.status_code} from {model}."
    return True, f"Connected: {model} answered."


def _refused(provider: Provider, url: str) -> str | None:
    """The gateway's own guard (gateway/httpclient.py) for this probe from the web process:
    never a metadata address; a private one only where allowed. A name this process cannot
    resolve is left to the probe (it may go through a proxy)."""
    allow = provider.allow_private_network or settings.UPSTREAM_ALLOW_PRIVATE
    try:
        netguard.check_url(url, allow_private=allow)
    except netguard.UnsafeURL as exc:
        if "could not be resolved" not in exc.reason:
            return f"Refused: {exc.reason}."
    return None


def _probe(provider: Provider) -> tuple[str, dict, dict]:
    key = provider.get_credentials() if provider.has_credentials else ""
    base = provider.base_url.rstrip("/")
    if provider.kind == "anthropic":
        return f"{base}/v1/models" if not base.endswith("/v1") else f"{base}/models", \
            {"x-api-key": key, "anthropic-version": "2023-06-01"}, {}
    if provider.kind == "gemini":
        return f"{base}/models", {"x-goog-api-key": key}, {}
    if provider.kind == "azure_openai":
        return f"{base}/openai/models", {"api-key": key}, {"api-version": provider.api_version or "2024-10-21"}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return f"{base}/models", headers, {}
