"""``python -m batch_celery COMMAND``: the operator's commands (``status``, ``doctor``; ``make demo`` runs the local one)."""

from __future__ import annotations

import sys

COMMANDS = {
    "status": "where each pool stands: queues, worker jobs, the scaler's last decision",
    "doctor": "first-deploy check: a probe task through a real worker per pool, DLQs readable, alarm topic subscribed",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        asked = bool(argv) and argv[0] in ("-h", "--help")
        given = f"unknown command {argv[0]!r}; " if argv and not asked else ""
        listed = "; ".join(f"{name}: {text}" for name, text in COMMANDS.items())
        print(f"python -m batch_celery: {given}commands: {listed} (python -m batch_celery COMMAND --help)",
              file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    if argv[0] == "doctor":
        from batch_celery import doctor

        return doctor.main(argv[1:])
    from batch_celery import status

    return status.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
