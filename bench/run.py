"""`make bench`: egresswatch next to the reference tools, in the same run, on the same files.

1. Replay: builds a large mixed capture (bench/out/, cached) and times `egresswatch replay`
   against `tshark` extracting the same fields (SNI, DNS question and answers) from the same
   file; prints packets/s, wall time, peak memory and what each found.
2. Memory: replays a capture four times larger and shows that peak memory stays flat.
3. Reports on a store of 10 million hourly rows and 100,000 violations (bench/store.py; built
   once and cached): each grouped report's time, next to the same grouping in plain SQL over
   the hourly rows.
4. Live capture CPU under bulk traffic on a veth pair: the ``egresswatch run`` agent next to
   tcpdump with the same filter, download and upload, GSO on and off (bench/live_cpu.py).
5. Handshake load: thousands of TLS and QUIC handshakes a second, each with its own name, while
   bulk traffic runs at line rate on the same veth; every one reported by the agent or counted
   as dropped, with tcpdump's figures beside it (bench/live_load.py).
6. The fleet: violations and hourly counts from a host's outbox through Mosquitto into
   PostgreSQL with ``collect``, next to the bare transport (paho to ``mosquitto_sub``)
   (bench/fleet.py; needs PostgreSQL on 127.0.0.1:5432 and mosquitto).
7. A short soak: the live agent's memory under steady traffic with ever-new names
   (bench/soak.py, ``--soak-seconds``, 10 minutes by default); ``make soak`` runs the hour.

4, 5 and 7 need root and network namespaces (skipped with a reason otherwise).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))

from bench.synth import write_mixed  # noqa: E402

TSHARK_FIELDS = [
    "-e",
    "tls.handshake.extensions_server_name",
    "-e",
    "dns.qry.name",
    "-e",
    "dns.a",
    "-e",
    "dns.aaaa",
    "-e",
    "dns.cname",
]


def build(name: str, **kwargs: int) -> tuple[Path, dict[str, int]]:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.pcap"
    meta = path.with_suffix(".counts")
    if not path.exists() or not meta.exists():
        started = time.perf_counter()
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            counts = write_mixed(fh, **kwargs)
        tmp.rename(path)
        meta.write_text(repr(counts))
        print(
            f"  built {path.name}: {counts['packets']:,} packets, "
            f"{path.stat().st_size / 1e6:,.0f} MB in {time.perf_counter() - started:.1f} s"
        )
    counts = eval(meta.read_text())  # our own file, written above
    return path, counts


def measure(cmd: list[str]) -> tuple[float, float, bytes]:
    """Wall seconds, peak RSS in MB, and stdout of ``cmd``."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = b""
    assert proc.stdout is not None
    chunks = []
    while chunk := proc.stdout.read(1 << 20):
        chunks.append(chunk)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    out = b"".join(chunks)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed with status {os.waitstatus_to_exitcode(status)}")
    return wall, usage.ru_maxrss / 1024, out


def replay_bench(size: str) -> None:
    scale = {"small": 1, "medium": 4, "large": 10}[size]
    path, counts = build(
        f"mixed-{scale}x",
        connections=1000 * scale,
        quic_connections=100 * scale,
        dns_exchanges=500 * scale,
    )
    packets = counts["packets"]
    egress = [
        str(REPO / ".venv" / "bin" / "egresswatch"),
        "replay",
        "--format",
        "jsonl",
        "--no-stats",
        str(path),
    ]
    ew_wall, ew_rss, ew_out = measure(egress)
    ew_lines = ew_out.decode().splitlines()
    import json

    ew_obs = [json.loads(line) for line in ew_lines]
    ew_tls = sum(1 for o in ew_obs if o["kind"] == "tls")
    ew_quic = sum(1 for o in ew_obs if o["kind"] == "quic")
    ew_dns = sum(1 for o in ew_obs if o["kind"] == "dns")
    rows = [("egresswatch replay", ew_wall, ew_rss, f"tls={ew_tls} quic={ew_quic} dns={ew_dns}")]
    if shutil.which("tshark"):
        tshark = [
            "tshark",
            "-n",
            "-r",
            str(path),
            "-Y",
            "tls.handshake.type == 1 || dns",
            "-T",
            "fields",
            *TSHARK_FIELDS,
        ]
        ts_wall, ts_rss, ts_out = measure(tshark)
        ts_sni = sum(1 for line in ts_out.decode().splitlines() if line.split("\t")[0])
        rows.append(("tshark -Y ... -T fields", ts_wall, ts_rss, f"sni lines={ts_sni}"))
    else:
        print("  tshark not found: apt install tshark to compare")
    print(
        f"\n  capture: {path.name}, {packets:,} packets, {path.stat().st_size / 1e6:,.0f} MB; "
        f"written: tls={counts['tls']} (out of order {counts['tls_out_of_order']}) "
        f"quic={counts['quic']} dns={counts['dns']}"
    )
    print(f"  {'tool':<26}{'wall s':>9}{'packets/s':>13}{'peak MB':>10}   found")
    for name, wall, rss, found in rows:
        print(f"  {name:<26}{wall:>9.2f}{packets / wall:>13,.0f}{rss:>10.0f}   {found}")
    if len(rows) == 2:
        print(f"  speed-up over tshark: {rows[1][1] / rows[0][1]:.2f}x")


