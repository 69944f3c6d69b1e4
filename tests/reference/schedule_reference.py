#!/usr/bin/env python3
"""Reference implementation of SPEC §2 (schedules, time zones, offsets, parameters).

Written from the text of the contract only, with the Python standard library, and with a
deliberately plain algorithm so that it shares no structure with the Rust code it checks:

* Partitions are found by walking UTC instants one minute at a time and asking, for each
  instant, what the wall clock in the workflow's zone shows and whether the cron fields accept
  it. Stretches of the walk that cannot match (a local day, hour or minute the fields reject)
  are jumped over, but only when the UTC offset is the same at both ends of the jump, so every
  offset change is crossed one minute at a time.
* Spring-forward gaps are found by comparing the UTC offsets of consecutive minutes. When the
  offset grows, the local wall-clock minutes that never happened are listed and checked
  against the fields; for a specific hour field a hit fires at the first instant after the gap.
* Fall-back overlaps are recognised with PEP 495's ``fold``: the second time a wall-clock time
  is shown has ``fold == 1`` and is dropped for a specific hour field.

Usage as a program:

    schedule_reference.py --schedule S [--time-zone Z] [--offset D] --from T [--count N]

prints the same JSON array as ``charon preview -o json``.
"""

from __future__ import annotations

import argparse
import calendar
import json
import re
import sys
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

__all__ = ["Schedule", "Duration", "parse_schedule", "parse_duration", "preview"]

UTC_ZONE_NAMES = ("UTC", "Etc/UTC")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MINUTE = 60
HOUR = 3600
DAY = 86400
# A schedule that has not matched for this long is taken to never match again (the rarest
# satisfiable cron, 29 February on a given weekday, needs at most 28 years; plain 29 February
# needs 8).
GIVE_UP_AFTER = 30 * 366 * DAY

MONTH_NAMES = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
WEEKDAY_NAMES = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]

# The table of SPEC §2 lists the adjective and the plural noun; "singular or plural" also
# admits the singular noun.
_ALIAS_KINDS = {
    "hourly": "hourly", "hours": "hourly", "hour": "hourly",
    "daily": "daily", "days": "daily", "day": "daily",
    "weekly": "weekly", "weeks": "weekly", "week": "weekly",
    "monthly": "monthly", "months": "monthly", "month": "monthly",
    "yearly": "yearly", "years": "yearly", "year": "yearly", "annually": "yearly",
}
_KIND_CRON = {
    "hourly": "0 * * * *",
    "daily": "0 0 * * *",
    "weekly": "0 0 * * MON",
    "monthly": "0 0 1 * *",
    "yearly": "0 0 1 1 *",
}
_KIND_DEFAULT_OFFSET = {
    "hourly": "PT1H",
    "daily": "P1D",
    "weekly": "P1W",
    "monthly": "P1M",
    "yearly": "P1Y",
    "cron": "PT0S",
}


# --------------------------------------------------------------------------------------------
# Cron expressions
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    kind: str                  # hourly | daily | weekly | monthly | yearly | cron
    text: str                  # the 5-field expression the kind stands for
    minutes: frozenset
    hours: frozenset
    days_of_month: frozenset
    months: frozenset
    days_of_week: frozenset    # 0 = Sunday ... 6 = Saturday (7 already folded onto 0)
    dom_unrestricted: bool     # the day-of-month field starts with '*'
    dow_unrestricted: bool     # the day-of-week field starts with '*'
    hour_is_wildcard: bool     # hour field is '*' or contains a step '/'

    def day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom_ok = d.day in self.days_of_month
        dow_ok = (d.isoweekday() % 7) in self.days_of_week
        if self.dom_unrestricted or self.dow_unrestricted:
            return dom_ok and dow_ok
        # Vixie cron: both restricted -> either one is enough.
        return dom_ok or dow_ok

    def wall_clock_matches(self, wall: datetime) -> bool:
        return (
            wall.minute in self.minutes
            and wall.hour in self.hours
            and self.day_matches(wall.date())
        )


def _parse_value(token: str, lo: int, hi: int, names, field: str) -> int:
    if token.isascii() and token.isdigit():
        value = int(token)
    elif names is not None and token.upper() in names:
        value = names.index(token.upper()) + (1 if names is MONTH_NAMES else 0)
    else:
        raise ValueError(f"{field}: invalid value {token!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{field}: {value} out of range {lo}-{hi}")
    return value


