"""Physical models (cost per unit), logical models (sale price) and the routes between them.

Deleting either asks for confirmation first (console/confirm_delete.html). Neither has a
guard in the services or the API: a deleted model takes its routes with it, and request
logs keep their rows (SET_NULL), so the confirmation step says what goes."""

from __future__ import annotations

from decimal import Decimal

from django.db.models import Count, Prefetch
from django.urls import reverse
from django.views.decorators.http import require_POST

from console.access import console_view, org_get
from console.forms import LogicalModelForm, PhysicalModelForm, RouteForm, RouteInlineForm
from console.selectors import breaker_open, current_rates, route_shares
from console.views.common import apply_service, done, fields_of, render_form, render_page
from routing.models import LogicalModel, PhysicalModel, Provider, Role, Route
from routing import services

TEMPLATE = "console/models.html"
DETAIL = "console/logical_model.html"
CONFIRM_DELETE = "console/confirm_delete.html"


@console_view(read=Role.VIEWER)
def model_list(request):
    physical = PhysicalModel.objects.filter(provider__organization=request.org).select_related("provider")
    logical = LogicalModel.objects.filter(organization=request.org).annotate(n_routes=Count("routes"))
    has_providers = Provider.objects.filter(organization=request.org).exists()
    return render_page(request, TEMPLATE, {"physical": physical, "logical": logical, "has_providers": has_providers})


@console_view(read=Role.ADMIN, write=Role.ADMIN)
def physical_new(request):
    form = PhysicalModelForm(request.POST or None, organization=request.org,
                             initial={"provider": request.GET.get("provider")})
    if request.method == "POST" and form.is_valid():
        pm = apply_service(form, services.physical_model_create, **form.cleaned_data)
        if pm is not None:
            return done(request, reverse("console:models"), f"Physical model “{pm.upstream_model}” added.")
    return render_form(request, form, title="Add a physical model", action=reverse("console:physical_new"),
                       submit="Add model", back=reverse("console:models"),
                       intro="One model on one provider, with its cost per unit in the provider's currency.")


@console_view(read=Role.ADMIN, write=Role.ADMIN)
def physical_edit(request, pk: int):
    pm = org_get(PhysicalModel.objects.select_related("provider"), "provider__organization", request=request, pk=pk)
    form = PhysicalModelForm(request.POST or None, instance=pm, organization=request.org)
    if request.method == "POST" and form.is_valid():
        if apply_service(form, services.physical_model_update, physical_model=pm, **fields_of(form, "provider")):
            return done(request, reverse("console:models"), f"Physical model “{pm.upstream_model}” saved.")
    form.delete_url = reverse("console:physical_delete", args=[pk])  # form_page.html offers Delete under the form
    return render_form(request, form, title=f"Edit {pm.upstream_model}", action=reverse("console:physical_edit", args=[pk]),
                       back=reverse("console:models"))


@console_view(read=Role.ADMIN, write=Role.ADMIN)
@require_POST
def physical_delete(request, pk: int):
    """POST opens the confirmation step; POST with confirm=yes deletes."""
    pm = org_get(PhysicalModel.objects.select_related("provider"), "provider__organization", request=request, pk=pk)
    if request.POST.get("confirm") != "yes":
        routed = sorted(pm.routes.values_list("logical_model__name", flat=True))
        consequences = ([f"It is removed from the routes of: {', '.join(routed)}."] if routed
                        else ["No logical model routes to it."])
        context = {"title": f"Delete physical model “{pm.upstream_model}” ({pm.provider.name})?",
                   "action": reverse("console:physical_delete", args=[pk]), "back": reverse("console:models"),
                   "consequences": consequences + ["Request logs keep their rows."]}
        return render_page(request, CONFIRM_DELETE, context, partial="_modal")
    services.physical_model_delete(physical_model=pm)
    return done(request, reverse("console:models"), f"Physical model “{pm.upstream_model}” deleted.")


@console_view(read=Role.ADMIN, write=Role.ADMIN)
def logical_new(request):
    form = LogicalModelForm(request.POST or None, organization=request.org)
    lm = None
    if request.method == "POST" and form.is_valid():
        lm = apply_service(form, services.logical_model_create, organization=request.org, **form.cleaned_data)
    if request.method == "POST" and form.is_valid() and lm is not None:
        return done(request, reverse("console:logical_detail", args=[lm.pk]), f"Logical model “{lm.name}” created. Add its routes.")
    return render_form(request, form, title="New logical model", action=reverse("console:logical_new"),
                       submit="Create", back=reverse("console:models"),
                       intro="The name clients call. Routes decide which physical models serve it.")


@console_view(read=Role.ADMIN, write=Role.ADMIN)
def logical_edit(request, pk: int):
    lm = org_get(LogicalModel.objects, request=request, pk=pk)
    form = LogicalModelForm(request.POST or None, instance=lm, organization=request.org)
    if request.method == "POST" and form.is_valid():
        if apply_service(form, services.logical_model_update, logical_model=lm, **form.cleaned_data):
            return done(request, reverse("console:logical_detail", args=[pk]), "Saved.")
    return render_form(request, form, title=f"Edit {lm.name}", action=reverse("console:logical_edit", args=[pk]),
                       back=reverse("console:logical_detail", args=[pk]))


