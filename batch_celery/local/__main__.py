"""``python -m batch_celery.local``: the local run of the whole loop (see demo.py)."""

import sys

from batch_celery.local.demo import main

sys.exit(main())
