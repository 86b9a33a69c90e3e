"""Warm capacity: the hours in which a pool keeps ``min_workers`` workers up with nothing to do.

One rule, used by synth (props.py: a bad value fails there, one line) and by the scaler (which
submits the warm workers and tells each when its warm window ends). The form is

    [DAYS ]HH:MM-HH:MM[ TIME_ZONE]

``DAYS`` is one day (``mon``), a range (``mon-fri``) or a list (``sat,sun``), every day when
left out; the times are a window within one day, start before end (``24:00`` is the day's end);
the time zone ``UTC`` (when left out too) or a fixed offset from it (``+01:00``). So
``"mon-fri 08:00-18:00 +01:00"`` keeps the workers on working days, 08:00 to 18:00 in Berlin's
winter time. Without hours a pool's ``min_workers`` are kept all the time.

Why no IANA names (``Europe/Berlin``, with its summer time): Python's zoneinfo reads the
system's time zone database, which a Lambda runtime built on Amazon Linux 2023 may not have (the
.NET team found none in provided.al2023: aws/aws-lambda-dotnet#1620), and the scaler would fail
in AWS on a setting that synth accepted. Dependency-free, so the scaler's asset ships it as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FORM = '"[DAYS ]HH:MM-HH:MM[ UTC|+HH:MM|-HH:MM]", e.g. "mon-fri 08:00-18:00 +01:00"'
_OFFSET = re.compile(r"^(?P<sign>[+-])(?P<hours>\d{2}):(?P<minutes>\d{2})$")
_TIMES = re.compile(r"^(?P<start>\d{2}:\d{2})-(?P<end>\d{2}:\d{2})$")
# WARM_UNTIL of a warm worker with no window end (2100-01-01): its job's take window (limits.py)
# ends it, and the scaler starts another.
ALWAYS_EPOCH = 4_102_444_800


@dataclass(frozen=True)
class WarmHours:
    days: frozenset[int]    # 0 = Monday
    start: int              # minutes into the day
    end: int
    offset: int             # minutes east of UTC

    def window_end(self, now: float) -> float | None:
        """The end (epoch seconds) of the warm window ``now`` is in, or None outside every window."""
        zone = timezone(timedelta(minutes=self.offset))
        local = datetime.fromtimestamp(now, zone)
        minute = local.hour * 60 + local.minute
        if local.weekday() not in self.days or not self.start <= minute < self.end:
            return None
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
        end = midnight + timedelta(minutes=self.end)
        # Whole days in a row ("sat,sun 00:00-24:00") are one window: its workers stay over midnight.
        for _ in range(7):
            if not (self.start == 0 and self.end == 24 * 60 and end.weekday() in self.days):
                break
            end += timedelta(days=1)
        return end.replace(tzinfo=zone).timestamp()


def parse(text: str) -> WarmHours:
    """``WarmHours`` from its text; a bad one raises ValueError saying what is allowed."""
    if not isinstance(text, str):
        raise ValueError(f"must be a string of the form {FORM}")
    tokens = text.split()
    at = next((i for i, token in enumerate(tokens) if ":" in token), None)
    if at is None or at > 1 or len(tokens) > at + 2 or not _TIMES.match(tokens[at]):
        raise ValueError(f"must have the form {FORM}")
    match = {**_TIMES.match(tokens[at]).groupdict(), "days": tokens[0].lower() if at == 1 else None,
             "zone": tokens[at + 1] if len(tokens) > at + 1 else None}
    days = _days(match["days"]) if match["days"] else frozenset(range(7))
    start, end = _minutes(match["start"]), _minutes(match["end"])
    if start >= end:
        raise ValueError(f"the window must start before it ends within one day ({match['start']}-{match['end']}); "
                         f"{FORM}")
    return WarmHours(days, start, end, _offset(match["zone"] or "UTC"))


def _offset(text: str) -> int:
    if text.upper() in ("UTC", "Z"):
        return 0
    match = _OFFSET.match(text)
    if match is None or int(match["hours"]) > 14 or int(match["minutes"]) > 59:
        raise ValueError(f"{text!r} is not UTC or an offset from it (-12:00 to +14:00); time zone names such as "
                         "Europe/Berlin are not taken: the scaler's runtime may have no zone database")
    minutes = int(match["hours"]) * 60 + int(match["minutes"])
    minutes = minutes if match["sign"] == "+" else -minutes
    if not -12 * 60 <= minutes <= 14 * 60:
        raise ValueError(f"{text!r} is beyond the offsets in use (-12:00 to +14:00)")
    return minutes


def _days(text: str) -> frozenset[int]:
    chosen: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"{part!r} is not a day or a range of days ({', '.join(DAYS)}); {FORM}")
        a, b = DAYS.index(first), DAYS.index(last or first)
        if b < a:
            raise ValueError(f"{part!r} runs backwards: days run mon to sun; write \"fri-mon\" as \"fri-sun,mon\"")
        chosen.update(range(a, b + 1))
    return frozenset(chosen)


def _minutes(text: str) -> int:
    hours, minutes = (int(x) for x in text.split(":"))
    if hours > 24 or minutes > 59 or (hours == 24 and minutes):
        raise ValueError(f"{text!r} is not a time of day (00:00 to 24:00); {FORM}")
    return hours * 60 + minutes
