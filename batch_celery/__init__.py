"""batch-celery: Celery workers on AWS Batch that start when tasks arrive and stop when done.

``CeleryBatchWorkers`` (construct.py) is the construct to embed in a CDK app; ``BatchCeleryStack``
(stack.py) wires it from cdk.json for ``cdk deploy``.
"""

from pathlib import Path

# The bundled worker image's build context: the lifecycle script, the Celery app, their helpers.
CONTAINER_DIR = Path(__file__).resolve().parent.parent / "batch_celery_container"
