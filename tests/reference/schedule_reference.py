"""A second, deliberately naive implementation of SPEC §2 for cross-checking `charon preview`.

It shares no code or algorithm with the Rust schedule core: it scans UTC minutes one by one,
asks Python's zoneinfo for each minute's wall-clock time (PEP 495 `fold` marks the second
occurrence of a repeated time), and detects gaps by comparing consecutive offsets. Slow but
obviously right, which is the point.
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

UTC_NAMES = {"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu"}
ALIASES = {
    "hourly": ("hourly", "0 * * * *", "PT1H"), "hours": ("hourly", "0 * * * *", "PT1H"),
    "daily": ("daily", "0 0 * * *", "P1D"), "days": ("daily", "0 0 * * *", "P1D"),
    "weekly": ("weekly", "0 0 * * MON", "P1W"), "weeks": ("weekly", "0 0 * * MON", "P1W"),
    "monthly": ("monthly", "0 0 1 * *", "P1M"), "months": ("monthly", "0 0 1 * *", "P1M"),
    "yearly": ("yearly", "0 0 1 1 *", "P1Y"), "years": ("yearly", "0 0 1 1 *", "P1Y"),
    "annually": ("yearly", "0 0 1 1 *", "P1Y"),
}
MONTHS = {m: i for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)}
DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}


def _field(text: str, lo: int, hi: int, names: dict[str, int]) -> set[int]:
    values: set[int] = set()
    for item in text.lower().split(","):
        base, _, step = item.partition("/")
        step_n = int(step) if step else 1
        if base == "*":
            a, b = lo, hi
        elif "-" in base:
            x, y = base.split("-")
            a, b = int(names.get(x, x)), int(names.get(y, y))
        else:
            a = int(names.get(base, base))
            b = hi if step else a
        values.update(range(a, b + 1, step_n))
    return values


class Cron:
    def __init__(self, expr: str):
        minute, hour, dom, month, dow = expr.split()
        self.minutes = _field(minute, 0, 59, {})
        self.hours = _field(hour, 0, 23, {})
        self.doms = _field(dom, 1, 31, {})
        self.months = _field(month, 1, 12, MONTHS)
        self.dows = {d % 7 for d in _field(dow, 0, 7, DAYS)}
        # Vixie cron: with both day fields restricted, either may match.
        self.day_or = not dom.startswith("*") and not dow.startswith("*")
        self.hour_wildcard = "*" in hour or "/" in hour

    def day_matches(self, d: datetime) -> bool:
        if d.month not in self.months:
            return False
        dom_ok = d.day in self.doms
        dow_ok = (d.isoweekday() % 7) in self.dows
        return (dom_ok or dow_ok) if self.day_or else (dom_ok and dow_ok)

    def matches(self, n: datetime) -> bool:
        return n.minute in self.minutes and n.hour in self.hours and self.day_matches(n)


def parse_duration(text: str) -> tuple[int, int, int, timedelta]:
    """(sign, months, days, time) of a signed ISO-8601 duration."""
    m = re.fullmatch(r"([-+]?)P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", text)
    if not m:
        raise ValueError(text)
    sign = -1 if m.group(1) == "-" else 1
    y, mo, w, d, h, mi, s = (int(g) if g else 0 for g in m.groups()[1:])
    return sign, y * 12 + mo, w * 7 + d, timedelta(hours=h, minutes=mi, seconds=s)


def add_months(n: datetime, months: int) -> datetime:
    total = n.year * 12 + (n.month - 1) + months
    year, month = divmod(total, 12)
    day = min(n.day, calendar.monthrange(year, month + 1)[1])
    return n.replace(year=year, month=month + 1, day=day)


class Schedule:
    def __init__(self, schedule: str, zone: str = "UTC", offset: str | None = None):
        key = schedule.strip().lstrip("@").lower()
        if key in ALIASES:
            self.kind, expr, default_offset = ALIASES[key]
        else:
            self.kind, expr, default_offset = "cron", schedule, "PT0S"
        self.cron = Cron(expr)
        self.zone_name = zone
        self.zone = ZoneInfo(zone)
        self.utc = zone in UTC_NAMES
        self.offset = parse_duration(offset if offset is not None else default_offset)

    def local(self, t: datetime) -> datetime:
        return t.astimezone(self.zone)

    def _fires(self, t: datetime, before: datetime) -> bool:
        """Whether UTC minute `t` is a partition; `before` is the minute before it."""
        lt, lb = self.local(t), self.local(before)
        naive = lt.replace(tzinfo=None, fold=0)
        if self.cron.matches(naive) and (lt.fold == 0 or self.cron.hour_wildcard):
            return True
        if not self.cron.hour_wildcard and lt.utcoffset() > lb.utcoffset():
            # A gap ends at t: the skipped wall-clock minutes fire once, here.
            skipped = lb.replace(tzinfo=None) + timedelta(minutes=1)
            end = naive
            while skipped < end:
                if self.cron.matches(skipped):
                    return True
                skipped += timedelta(minutes=1)
        return False

    def partitions_after(self, start: datetime, count: int) -> list[datetime]:
        t = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
        out: list[datetime] = []
        while len(out) < count:
            # Skip whole local days that cannot match and have no transition.
            lt = self.local(t)
            if lt.hour == 0 and lt.minute == 0 and not self.cron.day_matches(lt):
                nxt = t + timedelta(days=1)
                if self.local(nxt).utcoffset() == lt.utcoffset() and self.local(nxt).hour == 0:
                    t = nxt
                    continue
            if self._fires(t, t - timedelta(minutes=1)):
                out.append(t)
            t += timedelta(minutes=1)
        return out

    def trigger_at(self, p: datetime) -> datetime:
        sign, months, days, time = self.offset
        if months == 0 and days == 0:
            # No calendar part: nothing to resolve, the partition instant stands.
            return p + sign * time
        local = self.local(p).replace(tzinfo=None)
        local = add_months(local, sign * months) + timedelta(days=sign * days)
        # fold=0: inside a gap the pre-transition offset applies (moves forward by the gap),
        # inside an overlap the first occurrence.
        shifted = local.replace(tzinfo=self.zone, fold=0).astimezone(timezone.utc)
        return shifted + sign * time

    def parameter(self, p: datetime) -> str:
        lt = self.local(p)
        if self.kind in ("daily", "weekly"):
            return lt.strftime("%Y-%m-%d")
        if self.kind == "monthly":
            return lt.strftime("%Y-%m")
        if self.kind == "yearly":
            return lt.strftime("%Y")
        off = lt.strftime("%z")
        off = off[:3] + ":" + off[3:]
        if self.kind == "hourly":
            return lt.strftime("%Y-%m-%dT%H") if self.utc else lt.strftime("%Y-%m-%dT%H") + off
        return lt.strftime("%Y-%m-%dT%H:%M:%SZ") if self.utc else lt.strftime("%Y-%m-%dT%H:%M:%S") + off


def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def preview(schedule: str, zone: str, offset: str | None, start: str, count: int) -> list[dict]:
    s = Schedule(schedule, zone, offset)
    begin = datetime.fromisoformat(start.replace("Z", "+00:00")).astimezone(timezone.utc)
    return [
        {"logicalTime": rfc3339(p), "triggerAt": rfc3339(s.trigger_at(p)), "parameter": s.parameter(p)}
        for p in s.partitions_after(begin, count)
    ]
