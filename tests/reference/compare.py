#!/usr/bin/env python3
"""Compare `charon preview -o json` with schedule_reference.py on seeded random cases.

    compare.py [CHARON_BINARY] [NUMBER_OF_CASES]

The binary defaults to $CHARON_BIN; NUMBER_OF_CASES counts the random cases (default 400).
They mix every alias spelling, specific-hour and wildcard/step-hour crons, names,
day-of-month/day-of-week combinations and signed offsets, in zones with whole-hour,
half-hour and 45-minute offsets and daylight-saving shifts, starting either at random instants
in 2020-2030 or a few hours before a daylight-saving transition.
A fixed grid around one forward and one backward shift per zone follows the random cases.
Prints every disagreement and ends with `N passed, M failed`; exits 1 on any disagreement.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import schedule_reference as ref  # noqa: E402

SEED = 20240331
DEFAULT_CASES = 400

ZONES = [
    "UTC",
    "Etc/UTC",
    "Europe/Stockholm",
    "America/New_York",
    "Australia/Adelaide",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Santiago",
    "Pacific/Chatham",
]
DST_ZONES = [
    "Europe/Stockholm",
    "America/New_York",
    "Australia/Adelaide",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Pacific/Chatham",
]

# (schedule, how often it fires: used to pick a sensible count and start window)
ALIASES = []
for words, freq in [
    (["hourly", "hours", "hour"], "hour"),
    (["daily", "days", "day"], "day"),
    (["weekly", "weeks", "week"], "week"),
    (["monthly", "months", "month"], "month"),
    (["yearly", "years", "year", "annually"], "year"),
]:
    for w in words:
        ALIASES.append((w, freq))

CRONS = [
    # specific hours (gap: fire once after the gap; overlap: first occurrence only)
    ("30 2 * * *", "day"),
    ("0 0 * * *", "day"),
    ("15 1,2,3 * * *", "day"),
    ("0 2 * * *", "day"),
    ("45 2 * * *", "day"),
    ("50 2,3 * * *", "day"),
    ("0,30 2 * * *", "day"),
    ("*/10 2 * * *", "day"),
    ("30 23 * * *", "day"),
    ("0 3 * * *", "day"),
    ("15 0-3 * * *", "day"),
    ("59 1 * * *", "day"),
    ("0 * * * *", "hour"),
    ("0 2,3 * * *", "day"),
    ("30 1 * * *", "day"),
    ("0 0-23 * * *", "hour"),
    ("* 2 * * *", "minute"),
    # wildcard / step hours (gap: skipped; overlap: both occurrences)
    ("*/20 * * * *", "minute"),
    ("5 */3 * * *", "hour"),
    ("0 1-23/2 * * *", "hour"),
    ("30 * * * *", "hour"),
    ("15,45 * * * *", "hour"),
    ("*/15 * * * *", "minute"),
    ("0 0-23/6 * * *", "hour"),
    ("7 */1 * * *", "hour"),
    ("0 2,3-5/2 * * *", "hour"),
    ("* * * * *", "minute"),
    # names, day-of-month/day-of-week combinations
    ("0 9 * * MON-FRI", "day"),
    ("30 6 * jan,Jul *", "day"),
    ("0 0 * * sun", "week"),
    ("0 12 1 * 7", "week"),
    ("0 12 13 * FRI", "week"),
    ("0 0 */2 * MON", "week"),
    ("30 1 * * */2", "day"),
    ("0 6 1-7 * */3", "day"),
    ("0 0 1,15 * MON", "week"),
    ("0 8 */2 * *", "day"),
    ("0 0 * 2 0,7", "week"),
    ("20 4 1-7 * 1", "week"),
    ("0 2 * MAR-APR,sep-OCT SUN", "week"),
    ("0 0 31 * *", "month"),
    ("0 0 29 2 *", "leap"),
    ("0 0 * * 6-7", "week"),
    ("45 2 1 oct,apr *", "month"),
]

OFFSETS = [None, None, None, "PT0S", "PT1H", "P1D", "-PT30M", "P1DT2H", "P1M", "P1W",
           "-P1D", "P1Y", "PT90M", "-P1M", "P2W", "PT24H", "-P1DT1H", "P3D", "PT45M"]
# Offsets whose date part can land on a gap or an overlap when the start is near a transition.
DATE_OFFSETS = ["P1D", "-P1D", "P1DT2H", "P1W", "-P1W", "P1M", "-P1DT1H", "P2D", "-PT30M"]

COUNTS = {"minute": (20, 60), "hour": (10, 40), "day": (4, 14), "week": (3, 8),
          "month": (2, 6), "year": (1, 3), "leap": (1, 2)}
LEAD = {"minute": 4 * 3600, "hour": 8 * 3600, "day": 3 * 86400, "week": 10 * 86400,
        "month": 40 * 86400, "year": 200 * 86400, "leap": 200 * 86400}


def transitions(zone: str, year: int) -> list[int]:
    """UTC instants (seconds) in `year` at which the zone's UTC offset changes."""
    z = ref.Zone(zone)
    start = int(datetime(year, 1, 1, tzinfo=timezone.utc).timestamp())
    end = int(datetime(year + 1, 1, 1, tzinfo=timezone.utc).timestamp())
    found = []
    step = 6 * 3600
    t = start
    while t < end:
        if z.offset(t) != z.offset(t + step):
            lo, hi = t, t + step  # offset(lo) != offset(hi); find first instant with new offset
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if z.offset(mid) == z.offset(lo):
                    lo = mid
                else:
                    hi = mid
            found.append(hi)
        t += step
    return found