def enrich_bench() -> None:
    """Issue 3: enriching 100k observations with warm caches vs replaying their capture."""
    from egresswatch.enrichment import ObservationEnricher
    from geo.enrich import Enricher
    from probes.capfile import open_capture
    from probes.sensor import Sensor

    path, counts = build(
        "handshakes-100k", connections=50_000, bulk_segments=0, quic_connections=0,
        dns_exchanges=50_000,
    )  # fmt: skip
    started = time.perf_counter()
    with open_capture(path) as reader:
        observations = list(Sensor().run(reader))
    replay = time.perf_counter() - started
    enrich = ObservationEnricher(Enricher.from_geo_dir(REPO / "geo" / "sample"))
    for obs in observations:  # warm the caches (register matches, IP facts, DNS names)
        enrich(obs)
    started = time.perf_counter()
    for obs in observations:
        enrich(obs)
    warm = time.perf_counter() - started
    n = len(observations)
    print(f"\n  capture: {path.name}, {counts['packets']:,} packets -> {n:,} observations")
    print(f"  {'step':<34}{'seconds':>9}{'per observation':>18}")
    print(f"  {'replay (read, decode, parse)':<34}{replay:>9.2f}{replay / n * 1e6:>15.1f} us")
    print(f"  {'enrich, warm caches':<34}{warm:>9.2f}{warm / n * 1e6:>15.1f} us")
    print(f"  enrichment costs {warm / replay:.1%} of the replay")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--skip-live", action="store_true", help="skip the live-capture benches (4, 5 and 7)"
    )
    parser.add_argument(
        "--live-size", default="512M", help="bytes per bulk transfer in 4 (K, M, G suffixes)"
    )
    parser.add_argument(
        "--load-rates", default="250,1000,2500", help="handshakes/s of each kind in 5, per run"
    )
    parser.add_argument(
        "--load-duration", type=float, default=10.0, help="seconds of load per rate in 5"
    )
    parser.add_argument(
        "--sizes", default="small,medium", help="replay capture sizes: small,medium,large"
    )
    parser.add_argument(
        "--fleet-violations", type=int, default=20_000, help="violations sent in 6 (0: skip)"
    )
    parser.add_argument(
        "--soak-seconds", type=float, default=600, help="seconds of the soak in 7 (0: skip)"
    )
    args = parser.parse_args()
    print("== replay throughput and memory, egresswatch vs tshark ==")
    for size in args.sizes.split(","):
        replay_bench(size)
    print("\n== enrichment of 100k observations (warm caches) vs the replay that made them ==")
    enrich_bench()
    print("\n== register host matching (suffix trie) ==")
    subprocess.run([sys.executable, str(REPO / "tests" / "geo" / "bench_hosts.py")], check=False)
    print("\n== reports on a 10M-row store: egresswatch report vs plain SQL on the hourly rows ==")
    subprocess.run([sys.executable, str(REPO / "bench" / "store.py")], check=False)
    if args.fleet_violations:
        print("\n== the fleet: outbox -> Mosquitto -> collect -> PostgreSQL vs bare MQTT ==")
        fleet = ["--violations", str(args.fleet_violations)]
        subprocess.run([sys.executable, str(REPO / "bench" / "fleet.py"), *fleet], check=False)
    if args.skip_live:
        return
    print("\n== live capture CPU under bulk traffic, egresswatch vs tcpdump (same BPF filter) ==")
    live_bench("live_cpu.py", "--size", args.live_size)
    print("\n== handshake load with bulk at line rate: every handshake reported or counted ==")
    live_bench("live_load.py", "--rates", args.load_rates, "--duration", str(args.load_duration))
    if args.soak_seconds:
        print(f"\n== soak: the agent's memory over {args.soak_seconds:g} s (make soak: 1 hour) ==")
        warmup = min(120.0, args.soak_seconds / 5)
        live_bench(
            "soak.py", "--duration", str(args.soak_seconds), "--warmup", str(warmup),
            "--print-every", "120",
        )  # fmt: skip


def live_bench(name: str, *argv: str) -> None:
    """Run bench/NAME (root and network namespaces; it says why when it cannot)."""
    script = REPO / "bench" / name
    if os.geteuid() != 0:
        print("  skipped: needs root for packet sockets and network namespaces")
    elif not script.exists():
        print(f"  skipped: bench/{name} is missing")
    else:
        subprocess.run([sys.executable, str(script), *argv], check=False, cwd=REPO)


if __name__ == "__main__":
    main()
