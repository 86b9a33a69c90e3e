"""``python -m batch_celery_local``: the local run of the whole loop (see demo.py)."""

import sys

from batch_celery_local.demo import main

sys.exit(main())
