"""Machinery for tests and benchmarks: never shipped, never imported by batch_celery/ or
batch_celery_container/.

lifecycle.py runs the real worker container code here (the lifecycle script, the filler),
probe_tasks.py holds the tasks that record what happened to them, faults.py the proxies that play
an unreachable or failing AWS endpoint, processes.py finds the processes a run left behind. The
local demo's own pieces (moto server, queues, the template reader) stay in batch_celery_local.
"""
