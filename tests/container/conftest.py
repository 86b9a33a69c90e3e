"""Fixtures of the container tests: a boto3 SQS client on the session's moto server, queue pairs."""

from __future__ import annotations

import itertools
import os

import pytest

from batch_celery_local.queues import create_queue_pair

_names = itertools.count()


@pytest.fixture(scope="session")
def sqs(moto_server):
    return moto_server.client("sqs")


@pytest.fixture
def make_queues(sqs):
    """``make_queues(visibility_timeout=10, max_receive_count=3)``: a new queue + DLQ per call."""

    def make(**options):
        return create_queue_pair(sqs, f"container-{os.getpid()}-{next(_names)}", **options)

    return make
