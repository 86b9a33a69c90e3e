from django.db import models


class Video(models.Model):
    """An upload and where its encode stands; the encode task (videos/tasks.py) updates it."""

    class Status(models.TextChoices):
        UPLOADED = "uploaded"
        ENCODED = "encoded"

    key = models.CharField(max_length=1024)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UPLOADED)
    output = models.CharField(max_length=1024, blank=True)
