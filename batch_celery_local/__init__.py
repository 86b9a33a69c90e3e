"""The embedded local run: moto server, queues as the stack creates them, the demo."""

from batch_celery import CONTAINER_DIR

# Where app.py and cdk.json are (the local run synthesizes the real app) and where local worker
# processes import from.
REPO_ROOT = CONTAINER_DIR.parent