def _parse_field(text: str, lo: int, hi: int, names, field: str) -> frozenset:
    values = set()
    for item in text.split(","):
        if item == "":
            raise ValueError(f"{field}: empty list element")
        step = 1
        stepped = False
        if "/" in item:
            item, step_text = item.split("/", 1)
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
                raise ValueError(f"{field}: invalid step {step_text!r}")
            step = int(step_text)
            stepped = True
        if item == "*":
            first, last = lo, hi
        elif "-" in item:
            a, b = item.split("-", 1)
            first = _parse_value(a, lo, hi, names, field)
            last = _parse_value(b, lo, hi, names, field)
            if first > last:
                raise ValueError(f"{field}: range {first}-{last} runs backwards")
        else:
            if stepped:
                # Vixie cron accepts a step only after '*' or a range.
                raise ValueError(f"{field}: a step needs '*' or a range before it")
            first = last = _parse_value(item, lo, hi, names, field)
        values.update(range(first, last + 1, step))
    return frozenset(values)


def parse_schedule(text: str) -> Schedule:
    """Parse `spec.schedule` (alias or 5-field cron); raises ValueError when invalid."""
    stripped = text.strip()
    alias = stripped.lower()
    if alias.startswith("@"):
        alias = alias[1:]
    if alias in _ALIAS_KINDS:
        kind = _ALIAS_KINDS[alias]
        cron = _KIND_CRON[kind]
    elif stripped.startswith("@"):
        raise ValueError(f"unknown alias {stripped!r}")
    else:
        kind = "cron"
        cron = stripped
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields, got {len(fields)}")
    minute, hour, dom, month, dow = fields
    dows = _parse_field(dow, 0, 7, WEEKDAY_NAMES, "day of week")
    if 7 in dows:
        dows = (dows - {7}) | {0}
    return Schedule(
        kind=kind,
        text=cron,
        minutes=_parse_field(minute, 0, 59, None, "minute"),
        hours=_parse_field(hour, 0, 23, None, "hour"),
        days_of_month=_parse_field(dom, 1, 31, None, "day of month"),
        months=_parse_field(month, 1, 12, MONTH_NAMES, "month"),
        days_of_week=frozenset(dows),
        dom_unrestricted=dom.startswith("*"),
        dow_unrestricted=dow.startswith("*"),
        hour_is_wildcard=(hour == "*" or "/" in hour),
    )


# --------------------------------------------------------------------------------------------
# ISO-8601 durations
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Duration:
    sign: int
    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: int = 0

    @property
    def has_date_part(self) -> bool:
        return bool(self.years or self.months or self.weeks or self.days)

    @property
    def elapsed_seconds(self) -> int:
        return self.sign * (self.hours * HOUR + self.minutes * MINUTE + self.seconds)


_DURATION_RE = re.compile(
    r"([+-])?P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
    r"(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?"
)


def parse_duration(text: str) -> Duration:
    m = _DURATION_RE.fullmatch(text.strip())
    if m is None or all(g is None for g in m.groups()[1:]):
        raise ValueError(f"invalid ISO-8601 duration {text!r}")
    sign = -1 if m.group(1) == "-" else 1
    nums = [int(g) if g is not None else 0 for g in m.groups()[1:]]
    return Duration(sign, *nums)


# --------------------------------------------------------------------------------------------
# Time-zone helpers (instants are whole Unix seconds)
# --------------------------------------------------------------------------------------------

class Zone:
    def __init__(self, name: str):
        self.name = name
        self.tz = ZoneInfo(name)
        self._cache: dict[int, int] = {}

    def aware(self, t: int) -> datetime:
        return datetime.fromtimestamp(t, self.tz)

    def offset(self, t: int) -> int:
        o = self._cache.get(t)
        if o is None:
            o = int(self.aware(t).utcoffset().total_seconds())
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[t] = o
        return o

    def wall(self, t: int) -> datetime:
        """Naive wall-clock time shown at instant t."""
        return datetime(1970, 1, 1) + timedelta(seconds=t + self.offset(t))

    def is_repeat(self, t: int) -> bool:
        """True when the wall clock at t already showed this time earlier (second occurrence)."""
        return self.aware(t).fold == 1

    def resolve(self, wall: datetime) -> int:
        """Instant for a local wall-clock time: the unique one; the first of two in an overlap;
        for a time inside a gap, the wall time moved forward by the gap's length."""
        as_utc = int((wall - datetime(1970, 1, 1)).total_seconds())
        before = self.offset(as_utc - DAY)
        after = self.offset(as_utc + DAY)
        candidates = sorted(
            {as_utc - o for o in (before, after) if self.offset(as_utc - o) == o}
        )
        if candidates:
            return candidates[0]
        # Inside a gap: keep the offset in force before it. The wall clock then reads
        # wall + (after - before), i.e. moved forward by the gap's length.
        return as_utc - before


def _to_seconds(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(seconds=1)


def _rfc3339_utc(t: int) -> str:
    return (EPOCH + timedelta(seconds=t)).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_instant(text: str) -> int:
    """RFC 3339 instant -> whole Unix seconds, rounded down."""
    s = text.strip()
    if s.endswith(("z", "Z")):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s.replace("t", "T"))
    if dt.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return _to_seconds(dt)


# --------------------------------------------------------------------------------------------
# Partitions
# --------------------------------------------------------------------------------------------

