"""A second Celery app that only sends: the heavy tasks go to batch-celery's queues on SQS.

Celery gives an app one broker, so the project keeps its Redis app for everything else and sends
the heavy tasks through this one, by name (their code lives in the worker image, not here).
``routing`` is batch_celery_container/routing.py (standard library only): copy it into the
project, or put that folder on the path.
"""

from functools import cache

from celery import Celery
from django.conf import settings

import routing


@cache
def batch_app() -> Celery:
    """Built on first use, from the stack's outputs: the broker (sqs://, credentials from boto3's
    chain, i.e. the app's IAM role on AWS), every pool's queue and route, the result table."""
    app = Celery("mysite-batch", set_as_current=False)
    app.conf.update(routing.producer_settings(settings.BATCH_CELERY_OUTPUTS, settings.BATCH_CELERY_STACK))
    return app
