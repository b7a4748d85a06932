"""Report speed on a large store: 10 million hourly rows and 100,000 violations.

Builds (once, cached in bench/out/) an SQLite store shaped like a fleet's: 50 machines over 90
days, each with its own set of destinations (real register hosts and common non-AI hosts,
several addresses each), processes and verdicts. Rows are written with the store's own schema
(``open_engine``), key function and day aggregation, in bulk, because pushing 10 million
distinct rows one observation at a time through ``StoreWriter`` would take the bench minutes.
The daily rollups are computed from exactly the hourly rows written, and the bench checks that
both tables hold the same total.

Then times each grouped report the way ``egresswatch report`` builds it (rows, summary,
timeline, countries, top rules and cases, rendered as JSON), next to the reference: the same
grouping done directly on the hourly rows with one SQL query, as a store without rollups would.
"""

from __future__ import annotations

import argparse
import io
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))

from egresswatch.report.query import Filters, ReportQuery  # noqa: E402
from egresswatch.store.engine import open_engine  # noqa: E402
from egresswatch.store.keys import AGGREGATE_COLUMNS, DAILY_COLUMNS, DAY, HOUR, digest, week_of  # noqa: E402
from egresswatch.store.rollups import (  # noqa: E402
    rebuild_daily_facets,
    rebuild_hourly_rollup,
    rebuild_totals,
)
from geo.register import load_register  # noqa: E402

ROWS = 10_000_000
VIOLATIONS = 100_000
MACHINES = 50
DAYS = 90
END = 1_795_478_400  # 2026-11-24T00:00:00Z
START = END - DAYS * DAY

COUNTRIES = ["US", "DE", "IE", "NL", "FR", "SE", "GB", "CN", "SG", "JP", None]
PROCESSES = ["code", "node", "python3", "cursor", "chrome", "firefox", "curl", "pip", "java"]
RULES_BY_VERDICT = {
    "violation": ["no-unapproved-vendors", "inference", "endpoint", "allowlist", "jurisdiction"],
    "warn": ["unknown_location", "unknown_ai", "unverifiable"],
    "allow": [None, "bedrock-eu", "package-registries", "self"],
}


def _destinations(rng: random.Random) -> list[dict[str, object]]:
    """Destinations with what a policy decides for each: a verdict and rule per destination
    (policies are deterministic), a handshake kind, and a few addresses."""
    out: list[dict[str, object]] = []
    hosts: list[tuple[str, str | None, str | None]] = [
        (e.host.replace("{region}", "eu-west-1").replace("*", "x"), p.id, e.role)
        for p in load_register().providers
        for e in p.endpoints
    ]
    hosts += [(f"cdn{i}.example-{i % 37}.com", None, None) for i in range(600)]
    for host, provider, role in hosts:
        roll = rng.random()
        verdict = "violation" if roll < 0.06 else "warn" if roll < 0.18 else "allow"
        out.append(
            {
                "host": host,
                "provider": provider,
                "role": role,
                "country": rng.choice(COUNTRIES),
                "verdict": verdict,
                "rule": rng.choice(RULES_BY_VERDICT[verdict]),
                "kind": "quic" if rng.random() < 0.15 else "tls",
                "ips": [
                    f"203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}"
                    for _ in range(rng.randrange(1, 9))
                ],
            }
        )
    return out


