"""Compares `charon preview -o json` with schedule_reference.py on seeded random cases.

Usage: python3 compare.py CHARON_BINARY [CASES]. Prints each disagreement and a closing
`N passed, M failed` line; exits 1 on any disagreement.
"""

import json
import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from schedule_reference import preview

ZONES = ["UTC", "Europe/Stockholm", "America/New_York", "Australia/Adelaide", "Australia/Lord_Howe",
         "Asia/Kolkata", "America/Santiago", "Pacific/Chatham", "Europe/London", "Asia/Tehran"]
SCHEDULES = ["@hourly", "hourly", "HOURS", "@daily", "days", "@weekly", "@monthly", "@yearly", "annually",
             "30 2 * * *", "0 0 * * *", "15 1,2,3 * * *", "*/20 * * * *", "5 */3 * * *", "0 1-23/2 * * *",
             "45 2 * * SUN", "0 12 1,15 * MON", "0 0 * JAN-MAR FRI", "0 3 * * 1-5", "* 2 * * *", "0 2 29 2 *"]
OFFSETS = [None, "PT0S", "PT1H", "P1D", "-PT30M", "P1DT2H", "P1M", "P1W", "-P1D"]


def transitions(zone: str, year: int) -> list[datetime]:
    """UTC instants in `year` where the zone's offset changes (hourly scan, refined to the minute)."""
    z = ZoneInfo(zone)
    out = []
    t = datetime(year, 1, 1, tzinfo=timezone.utc)
    prev = t.astimezone(z).utcoffset()
    while t.year == year:
        nxt = t + timedelta(hours=1)
        off = nxt.astimezone(z).utcoffset()
        if off != prev:
            m = t
            while m.astimezone(z).utcoffset() == prev:
                m += timedelta(minutes=1)
            out.append(m)
            prev = off
        t = nxt
    return out


def cases(n: int, rng: random.Random):
    for i in range(n):
        zone = rng.choice(ZONES)
        schedule = rng.choice(SCHEDULES)
        offset = rng.choice(OFFSETS)
        year = rng.randint(2020, 2030)
        near = transitions(zone, year)
        if near and i % 3 != 2:
            start = rng.choice(near) - timedelta(minutes=rng.randint(1, 300))
        else:
            start = datetime(year, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=rng.randint(0, 365 * 1440))
        count = 3 if schedule in ("@yearly", "annually", "0 2 29 2 *") else (4 if "M" in schedule and "@monthly" == schedule else 8)
        yield schedule, zone, offset, start.strftime("%Y-%m-%dT%H:%M:%SZ"), count


def main() -> int:
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 150
    rng = random.Random(20261122)
    passed = failed = 0
    for schedule, zone, offset, start, count in cases(n, rng):
        cmd = [binary, "preview", "--schedule", schedule, "--time-zone", zone, "--from", start,
               "--count", str(count), "-o", "json"]
        if offset is not None:
            cmd += ["--offset", offset]
        got = subprocess.run(cmd, capture_output=True, text=True)
        want = preview(schedule, zone, offset, start, count)
        ok = got.returncode == 0 and json.loads(got.stdout) == want
        if ok:
            passed += 1
            continue
        failed += 1
        print(f"MISMATCH: {' '.join(cmd[1:])}")
        if got.returncode != 0:
            print(f"  charon failed: {got.stderr.strip()}")
            continue
        mine = json.loads(got.stdout)
        for j, (a, b) in enumerate(zip(mine, want)):
            if a != b:
                print(f"  first difference at #{j}:\n    charon:    {a}\n    reference: {b}")
                break
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