@console_view(read=Role.ADMIN, write=Role.ADMIN)
@require_POST
def logical_delete(request, pk: int):
    """POST opens the confirmation step; POST with confirm=yes deletes."""
    lm = org_get(LogicalModel.objects, request=request, pk=pk)
    if request.POST.get("confirm") != "yes":
        n_endpoints = lm.virtual_endpoints.count()
        context = {"title": f"Delete logical model “{lm.name}”?", "action": reverse("console:logical_delete", args=[pk]),
                   "back": reverse("console:logical_detail", args=[pk]), "consequences": [
                       f"Calls to “{lm.name}” fail at once; its {lm.routes.count()} route(s) are deleted.",
                       f"{n_endpoints} Virtual Endpoint(s) allowing it lose it (and so do their keys).",
                       "Request logs keep their rows. To stop traffic but keep it, disable it instead."]}
        return render_page(request, CONFIRM_DELETE, context, partial="_modal")
    services.logical_model_delete(logical_model=lm)
    return done(request, reverse("console:models"), f"Logical model “{lm.name}” deleted.")


@console_view(read=Role.VIEWER)
def logical_detail(request, pk: int):
    lm = org_get(LogicalModel.objects.prefetch_related(
        Prefetch("routes", queryset=Route.objects.select_related("physical_model__provider"))), request=request, pk=pk)
    return render_page(request, DETAIL, _detail_context(request, lm), partial="_routes")


def _detail_context(request, lm: LogicalModel, form=None) -> dict:
    routes = list(lm.routes.all())
    shares = route_shares(routes)
    rates = current_rates(request.org)
    rows = [
        {"route": r, "share": shares[r.id], "breaker_open": breaker_open(r.physical_model_id),
         "margin": _margin(lm, r.physical_model, rates, request.org.markup)}
        for r in routes
    ]
    return {"lm": lm, "rows": rows, "form": form or RouteForm(logical_model=lm)}


def _margin(lm: LogicalModel, pm: PhysicalModel, rates: dict, markup: Decimal) -> dict | None:
    """Output-token economics per 1M tokens in credits: cost, price, margin %. None without a rate."""
    rate = rates.get(pm.provider.currency)
    if rate is None:
        return None
    cost = pm.output_cost_per_mtok * rate
    price = lm.output_price_per_mtok if lm.output_price_per_mtok is not None else cost * markup
    pct = None if price == 0 else int(round((price - cost) * 100 / price))
    return {"cost": cost.quantize(Decimal("0.01")), "price": Decimal(price).quantize(Decimal("0.01")), "pct": pct}


@console_view(read=Role.ADMIN, write=Role.ADMIN)
@require_POST
def route_add(request, pk: int):
    lm = org_get(LogicalModel.objects, request=request, pk=pk)
    form = RouteForm(request.POST, logical_model=lm)
    if form.is_valid() and _replace_routes(form, lm, _specs(lm) + [services.RouteSpec(**form.cleaned_data)]):
        if not request.htmx:
            return done(request, reverse("console:logical_detail", args=[lm.pk]), "Route added.")
        form = None
    lm = LogicalModel.objects.prefetch_related(
        Prefetch("routes", queryset=Route.objects.select_related("physical_model__provider"))).get(pk=lm.pk)
    status = 422 if form is not None else 200
    return render_page(request, DETAIL, _detail_context(request, lm, form), partial="_routes", status=status)


@console_view(read=Role.ADMIN, write=Role.ADMIN)
@require_POST
def route_edit(request, pk: int):
    route = org_get(Route.objects.select_related("logical_model"), "logical_model__organization", request=request, pk=pk)
    form = RouteInlineForm(request.POST, instance=route)
    lm = route.logical_model
    saved = form.is_valid() and _replace_routes(form, lm, [
        services.RouteSpec(physical_model=r.physical_model, **form.cleaned_data) if r.pk == route.pk else spec
        for r, spec in zip(_ordered(lm), _specs(lm))
    ])
    if saved:
        return _routes_fragment(request, lm)
    # The error shows in the row it was typed in, with what was typed (not the saved value).
    error = " ".join((f"{form.fields[f].label}: " if f in form.fields else "") + str(e)
                     for f, errors in form.errors.items() for e in errors)
    return _routes_fragment(request, lm, status=422, error=error, route=route.pk,
                            typed={"priority": request.POST.get("priority", ""), "weight": request.POST.get("weight", "")},
                            fields=list(form.errors))


@console_view(read=Role.ADMIN, write=Role.ADMIN)
@require_POST
def route_delete(request, pk: int):
    route = org_get(Route.objects.select_related("logical_model"), "logical_model__organization", request=request, pk=pk)
    lm = route.logical_model
    services.logical_model_update(logical_model=lm, routes=[
        spec for r, spec in zip(_ordered(lm), _specs(lm)) if r.pk != route.pk])
    return _routes_fragment(request, lm)


def _ordered(lm: LogicalModel) -> list[Route]:
    return list(lm.routes.select_related("physical_model__provider").order_by("priority", "-weight", "id"))


def _specs(lm: LogicalModel) -> list:
    """The current routes as RouteSpecs: the service replaces a model's routes as a whole."""
    return [services.RouteSpec(physical_model=r.physical_model, priority=r.priority, weight=r.weight, enabled=r.enabled)
            for r in _ordered(lm)]


def _replace_routes(form, lm: LogicalModel, specs: list) -> bool:
    return apply_service(form, services.logical_model_update, logical_model=lm, routes=specs) is not None


def _routes_fragment(request, lm: LogicalModel, status: int = 200, error: str = "", route: int | None = None,
                     typed: dict | None = None, fields: list | None = None):
    if not request.htmx:
        return done(request, reverse("console:logical_detail", args=[lm.pk]))
    lm = LogicalModel.objects.prefetch_related(
        Prefetch("routes", queryset=Route.objects.select_related("physical_model__provider"))).get(pk=lm.pk)
    context = _detail_context(request, lm)
    for row in context["rows"]:
        row["bad"] = row["route"].pk == route
    return render_page(request, DETAIL, {**context, "route_error": error, "error_route": route,
                                         "typed": typed or {}, "error_fields": fields or []}, partial="_routes",
                       status=status)
