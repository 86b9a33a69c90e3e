"""The kombu and celery releases the worker's transport fixes were written for, checked before start.

sqs_transport/ and dead_letter_consumer.py override private methods of kombu's SQS
transport and Celery's consumer and read their private members; those move between releases
(``is_backoff_task`` and ``_has_redrive_policy`` exist only in kombu 5.7.0, ``_envelope_payload``
only from 5.6). On another release a worker would start without a word and fail later, on its first
rejected task. So the worker refuses to start, in one line naming the versions
(``python worker_settings.py``, which the lifecycle script runs first: exit 2; and at import of the
transport). To move to a new release: pin it in requirements.txt, run
tests/container/test_kombu_contract.py (one test per hook, named after it), fix what fails, then
add the version here.
"""

from __future__ import annotations

SUPPORTED = {"kombu": ("5.7.0",), "celery": ("5.7.0",)}


class UnsupportedRelease(RuntimeError):
    """kombu or celery is a release the transport was not written for."""


def installed() -> dict[str, str]:
    """The versions of the modules this process imports (not of whatever metadata lies on the path)."""
    import celery
    import kombu

    return {"kombu": kombu.__version__, "celery": celery.__version__}


def problem() -> str | None:
    """One line naming the installed and the supported versions, or None when they match."""
    versions = installed()
    wrong = [name for name, version in versions.items() if version not in SUPPORTED[name]]
    if not wrong:
        return None
    have = ", ".join(f"{name} {versions[name]}" for name in versions)
    want = ", ".join(f"{name} {' or '.join(SUPPORTED[name])}" for name in SUPPORTED)
    return (f"unsupported {' and '.join(wrong)}: installed {have}; the worker's SQS transport (sqs_transport/) "
            f"is written for {want} (pin them as in batch_celery_container/requirements.txt)")


def check() -> None:
    message = problem()
    if message:
        raise UnsupportedRelease(message)
