from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from tokenbill.api import api

urlpatterns = [
    path("", RedirectView.as_view(url="/console/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("console/", include("console.urls")),
    path("", include("billing.urls")),
]
