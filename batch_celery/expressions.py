"""EventBridge Scheduler's rules for a schedule: its name, cron and rate expressions, time zone.

Checked at synth so that a schedule CloudFormation would refuse (or, worse, accept and fire at a
time nobody meant) fails with one line instead. Each ``*_problem`` function returns None when the
value is allowed, or the text of what is allowed, as routing.py's do; props.py names the key.

The rules are those of the EventBridge Scheduler User Guide ("Schedule types", cron and rate
expressions): a cron has six fields, minutes hours day-of-month month day-of-week year, with ``?``
in exactly one of the two day fields; a rate is ``N minute|hour|day`` with the unit singular for 1.
"""

from __future__ import annotations

import re
import zoneinfo

# Schedule names: EventBridge Scheduler's own rule ([0-9a-zA-Z-_.]+, 1..64).
SCHEDULE_NAME = re.compile(r"[0-9A-Za-z_.-]{1,64}")
RATE = re.compile(r"(?P<value>\d+) (?P<unit>minutes?|hours?|days?)")
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# (name, low, high, names for low.., "?" allowed)
_FIELDS = (
    ("minutes", 0, 59, (), False),
    ("hours", 0, 23, (), False),
    ("day-of-month", 1, 31, (), True),
    ("month", 1, 12, MONTHS, False),
    ("day-of-week", 1, 7, WEEKDAYS, True),
    ("year", 1970, 2199, (), False),
)
CRON_EXAMPLE = '"0 2 * * ? *" (02:00 every day) or "*/15 8-18 ? * MON-FRI *"'


def schedule_name_problem(name: object) -> str | None:
    if isinstance(name, str) and SCHEDULE_NAME.fullmatch(name):
        return None
    return "allowed: 1..64 letters, digits, '-', '_' and '.' (EventBridge Scheduler's schedule names)"


def rate_problem(rate: object) -> str | None:
    """``"5 minutes"``, ``"1 hour"``, ``"2 days"`` (the text of ``rate(...)``)."""
    text = rate.strip() if isinstance(rate, str) else None
    if text and text.startswith("rate(") and text.endswith(")"):
        text = text[5:-1].strip()
    match = RATE.fullmatch(text) if text else None
    allowed = 'allowed: "N minute(s)|hour(s)|day(s)" with N >= 1, singular for 1 (e.g. "5 minutes", "1 hour")'
    if match is None:
        return allowed
    value, unit = int(match["value"]), match["unit"]
    if value < 1:
        return allowed
    if (value == 1) != (not unit.endswith("s")):
        return f"{allowed}; write \"{value} {unit.rstrip('s') + ('' if value == 1 else 's')}\""
    return None


def rate_expression(rate: str) -> str:
    text = rate.strip()
    return text if text.startswith("rate(") else f"rate({text})"


def cron_expression(cron: str) -> str:
    text = cron.strip()
    return text if text.startswith("cron(") else f"cron({text})"


def cron_problem(cron: object) -> str | None:
    """Six fields, each within its range, ``?`` in exactly one day field."""
    if not isinstance(cron, str):
        return f"must be a cron expression of six fields, e.g. {CRON_EXAMPLE}"
    text = cron.strip()
    if text.startswith("cron(") and text.endswith(")"):
        text = text[5:-1]
    parts = text.split()
    if len(parts) != len(_FIELDS):
        return (f"has {len(parts)} field{'s' if len(parts) != 1 else ''}; EventBridge Scheduler's cron has six: "
                f"minutes hours day-of-month month day-of-week year, e.g. {CRON_EXAMPLE}")
    for part, (name, low, high, names, question) in zip(parts, _FIELDS):
        problem = _field_problem(part, name, low, high, names, question)
        if problem:
            return problem
    day_of_month, day_of_week = parts[2], parts[4]
    if (day_of_month == "?") == (day_of_week == "?"):
        return ("needs '?' in exactly one of day-of-month and day-of-week (the other says which days), "
                f"e.g. {CRON_EXAMPLE}")
    return None


def _field_problem(part: str, name: str, low: int, high: int, names: tuple[str, ...], question: bool) -> str | None:
    allowed = f"{name} {part!r} is not allowed; {name} takes {low}-{high}"
    if names:
        allowed += f" or {names[0]}-{names[-1]}"
    allowed += ", '*', ranges (a-b), lists (a,b) and steps (*/n)"
    if question:
        allowed += ", or '?'"
    if name == "day-of-month":
        allowed += ", 'L', 'LW' and 'nW'"
    if name == "day-of-week":
        allowed += ", 'L', 'nL' and 'n#k'"
    if part == "?":
        return None if question else allowed
    for item in part.split(","):
        if not _item_ok(item, name, low, high, names):
            return allowed
    return None


def _value(text: str, low: int, high: int, names: tuple[str, ...]) -> int | None:
    if text.upper() in names:
        return low + names.index(text.upper())
    if text.isdigit() and low <= int(text) <= high:
        return int(text)
    return None


def _item_ok(item: str, name: str, low: int, high: int, names: tuple[str, ...]) -> bool:
    if name == "day-of-month" and (item in ("L", "LW") or (item.endswith("W") and _value(item[:-1], 1, 31, ()))):
        return True
    if name == "day-of-week":
        if item == "L" or (item.endswith("L") and _value(item[:-1], low, high, names)):
            return True
        if "#" in item:
            day, _, nth = item.partition("#")
            return _value(day, low, high, names) is not None and nth.isdigit() and 1 <= int(nth) <= 5
    base, slash, step = item.partition("/")
    if slash and not (step.isdigit() and int(step) >= 1):
        return False
    if base == "*":
        return True
    first, dash, last = base.partition("-")
    start = _value(first, low, high, names)
    if start is None:
        return False
    if dash:
        return _value(last, low, high, names) is not None
    return True


def timezone_problem(name: object) -> str | None:
    if isinstance(name, str) and name:
        try:
            zoneinfo.ZoneInfo(name)
            return None
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return 'allowed: an IANA time zone name, e.g. "UTC", "Europe/Berlin", "America/New_York"'
