"""A Django project whose Celery broker is Redis, with its heavy tasks on batch-celery.

Only what the example needs; a real project has more. Everything the two Celery apps need comes
from the environment.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
INSTALLED_APPS = ["videos"]
ROOT_URLCONF = "mysite.urls"
DATABASES = {}
USE_TZ = True

# The project's own Celery (mysite/celery.py): light tasks, on Redis, as before.
CELERY_BROKER_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
CELERY_TASK_SERIALIZER = "json"

# batch-celery (mysite/batch.py): the file `npx cdk deploy --outputs-file outputs.json` wrote.
BATCH_CELERY_OUTPUTS = os.environ.get("BATCH_CELERY_OUTPUTS", str(BASE_DIR / "outputs.json"))
BATCH_CELERY_STACK = os.environ.get("BATCH_CELERY_STACK")  # None: the one stack in the file
