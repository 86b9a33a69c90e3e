"""Tasks of the example GPU pool: route ``gpu.*`` to the pool and its workers run them here.

The worker imports this module because the image sets ``CELERY_TASK_MODULES=gpu_tasks``; the
tasks register on the worker's one Celery app, so they get its settings (late ack, time limits,
JSON). On a GPU the work runs on CUDA through torch; without one (or without torch, as in this
project's tests) it runs on the CPU with numpy, so the same task is tried anywhere.
"""

from __future__ import annotations

import time

import numpy as np

from celery_app import app

try:
    import torch
except ImportError:  # an image without torch: the CPU path below does the same work
    torch = None

# The three n x n float32 matrices take 12 n^2 bytes: 3 GiB at most, within any AWS GPU's memory.
MAX_SIZE = 16384


@app.task(name="gpu.matmul")
def matmul(n: int = 4096, seed: int = 0) -> dict:
    """Multiply two random n x n matrices (uniform in [0, 1), from ``seed``) and return the sum of
    the product, the device that computed it and how long the multiplication took."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SIZE:
        raise ValueError(f"n={n!r} is not allowed; allowed: a whole number 1..{MAX_SIZE}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} is not allowed; allowed: a whole number >= 0")
    if torch is not None and torch.cuda.is_available():
        generator = torch.Generator(device="cuda").manual_seed(seed)
        a = torch.rand((n, n), generator=generator, device="cuda")
        b = torch.rand((n, n), generator=generator, device="cuda")
        started = time.perf_counter()
        checksum = float((a @ b).sum())  # .sum() to a float waits for the GPU to finish
        device = f"cuda ({torch.cuda.get_device_name()})"
    else:
        rng = np.random.default_rng(seed)
        a = rng.random((n, n), dtype=np.float32)
        b = rng.random((n, n), dtype=np.float32)
        started = time.perf_counter()
        checksum = float((a @ b).sum(dtype=np.float64))
        device = "cpu (numpy)"
    return {"n": n, "device": device, "checksum": round(checksum, 3), "seconds": round(time.perf_counter() - started, 3)}
