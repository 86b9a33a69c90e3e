"""A Django project whose Celery broker is Redis, with its heavy tasks on batch-celery.

Only what the example needs; a real project has more. Everything the two Celery apps and the
database need comes from the environment, so the web tier and the batch-celery worker image run
the same settings.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
INSTALLED_APPS = ["videos"]
ROOT_URLCONF = "mysite.urls"
USE_TZ = True

# The web tier and the batch-celery workers share the database: the encode task reads and updates
# the Video row the upload created. SQLite (a file both can reach) is for this example and its
# test; a real worker job needs a database it can reach from the pool's private subnets (RDS, with
# the pool's security group allowed on its port and the credentials from Secrets Manager).
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DATABASE_PATH", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The project's own Celery app (mysite/celery.py): light tasks, on Redis, as before. On a
# batch-celery worker (CELERY_APP=mysite) the same app runs with SQS as its broker instead.
CELERY_BROKER_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
CELERY_TASK_SERIALIZER = "json"

# batch-celery (mysite/batch.py): the file `npx cdk deploy --outputs-file outputs.json` wrote.
BATCH_CELERY_OUTPUTS = os.environ.get("BATCH_CELERY_OUTPUTS", str(BASE_DIR / "outputs.json"))
BATCH_CELERY_STACK = os.environ.get("BATCH_CELERY_STACK")  # None: the one stack in the file
