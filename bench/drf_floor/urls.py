from django.urls import path

from bench.drf_floor import views

urlpatterns = [
    path("nowrite/", views.NoWrite.as_view()),
    path("durable/", views.Durable.as_view()),
    path("healthz", views.healthz),
]
