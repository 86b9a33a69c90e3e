from django.urls import path

from videos import views

urlpatterns = [
    path("videos/encode", views.encode),
    path("videos/encode/<str:task_id>", views.encode_status),
]