def build_store(path: Path) -> None:
    """Write the store at ``path`` (schema by open_engine, rows in bulk)."""
    rng = random.Random(20261124)
    dests = _destinations(rng)
    tmp = path.with_suffix(".tmp")
    for leftover in (tmp, Path(str(tmp) + "-wal"), Path(str(tmp) + "-shm")):
        leftover.unlink(missing_ok=True)
    open_engine(tmp).dispose()
    db = sqlite3.connect(tmp)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-1000000")
    machines = []
    for m in range(MACHINES):
        profile = rng.sample(dests, 70)
        procs = rng.sample(PROCESSES, 4)
        # Each destination is mostly reached by one process of the machine.
        usual = {str(d["host"]): rng.choice(procs) for d in profile}
        machines.append((f"dev-{m:03d}", profile, procs, usual))
    per_hour = ROWS // (DAYS * 24)
    cols = ("hour", "key", *AGGREGATE_COLUMNS, "count", "first_seen", "last_seen")
    sql = f"INSERT INTO observations ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})"
    daily: dict[tuple[object, ...], list[float]] = {}
    written = 0
    started = time.perf_counter()
    for h in range(DAYS * 24):
        hour = START + h * HOUR
        batch = []
        seen: set[bytes] = set()
        while len(batch) < per_hour:
            machine, profile, procs, usual = machines[rng.randrange(MACHINES)]
            d = profile[int(rng.paretovariate(1.2)) % len(profile)]
            dns = rng.random() < 0.2
            kind = "dns" if dns else str(d["kind"])
            verdict = "allow" if dns else str(d["verdict"])
            rule = None if dns else d["rule"]
            process = str(usual[str(d["host"])]) if rng.random() < 0.9 else rng.choice(procs)
            values = (
                machine,
                kind,
                "udp" if kind != "tls" else "tcp",
                f"10.{int(machine[4:]) % 250}.0.{rng.randrange(2, 4)}",
                "10.0.0.53" if dns else rng.choice(d["ips"]),  # type: ignore[arg-type]
                53 if kind == "dns" else 443,
                d["host"],
                "A" if kind == "dns" else None,
                d["provider"],
                d["role"],
                None,
                "US" if d["provider"] else None,
                d["country"],
                rng.choice((13335, 16509, 8075, 15169, 14061)),
                "Example AS",
                False,
                False,
                verdict,
                rule,
                f"{d['host']} decided by {rule or 'no rule'}.",
                process,
            )
            key = digest(values)
            if key in seen:
                continue
            seen.add(key)
            count = 1 + int(rng.expovariate(0.2))
            first = hour + rng.uniform(0, 3000)
            last = min(hour + 3599, first + rng.uniform(0, 600))
            batch.append((hour, key, *values, count, first, last))
            dvals = tuple(values[AGGREGATE_COLUMNS.index(c)] for c in DAILY_COLUMNS)
            slot = daily.get((hour - hour % DAY, dvals))
            if slot is None:
                daily[(hour - hour % DAY, dvals)] = [count, first, last, values[19]]  # type: ignore[list-item]
            else:
                slot[0] += count
                slot[1] = min(slot[1], first)
                slot[2] = max(slot[2], last)
        db.executemany(sql, batch)
        written += len(batch)
        if h % 240 == 239:
            db.commit()
            rate = written / (time.perf_counter() - started)
            print(f"  ... {written:,} hourly rows ({rate:,.0f}/s)", flush=True)
    db.commit()
    dcols = ("day", "key", *DAILY_COLUMNS, "reason", "count", "first_seen", "last_seen")
    db.executemany(
        f"INSERT INTO daily ({','.join(dcols)}) VALUES ({','.join('?' * len(dcols))})",
        (
            (day, digest(vals), *vals, reason, count, first, last)
            for (day, vals), (count, first, last, reason) in daily.items()
        ),
    )
    weekly: dict[tuple[object, ...], list[object]] = {}
    for (day, vals), (count, first, last, reason) in daily.items():
        slot = weekly.get((week_of(day), vals))  # type: ignore[arg-type]
        if slot is None:
            weekly[(week_of(day), vals)] = [count, first, last, reason]  # type: ignore[arg-type]
        else:
            slot[0] += count  # type: ignore[operator]
            slot[1] = min(slot[1], first)  # type: ignore[type-var]
            slot[2] = max(slot[2], last)  # type: ignore[type-var]
    wcols = ("week", "key", *DAILY_COLUMNS, "reason", "count", "first_seen", "last_seen")
    db.executemany(
        f"INSERT INTO weekly ({','.join(wcols)}) VALUES ({','.join('?' * len(wcols))})",
        (
            (week, digest(vals), *vals, reason, count, first, last)  # type: ignore[arg-type]
            for (week, vals), (count, first, last, reason) in weekly.items()
        ),
    )
    db.commit()
    vcols = (*AGGREGATE_COLUMNS, "ts", "sport", "sni", "alpn", "pid", "detail")
    vcols = tuple(c for c in vcols if c != "qtype")
    vsql = f"INSERT INTO violations ({','.join(vcols)}) VALUES ({','.join('?' * len(vcols))})"
    rows = []
    for _ in range(VIOLATIONS):
        machine, profile, procs, usual = machines[rng.randrange(MACHINES)]
        bad = [d for d in profile if d["verdict"] == "violation"] or profile
        d = bad[int(rng.paretovariate(1.2)) % len(bad)]
        rule = d["rule"] if d["verdict"] == "violation" else "allowlist"
        ts = rng.uniform(START, END)
        vals = {
            "machine": machine,
            "kind": "tls",
            "transport": "tcp",
            "src": "10.0.0.2",
            "dst": "203.0.113.9",
            "dport": 443,
            "host": d["host"],
            "provider": d["provider"],
            "role": d["role"],
            "region": None,
            "inference": "US",
            "endpoint_country": d["country"],
            "asn": 16509,
            "as_org": "Example AS",
            "anycast": False,
            "ech": False,
            "verdict": "violation",
            "rule": rule,
            "reason": f"{d['host']} denied by {rule}.",
            "process": usual[str(d["host"])],
            "ts": ts,
            "sport": rng.randrange(32768, 61000),
            "sni": d["host"],
            "alpn": '["h2"]',
            "pid": rng.randrange(100, 99999),
            "detail": "{}",
        }
        rows.append(tuple(vals[c] for c in vcols))
    rows.sort(key=lambda r: r[vcols.index("ts")])
    db.executemany(vsql, rows)
    db.commit()
    db.close()
    with open_engine(tmp).begin() as conn:
        # The store's own functions, as retention uses them.
        rebuild_hourly_rollup(conn)
        rebuild_totals(conn)
        rebuild_daily_facets(conn)
    db = sqlite3.connect(tmp)
    db.execute("ANALYZE")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    tmp.rename(path)
    print(f"  built {path.name} in {time.perf_counter() - started:.0f} s")


