"""Tasks of the example CPU pool: route ``cpu.*`` to the pool and its workers run them here.

The worker imports this module because the image sets ``CELERY_TASK_MODULES=cpu_tasks``; the
tasks register on the worker's one Celery app, so they get its settings (late ack, time limits,
JSON). The work needs nothing beyond the standard library, so the image adds no dependencies of
its own to the worker's.
"""

from __future__ import annotations

import math
import time

from celery_app import app

# A bytearray of this many entries is at most 100 MB, well within the smallest Fargate task's memory.
MAX_LIMIT = 100_000_000


@app.task(name="cpu.count_primes")
def count_primes(limit: int = 1_000_000) -> dict:
    """Count the primes below ``limit`` (a sieve of Eratosthenes) and say how long it took."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 2 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit={limit!r} is not allowed; allowed: a whole number 2..{MAX_LIMIT}")
    started = time.perf_counter()
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\x00\x00"
    for n in range(2, math.isqrt(limit - 1) + 1):
        if sieve[n]:
            sieve[n * n::n] = bytes(len(range(n * n, limit, n)))
    return {"limit": limit, "primes": sum(sieve), "seconds": round(time.perf_counter() - started, 3)}
