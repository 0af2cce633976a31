"""Rendering helpers shared by the console's views: one template per page, partials
inside it for htmx, and the full page whenever the request is not from htmx."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import redirect, render


FORM_TEMPLATE = "console/form_page.html"


def render_page(request, template: str, context: dict, partial: str | None = None, status: int = 200):
    """The partial for htmx requests (when one is named), the full page otherwise."""
    name = f"{template}#{partial}" if partial and request.htmx else template
    return render(request, name, context, status=status)


def render_form(request, form, *, title: str, action: str, submit: str = "Save", back: str = "", intro: str = "",
                danger: str = ""):
    """A form as a modal (htmx) or a page of its own (reload, no JS). Invalid -> 422 + errors inline."""
    status = 422 if form.is_bound and form.errors else 200
    context = {"form": form, "title": title, "action": action, "submit": submit, "back": back, "intro": intro}
    return render_page(request, FORM_TEMPLATE, context, partial="_modal", status=status)


def done(request, url: str, message: str = ""):
    """After a successful write: htmx follows HX-Redirect, a plain form post a 303."""
    if message:
        messages.success(request, message)
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return redirect(url)


def apply_service(form, service, **kwargs):
    """Call a write service; its ValidationError becomes inline form errors (None returned)."""
    try:
        return service(**kwargs)
    except ValidationError as exc:
        if hasattr(exc, "error_dict"):
            for field, errors in exc.error_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            form.add_error(None, exc)
        return None


def fields_of(form, *exclude: str) -> dict:
    return {k: v for k, v in form.cleaned_data.items() if k not in exclude}


def paginate(request, queryset, per_page: int = 50):
    """Page of a queryset with LIMIT/OFFSET; count() is one query."""
    paginator = Paginator(queryset, per_page)
    return paginator.get_page(request.GET.get("page"))


def csrf_failure(request, reason: str = ""):
    """settings.CSRF_FAILURE_VIEW: the console's own page (not Django's), saying what to do."""
    return render(request, "console/error.html", {
        "title": "This form has expired",
        "text": "The page was open too long, or you signed in or out in another tab. Go back, reload the page and "
                "submit the form again.", "status": 403}, status=403)
