"""Virtual Endpoints (credit pools) and their access keys."""

from __future__ import annotations

from django.db.models import Count, ProtectedError, Q
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from billing.checkout_links import checkout_url
from billing.money import from_micros
from console.access import console_view, org_get
from console.forms import AccessKeyForm, GrantForm, VirtualEndpointForm
from console.views.common import apply_service, done, render_form, render_page
from routing.models import AccessKey, Role, VirtualEndpoint
from routing import services

LIST = "console/endpoints.html"
DETAIL = "console/endpoint.html"
CONFIRM_DELETE = "console/confirm_delete.html"


@console_view(read=Role.VIEWER)
def endpoint_list(request):
    endpoints = (
        VirtualEndpoint.objects.filter(organization=request.org)
        .annotate(n_keys=Count("keys", distinct=True), n_models=Count("allowed_models", distinct=True))
    )
    query = request.GET.get("q", "").strip()
    if query:
        endpoints = endpoints.filter(Q(name__icontains=query) | Q(public_id__icontains=query))
    return render_page(request, LIST, {"endpoints": endpoints, "q": query}, partial="_rows")


@console_view(read=Role.DEVELOPER, write=Role.DEVELOPER)
def endpoint_new(request):
    form = VirtualEndpointForm(request.POST or None, organization=request.org)
    ve = None
    if request.method == "POST" and form.is_valid():
        ve = apply_service(form, services.endpoint_create, organization=request.org, **form.cleaned_data)
    if ve is not None:
        return done(request, reverse("console:endpoint_detail", args=[ve.pk]), f"“{ve.name}” created. Grant it credits and create a key.")
    return render_form(request, form, title="New Virtual Endpoint", action=reverse("console:endpoint_new"),
                       submit="Create", back=reverse("console:endpoints"),
                       intro="An isolated credit pool with its own keys. A leaked key can drain only this pool.")


@console_view(read=Role.DEVELOPER, write=Role.DEVELOPER)
def endpoint_edit(request, pk: int):
    ve = org_get(VirtualEndpoint.objects, request=request, pk=pk)
    form = VirtualEndpointForm(request.POST or None, instance=ve, organization=request.org)
    if request.method == "POST" and form.is_valid():
        if apply_service(form, services.endpoint_update, endpoint=ve, **form.cleaned_data):
            return done(request, reverse("console:endpoint_detail", args=[pk]), "Saved.")
    return render_form(request, form, title=f"Edit {ve.name}", action=reverse("console:endpoint_edit", args=[pk]),
                       back=reverse("console:endpoint_detail", args=[pk]))


@console_view(read=Role.DEVELOPER, write=Role.DEVELOPER)
@require_POST
def endpoint_delete(request, pk: int):
    """POST opens the confirmation step; POST with confirm=yes deletes, unless the VE has
    ledger history: the ledger is append-only, so the service refuses (ProtectedError, the
    API's 409) and the page offers to suspend it instead."""
    ve = org_get(VirtualEndpoint.objects, request=request, pk=pk)
    page = {"title": f"Delete Virtual Endpoint “{ve.name}”?", "action": reverse("console:endpoint_delete", args=[pk]),
            "back": reverse("console:endpoint_detail", args=[pk])}
    refused = dict(refused=f"“{ve.name}” has ledger history (grants, top-ups or charges), which is kept for good. "
                           "Suspend it instead: its keys stop working and its history stays.",
                   instead_url=reverse("console:endpoint_edit", args=[pk]), instead_label="Suspend it (edit status)")
    if request.POST.get("confirm") != "yes":
        if ve.ledger_entries.exists() or ve.payments.exists():  # say so now, not after "Delete"
            page.update(refused)
            return render_page(request, CONFIRM_DELETE, page, partial="_modal", status=422)
        keys = ve.keys.count()
        page["consequences"] = [
            f"Its {keys} access key{'' if keys == 1 else 's'} and its request log are deleted; calls with "
            f"{'it' if keys == 1 else 'them'} fail at once." if keys else "Its request log is deleted."]
        return render_page(request, CONFIRM_DELETE, page, partial="_modal")
    try:
        services.endpoint_delete(endpoint=ve)
    except ProtectedError:
        page.update(refused)
        return render_page(request, CONFIRM_DELETE, page, partial="_modal", status=422)
    return done(request, reverse("console:endpoints"), f"Virtual Endpoint “{ve.name}” deleted.")


