"""URL configuration. The HTML pages and the REST API arrive with their issues."""

from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]
