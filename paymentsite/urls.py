"""URL configuration: the admin and the REST API (the HTML pages arrive with their issue)."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("payments.api.urls")),
    # DRF's login page, for the session that the browsable docs at /api/docs/ need.
    path("api/auth/", include("rest_framework.urls")),
]
