"""URL configuration: the HTML pages, Django's login, the admin, the REST API, probes,
metrics, and the error handlers."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from payments import views as payment_views
from paymentsite import health
from paymentsite.metrics import metrics_view
from projections.management.commands.projection_status import projection_readings
from projections.projectors import PROJECTIONS

urlpatterns = [
    # Anonymous JSON probes for the container or load balancer (paymentsite/health.py).
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # Prometheus (paymentsite/metrics.py): only for a scraper that METRICS_* let in.
    path("metrics", metrics_view(lambda: projection_readings(PROJECTIONS)), name="metrics"),
    path("", include("projections.urls")),
    path("payments/", include("payments.urls")),
    # Only log in and out: accounts are made by an administrator (manage.py / admin).
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True),
         name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/token/", payment_views.api_token, name="token"),
    path("admin/", admin.site.urls),
    path("api/", include("payments.api.urls")),
    # DRF's login page, for the session that the browsable docs at /api/docs/ need.
    path("api/auth/", include("rest_framework.urls")),
]

# Errors answer JSON under /api/ and the site's pages elsewhere (paymentsite/errors.py).
handler400 = "paymentsite.errors.bad_request"
handler403 = "paymentsite.errors.permission_denied"
handler404 = "paymentsite.errors.page_not_found"
handler500 = "paymentsite.errors.server_error"