def format_from(rng: random.Random, t: int, zone: str) -> str:
    """RFC 3339 text for instant t, sometimes with a fraction or a numeric offset."""
    style = rng.random()
    utc = datetime.fromtimestamp(t, timezone.utc)
    if style < 0.75:
        return utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style < 0.85:
        return utc.strftime("%Y-%m-%dT%H:%M:%S") + ".250Z"
    local = utc.astimezone(ref.ZoneInfo(zone))
    return local.isoformat()


def make_cases(n: int) -> list[dict]:
    rng = random.Random(SEED)
    cases = []
    while len(cases) < n:
        if rng.random() < 0.35:
            word, freq = rng.choice(ALIASES)
            word = rng.choice(["@", ""]) + word
            word = rng.choice([word, word.upper(), word.capitalize(), word.lower()])
            schedule = word
        else:
            schedule, freq = rng.choice(CRONS)
        near_dst = rng.random() < 0.55
        zone = rng.choice(DST_ZONES) if near_dst else rng.choice(ZONES)
        year = rng.randint(2020, 2030)
        if near_dst:
            tr = transitions(zone, year)
            base = rng.choice(tr) - rng.randint(0, LEAD[freq])
        else:
            start = int(datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp())
            end = int(datetime(2030, 12, 1, tzinfo=timezone.utc).timestamp())
            base = rng.randint(start, end)
        # Mostly whole minutes or hours, sometimes arbitrary seconds.
        r = rng.random()
        if r < 0.4:
            base -= base % 3600
        elif r < 0.8:
            base -= base % 60
        lo, hi = COUNTS[freq]
        cases.append({
            "schedule": schedule,
            "timeZone": zone,
            "offset": rng.choice(DATE_OFFSETS if near_dst and rng.random() < 0.5 else OFFSETS),
            "from": format_from(rng, base, zone),
            "count": rng.randint(lo, hi),
        })
    return cases


def grid_cases() -> list[dict]:
    """For one transition of each kind (forward, back) per daylight-saving zone: crons whose
    specific hour is the wall-clock hour just before, at and after the shift, wildcard-hour
    crons, and the hourly/daily aliases, with offsets whose date part lands on the shift."""
    rng = random.Random(SEED + 1)
    cases = []
    for zone in DST_ZONES:
        z = ref.Zone(zone)
        year = rng.randint(2020, 2030)
        for tr in transitions(zone, year):
            before, after = z.wall(tr - 60), z.wall(tr)
            hours = sorted({before.hour, after.hour, (before.hour + 23) % 24, (after.hour + 1) % 24})
            minute = rng.randint(0, 59)
            crons = [f"0,15,30,45,50 {h} * * *" for h in hours]
            crons += [f"{minute} {h} * * *" for h in hours]
            crons += [f"{minute} {','.join(map(str, hours))} * * *"]
            for cron in crons:
                cases.append({"schedule": cron, "timeZone": zone, "offset": rng.choice([None, "P1D"]),
                              "from": ref._rfc3339_utc(tr - 26 * 3600), "count": 12})
            for sched, lead, count in [("*/15 * * * *", 3 * 3600, 30), (f"{minute} * * * *", 5 * 3600, 12),
                                       (f"{minute} */2 * * *", 5 * 3600, 6), ("@hourly", 4 * 3600, 10),
                                       ("@daily", 2 * 86400, 4)]:
                for offset in [None, "-P1D", "P1DT1H"]:
                    cases.append({"schedule": sched, "timeZone": zone, "offset": offset,
                                  "from": ref._rfc3339_utc(tr - lead), "count": count})
    return cases


def run_binary(binary: str, case: dict):
    cmd = [binary, "preview", "--schedule", case["schedule"], "--time-zone", case["timeZone"]]
    if case["offset"] is not None:
        cmd += ["--offset", case["offset"]]
    cmd += ["--from", case["from"], "--count", str(case["count"]), "-o", "json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return {"error": p.stderr.strip() or f"exit code {p.returncode}"}, cmd
    try:
        return json.loads(p.stdout), cmd
    except json.JSONDecodeError:
        return {"error": "unparseable output: " + p.stdout[:500]}, cmd


def run_reference(case: dict):
    try:
        return ref.preview(case["schedule"], case["timeZone"], case["offset"], case["from"],
                           case["count"])
    except ValueError as e:
        return {"error": str(e)}


def shell_quote(args) -> str:
    return " ".join(shlex.quote(a) for a in args)


def main() -> int:
    binary = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CHARON_BIN")
    if not binary:
        print("usage: compare.py CHARON_BINARY [CASES]  (or set CHARON_BIN)", file=sys.stderr)
        return 2
    n = int(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_CASES
    cases = make_cases(n) + grid_cases()
    with ThreadPoolExecutor(max_workers=8) as pool:
        actual = list(pool.map(lambda c: run_binary(binary, c), cases))
    passed = failed = 0
    for case, (got, cmd) in zip(cases, actual):
        want = run_reference(case)
        if got == want:
            passed += 1
            continue
        failed += 1
        print("MISMATCH", json.dumps(case))
        print("  command:  ", shell_quote(cmd))
        if isinstance(got, list) and isinstance(want, list):
            for i in range(max(len(got), len(want))):
                g = got[i] if i < len(got) else None
                w = want[i] if i < len(want) else None
                if g != w:
                    print(f"  first difference at index {i}:")
                    print("    charon:   ", json.dumps(g))
                    print("    reference:", json.dumps(w))
                    break
        print("  charon:   ", json.dumps(got))
        print("  reference:", json.dumps(want))
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
