"""The project's Celery app, as Celery's Django guide has it: the web tier's workers run it on
Redis, and batch-celery's workers run it too (CELERY_APP=mysite, as `celery -A mysite`), with
their SQS transport, lifecycle, results and metrics layered onto it."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

app = Celery("mysite")
app.config_from_object("django.conf:settings", namespace="CELERY")
# videos/tasks.py; Celery's Django fixup calls django.setup() when a worker starts.
app.autodiscover_tasks()