@console_view(read=Role.VIEWER)
def endpoint_detail(request, pk: int):
    ve = org_get(VirtualEndpoint.objects.prefetch_related("allowed_models"), request=request, pk=pk)
    return render_page(request, DETAIL, _detail_context(request, ve))


def _detail_context(request, ve: VirtualEndpoint, **extra) -> dict:
    keys = ve.keys.prefetch_related("allowed_models").annotate(n_requests=Count("request_logs"))
    return {"ve": ve, "keys": keys, "checkout_link": checkout_url(ve.public_id), "now": timezone.now(), **extra}


@console_view(read=Role.DEVELOPER, write=Role.DEVELOPER)
def endpoint_grant(request, pk: int):
    ve = org_get(VirtualEndpoint.objects, request=request, pk=pk)
    form = GrantForm(request.POST or None)
    posted = None
    if request.method == "POST" and form.is_valid():
        posted = apply_service(
            form, services.grant_credits,
            virtual_endpoint=ve, credits=from_micros(form.cleaned_data["credits"]),
            idempotency_key=f"console-grant:{ve.pk}:{form.cleaned_data['token']}",
            note=form.cleaned_data["note"] or "Granted in the console", created_by=request.user,
        )
    if posted is not None:
        message = "Credits granted." if posted.created else "That grant was already posted."
        return done(request, reverse("console:endpoint_detail", args=[pk]), message)
    return render_form(request, form, title=f"Grant credits to {ve.name}", action=reverse("console:endpoint_grant", args=[pk]),
                       submit="Grant credits", back=reverse("console:endpoint_detail", args=[pk]),
                       intro="Adds to the budget through the ledger (a grant entry you can trace later).")


@console_view(read=Role.DEVELOPER, write=Role.DEVELOPER)
def key_new(request, pk: int):
    ve = org_get(VirtualEndpoint.objects, request=request, pk=pk)
    form = AccessKeyForm(request.POST or None, virtual_endpoint=ve)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        key, secret = services.key_create(virtual_endpoint=ve, name=data["name"], expires_at=data["expires_at"],
                                 credit_limit=data["credit_limit"], allowed_models=list(data["allowed_models"]))
        # The only response that ever contains the secret: it is not stored anywhere.
        context = {"key": key, "secret": secret, "ve": ve, "base_url": _gateway_base(request, ve)}
        template = "console/key_created.html#_modal" if request.htmx else "console/key_created.html"
        response = render(request, template, context)
        response["Cache-Control"] = "no-store"
        return response
    return render_form(request, form, title="New access key", action=reverse("console:key_new", args=[pk]),
                       submit="Create key", back=reverse("console:endpoint_detail", args=[pk]),
                       intro=f"A secret for “{ve.name}”. You will see it once.")


def _gateway_base(request, ve: VirtualEndpoint) -> str:
    return request.build_absolute_uri(f"/{ve.public_id}/v1")


def _org_key(request, key_pk: int) -> AccessKey:
    return org_get(AccessKey.objects.select_related("virtual_endpoint"), "virtual_endpoint__organization",
                   request=request, pk=key_pk)


@console_view(read=Role.DEVELOPER, write=Role.DEVELOPER)
def key_edit(request, key_pk: int):
    key = _org_key(request, key_pk)
    ve = key.virtual_endpoint
    form = AccessKeyForm(request.POST or None, instance=key, virtual_endpoint=ve)
    if request.method == "POST" and form.is_valid():
        if apply_service(form, services.key_update, key=key, **form.cleaned_data):
            return done(request, reverse("console:endpoint_detail", args=[ve.pk]), f"Key “{key.name}” saved.")
    return render_form(request, form, title=f"Edit key {key.name}", action=reverse("console:key_edit", args=[key_pk]),
                       back=reverse("console:endpoint_detail", args=[ve.pk]))


@console_view(read=Role.DEVELOPER, write=Role.DEVELOPER)
@require_POST
def key_toggle(request, key_pk: int):
    key = _org_key(request, key_pk)
    services.key_update(key=key, enabled=not key.enabled)
    state = "enabled" if key.enabled else "disabled"
    return done(request, reverse("console:endpoint_detail", args=[key.virtual_endpoint_id]), f"Key “{key.name}” {state}.")


@console_view(read=Role.DEVELOPER, write=Role.DEVELOPER)
@require_POST
def key_delete(request, key_pk: int):
    key = _org_key(request, key_pk)
    services.key_delete(key=key)  # ledger entries and request logs keep their rows (SET_NULL)
    return done(request, reverse("console:endpoint_detail", args=[key.virtual_endpoint_id]), f"Key “{key.name}” deleted.")