QUERIES: list[tuple[str, str, dict[str, object], str]] = [
    ("--by host", "host", {}, "host"),
    ("--by provider", "provider", {}, "provider"),
    ("--by rule", "rule", {}, "rule"),
    ("--by country", "country", {}, "endpoint_country"),
    ("--by process", "process", {}, "process"),
    ("--by day", "day", {}, "hour - hour % 86400"),
    ("--by machine", "machine", {}, "machine"),
    ("--by verdict", "verdict", {}, "verdict"),
    ("--by host --since 7d", "host", {"since": 7.5 * DAY}, "host"),
    (
        "--by provider --verdict violation --since 30d",
        "provider",
        {"since": 30.3 * DAY, "verdicts": ("violation",)},
        "provider",
    ),
    ("--by process --host '**.openai.com'", "process", {"hosts": ("**.openai.com",)}, "process"),
    ("--by rule --new-since-last", "rule", {"new_since_last": True}, ""),
]


def _filters(spec: dict[str, object]) -> Filters:
    kw = dict(spec)
    if "since" in kw:
        kw["since"] = END - float(kw["since"])  # type: ignore[arg-type]
    return Filters(**kw)  # type: ignore[arg-type]


def _reference(db: sqlite3.Connection, expr: str, spec: dict[str, object]) -> float:
    where = []
    if "since" in spec:
        where.append(f"hour >= {int(END - float(spec['since'])) // HOUR * HOUR}")  # type: ignore[arg-type]
    if "verdicts" in spec:
        where.append("verdict = 'violation'")
    if "hosts" in spec:
        where.append("host LIKE '%.openai.com'")
    sql = (
        f"SELECT {expr}, sum(count), sum(CASE WHEN verdict='violation' THEN count ELSE 0 END) "
        f"FROM observations {'WHERE ' + ' AND '.join(where) if where else ''} GROUP BY 1"
    )
    started = time.perf_counter()
    db.execute(sql).fetchall()
    return time.perf_counter() - started


def main() -> None:
    from egresswatch.report.formats import renderer
    from egresswatch.report.interface import ReportFormat

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-reference", action="store_true", help="skip the plain-SQL timings")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "store-10m.db"
    if not path.exists():
        print(f"  building {path} (once; cached)")
        build_store(path)
    raw = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    counts = {
        t: raw.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in (
            "observations",
            "hourly",
            "daily",
            "weekly",
            "totals",
            "daily_facets",
            "violations",
        )
    }
    total_h = raw.execute("SELECT sum(count) FROM observations").fetchone()[0]
    total_d = raw.execute("SELECT sum(count) FROM daily").fetchone()[0]
    total_r = raw.execute("SELECT sum(count) FROM hourly").fetchone()[0]
    total_w = raw.execute("SELECT sum(count) FROM weekly").fetchone()[0]
    total_t = raw.execute("SELECT sum(count) FROM totals").fetchone()[0]
    total_f = raw.execute("SELECT sum(count) FROM daily_facets").fetchone()[0]
    print(
        f"  store: {counts['observations']:,} hourly rows, rollups: {counts['hourly']:,} hourly, "
        f"{counts['daily']:,} daily and "
        f"{counts['weekly']:,} weekly rollup rows, {counts['totals']:,} totals, "
        f"{counts['daily_facets']:,} daily facets, {counts['violations']:,} violations; "
        f"{path.stat().st_size / 1e9:.2f} GB; "
        f"counts agree: {total_h == total_r == total_d == total_w == total_t == total_f} "
        f"({total_h:,})"
    )
    engine = open_engine(path)
    query = ReportQuery(engine)
    print(f"  {'report':48} {'egresswatch':>12} {'plain SQL on hourly rows':>26}  rows")
    worst = 0.0
    for label, by, spec, expr in QUERIES:
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM review_marks")
        started = time.perf_counter()
        report = query.build(_filters(spec), by=by, now=END, advance_mark=False)
        renderer(ReportFormat.JSON).render(report, io.StringIO())
        took = time.perf_counter() - started
        worst = max(worst, took)
        ref = "-" if args.no_reference or not expr else f"{_reference(raw, expr, spec):.2f} s"
        print(f"  {label:48} {took:>10.3f} s {ref:>26}  {len(report.rows):,}")
    print(f"  slowest grouped report: {worst:.3f} s ({'under' if worst < 1 else 'OVER'} 1 s)")
    for argv in (
        ["--by", "host"],
        ["--by", "rule", "--format", "json"],
        ["--by", "day"],
        ["--by", "host", "--since", "2026-11-16T12:00:00Z"],
    ):
        cmd = [sys.executable, "-m", "egresswatch", "report", "--db", str(path), *argv]
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, check=False, cwd=REPO)
        took = time.perf_counter() - started
        status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
        print(f"  whole command: egresswatch report {' '.join(argv):48} {took:.3f} s ({status})")
    started = time.perf_counter()
    report = query.build(Filters(verdicts=("violation",)), limit=100, now=END)
    print(
        f"  violation listing, newest 100 of {report.summary.violations:,}: "
        f"{time.perf_counter() - started:.3f} s"
    )


if __name__ == "__main__":
    main()
