"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest

from batch_celery.local import motoserver


@pytest.fixture(scope="session")
def moto_server():
    """One moto server on 127.0.0.1 for the whole session; tests use their own queue names."""
    with motoserver.running() as server:
        yield server
