"""A Lambda pool's function runs the pool's image with the entry point ``batch-celery-lambda``
(batch_celery/lambda_pool.py): the worker package must provide that console script, the handler
it names, and the runtime interface client it runs, pinned with the worker's requirements."""

from __future__ import annotations

import sys
import tomllib

from batch_celery import CONTAINER_DIR
from batch_celery.lambda_pool import LAMBDA_ENTRYPOINT, LAMBDA_HANDLER
from batch_celery_container import entrypoint


def test_the_function_entry_point_is_a_console_script_of_the_worker_package() -> None:
    scripts = tomllib.loads((CONTAINER_DIR / "pyproject.toml").read_text())["project"]["scripts"]
    assert LAMBDA_ENTRYPOINT == ["batch-celery-lambda"]
    assert scripts["batch-celery-lambda"] == "batch_celery_worker.entrypoint:lambda_"


def test_the_function_handler_is_a_module_of_the_worker_package() -> None:
    module, function = LAMBDA_HANDLER.rsplit(".", 1)
    assert LAMBDA_HANDLER == entrypoint.LAMBDA_HANDLER
    text = (CONTAINER_DIR / f"{module}.py").read_text()
    assert f"\ndef {function}(event" in text


def test_the_runtime_interface_client_is_pinned_with_the_worker_requirements() -> None:
    pins = [line.strip() for line in (CONTAINER_DIR / "requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert "awslambdaric==4.2.2" in pins


def test_help_names_the_handler_and_takes_at_most_one(capsys) -> None:
    assert entrypoint.lambda_(["--help"]) == 0
    assert LAMBDA_HANDLER in capsys.readouterr().out
    assert entrypoint.lambda_(["a.b", "c.d"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_handler_module_imports_from_the_worker_folder() -> None:
    sys.path.insert(0, str(CONTAINER_DIR))
    try:
        import lambda_handler

        assert callable(lambda_handler.handler)
    finally:
        sys.path.remove(str(CONTAINER_DIR))