def logical_instants(sched: Schedule, zone: Zone, after: int):
    """Yield the logical instants (Unix seconds, increasing) strictly after `after`."""
    t = (after // MINUTE) * MINUTE + MINUTE
    prev_offset = zone.offset(t - MINUTE)
    last_hit = t
    while t - last_hit < GIVE_UP_AFTER:
        off = zone.offset(t)
        wall = zone.wall(t)
        fires = False
        if off > prev_offset and not sched.hour_is_wildcard:
            # Spring forward between t-1min and t: wall-clock minutes [t+prev, t+off) never
            # happened. A specific hour that names one of them fires once, now.
            skipped = datetime(1970, 1, 1) + timedelta(seconds=t + prev_offset)
            while skipped < wall:
                if sched.wall_clock_matches(skipped):
                    fires = True
                    break
                skipped += timedelta(minutes=1)
        if not fires and sched.wall_clock_matches(wall):
            fires = sched.hour_is_wildcard or not zone.is_repeat(t)
        if fires:
            last_hit = t
            yield t

        # Where could the next match be? Jump there if the offset does not change on the way.
        if not sched.day_matches(wall.date()):
            target_wall = datetime.combine(wall.date() + timedelta(days=1), datetime.min.time())
        elif wall.hour not in sched.hours:
            target_wall = wall.replace(minute=0) + timedelta(hours=1)
        else:
            later = [m for m in sched.minutes if m > wall.minute]
            if later:
                target_wall = wall.replace(minute=min(later))
            else:
                target_wall = wall.replace(minute=0) + timedelta(hours=1)
        jump = int((target_wall - wall).total_seconds())
        if jump > MINUTE and zone.offset(t + jump) == off and zone.offset(t + jump - MINUTE) == off:
            t += jump
            prev_offset = off
        else:
            prev_offset = off
            t += MINUTE


def add_months(d: date, months: int) -> date:
    index = d.year * 12 + (d.month - 1) + months
    year, month0 = divmod(index, 12)
    last = calendar.monthrange(year, month0 + 1)[1]
    return date(year, month0 + 1, min(d.day, last))


def trigger_instant(t: int, zone: Zone, offset: Duration) -> int:
    if offset.has_date_part:
        wall = zone.wall(t)
        day = add_months(wall.date(), offset.sign * (offset.years * 12 + offset.months))
        day = day + timedelta(days=offset.sign * (offset.weeks * 7 + offset.days))
        t = zone.resolve(datetime.combine(day, wall.time()))
    return t + offset.elapsed_seconds


def _utc_offset_text(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    seconds = abs(seconds)
    return f"{sign}{seconds // HOUR:02d}:{seconds % HOUR // MINUTE:02d}"


def render_parameter(kind: str, t: int, zone: Zone) -> str:
    if zone.name in UTC_ZONE_NAMES:
        wall = EPOCH.replace(tzinfo=None) + timedelta(seconds=t)
        suffix_hour, suffix_full = "", "Z"
    else:
        wall = zone.wall(t)
        suffix_hour = suffix_full = _utc_offset_text(zone.offset(t))
    if kind in ("daily", "weekly"):
        return f"{wall.year:04d}-{wall.month:02d}-{wall.day:02d}"
    if kind == "monthly":
        return f"{wall.year:04d}-{wall.month:02d}"
    if kind == "yearly":
        return f"{wall.year:04d}"
    if kind == "hourly":
        return f"{wall.year:04d}-{wall.month:02d}-{wall.day:02d}T{wall.hour:02d}{suffix_hour}"
    return (
        f"{wall.year:04d}-{wall.month:02d}-{wall.day:02d}"
        f"T{wall.hour:02d}:{wall.minute:02d}:{wall.second:02d}{suffix_full}"
    )


def preview(schedule: str, time_zone: str = "UTC", offset: str | None = None,
            from_rfc3339: str = "", count: int = 10) -> list[dict]:
    sched = parse_schedule(schedule)
    zone = Zone(time_zone)
    duration = parse_duration(offset if offset is not None else _KIND_DEFAULT_OFFSET[sched.kind])
    after = parse_instant(from_rfc3339)
    result = []
    if count <= 0:
        return result
    for t in logical_instants(sched, zone, after):
        result.append({
            "logicalTime": _rfc3339_utc(t),
            "triggerAt": _rfc3339_utc(trigger_instant(t, zone, duration)),
            "parameter": render_parameter(sched.kind, t, zone),
        })
        if len(result) >= count:
            break
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--schedule", required=True)
    p.add_argument("--time-zone", default="UTC")
    p.add_argument("--offset")
    p.add_argument("--from", dest="from_", required=True)
    p.add_argument("--count", type=int, default=10)
    a = p.parse_args(argv)
    try:
        out = preview(a.schedule, a.time_zone, a.offset, a.from_, a.count)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
