"""The ``egresswatch`` command: a click group that only wires parts together."""

from __future__ import annotations

import enum
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, NoReturn, TypeVar

import click

from egresswatch import __version__, paths
from egresswatch.errors import EXIT_INPUT, EXIT_OK, EXIT_USAGE, EXIT_VIOLATION, EgressWatchError

# The packet and knowledge layers load only in the commands that use them, so that `report`
# and the informational commands start quickly.
if TYPE_CHECKING:
    import asyncio

    from sqlalchemy import Engine

    from egresswatch.attribution import AttributingWriter
    from egresswatch.fleet.broker import BrokerConfig
    from egresswatch.fleet.collector import Collector
    from egresswatch.output import ObservationWriter
    from egresswatch.store.writer import StoreWriter
    from geo.destination import Destination
    from probes.observation import Observation

FC = TypeVar("FC", bound=Callable[..., object])

# The RDAP answer cache, kept in the geo data folder.
RDAP_CACHE = "rdap-cache.sqlite"
# How often a running agent applies --keep and --max-db-size.
PRUNE_SECONDS = 3600.0
# How often an agent that publishes writes its hourly counts (one fleet message each time).
FLEET_FLUSH_SECONDS = 30.0


class OutputFormat(enum.StrEnum):
    """Formats of an Observation stream."""

    JSONL = "jsonl"
    TABLE = "table"
    LIVE = "live"


def _writer(fmt: OutputFormat, stream: IO[str]) -> ObservationWriter:
    from egresswatch.output import JsonlWriter, LiveWriter, TableWriter

    if fmt is OutputFormat.JSONL:
        return JsonlWriter(stream)
    if fmt is OutputFormat.LIVE:
        return LiveWriter(stream, color=stream.isatty())
    return TableWriter(stream, color=stream.isatty())


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"egresswatch: error: {message}", err=True)
    sys.exit(code)


GEO_DIR_OPTION = click.option(
    "--geo-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of IP databases (*.mmdb) and cloud range files; default $EGRESSWATCH_GEO_DIR, "
    "else 'geo' beside the database. Missing files leave their fields null.",
)


def _db_option(default_help: str) -> Callable[[FC], FC]:
    return click.option(
        "--db",
        "db",
        default=None,
        metavar="URL",
        help="Store into this database: an SQLAlchemy URL (sqlite:///PATH, "
        f"postgresql://USER@HOST/DB) or a path (SQLite). {default_help}",
    )


MACHINE_OPTION = click.option(
    "--machine",
    default=None,
    metavar="NAME",
    help="The machine name recorded with each row (default: this host's name for run, the "
    "capture's file name for replay).",
)


def _keep_option(default: str | None) -> Callable[[FC], FC]:
    return click.option(
        "--keep",
        default=default,
        metavar="DURATION",
        show_default=True,
        help="Delete stored rows older than this (90d, 12h, 2w) when the store opens, and every "
        "hour while running.",
    )


def _max_size_option(default: str | None) -> Callable[[FC], FC]:
    return click.option(
        "--max-db-size",
        "max_db_size",
        default=default,
        metavar="SIZE",
        show_default=True,
        help="Keep the store under this size (500M, 2G) by deleting the oldest whole days.",
    )


INTERFACE_OPTION = click.option(
    "--interface",
    "-i",
    "interfaces",
    multiple=True,
    metavar="NAME",
    help="Interface to capture on; repeatable. Default: all interfaces.",
)

STATS_OPTION = click.option(
    "--stats/--no-stats",
    default=None,
    help="At the end, print every packet and parser counter to stderr as JSON (default: a "
    "one-line summary when stderr is a terminal, nothing otherwise).",
)


def _report(counters: dict[str, int], stats: bool | None) -> None:
    if stats:
        click.echo(json.dumps(counters, sort_keys=True), err=True)
    elif stats is None and sys.stderr.isatty():
        malformed = sum(v for k, v in counters.items() if "malformed" in k)
        parts = [
            f"{counters.get('frames', 0):,} frames",
            f"{counters.get('observations', 0):,} observations",
            f"{malformed:,} malformed",
        ]
        if "damaged" in counters:
            parts.append(f"{counters['damaged']:,} damaged records")
        if "capture.kernel_drops" in counters:
            parts.append(f"{counters['capture.kernel_drops']:,} dropped by the kernel")
        click.echo("egresswatch: " + ", ".join(parts) + " (--stats for all counters)", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="egresswatch")
def main() -> None:
    """Where does our code go? Watch TLS SNI, QUIC SNI and DNS leaving this machine."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in OutputFormat]),
    default=OutputFormat.JSONL.value,
    show_default=True,
    help="jsonl: one Observation per line (DESIGN.md contract); table: aligned columns.",
)
@GEO_DIR_OPTION
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Judge every connection against this policy (POLICY.md): adds verdict, rule, reason.",
)
@click.option(
    "--fail-on-violation",
    is_flag=True,
    help="Exit 1 when any connection is a violation (needs --policy).",
)
@_db_option("Default: print only, store nothing.")
@MACHINE_OPTION
@_keep_option(None)
@_max_size_option(None)
@STATS_OPTION
def replay(
    files: tuple[Path, ...],
    fmt: str,
    geo_dir: Path | None,
    policy_file: Path | None,
    fail_on_violation: bool,
    db: str | None,
    machine: str | None,
    keep: str | None,
    max_db_size: str | None,
    stats: bool | None,
) -> None:
    """Analyse pcap/pcapng FILES as if the traffic were live.

    Streams: observations are written as they complete and memory stays flat however large
    the files. Exit 3 when a file cannot be read (after writing what it held before the damage).
    """
    from egresswatch.enrichment import EnrichingWriter, ObservationEnricher, OwnEndpoints
    from egresswatch.output import Tee
    from egresswatch.policy import load_policy
    from geo.enrich import Enricher
    from probes.capfile import open_capture
    from probes.errors import CaptureError
    from probes.sensor import Sensor

    if fail_on_violation and policy_file is None:
        msg = "--fail-on-violation needs --policy"
        raise click.UsageError(msg)
    # A bad policy is refused before anything runs (exit 2, file and line).
    judged = load_policy(policy_file) if policy_file is not None else None
    retention = _retention(keep, max_db_size)
    out = sys.stdout
    enrich = ObservationEnricher(
        Enricher.from_geo_dir(paths.geo_dir(geo_dir)), judged, own=OwnEndpoints.default()
    )
    sinks: list[ObservationWriter] = [_writer(OutputFormat(fmt), out)]
    store = None
    if db is not None:
        store = _open_store(db, machine or files[0].name, retention, flush_seconds=1.0)
        sinks.append(store)
    writer = EnrichingWriter(Tee(*sinks) if store is not None else sinks[0], enrich)
    sensor = Sensor()
    errors: list[str] = []
    show_progress = sys.stderr.isatty() and not out.isatty()
    totals = {"packets": 0, "damaged": 0}

    def frames() -> Iterator[tuple[float, int, bytes]]:
        for path in files:
            try:
                reader = open_capture(path)
            except CaptureError as exc:
                errors.append(f"{path}: {exc}")
                continue
            with reader:
                try:
                    if show_progress:
                        yield from _with_progress(reader, path)
                    else:
                        yield from reader
                except CaptureError as exc:
                    errors.append(f"{path}: {exc}")
                finally:
                    totals["packets"] += reader.packets
                    totals["damaged"] += reader.damaged

    try:
        for obs in sensor.run(frames()):
            writer.write(obs)
    except BrokenPipeError:
        # `egresswatch replay big.pcap | head` is normal use, not an error.
        _quiet_broken_pipe()
        sys.exit(EXIT_OK)
    finally:
        try:
            writer.close()
        except BrokenPipeError:
            _quiet_broken_pipe()
    _report({**totals, **sensor.stats(), **_store_stats(store)}, stats)
    for message in errors:
        click.echo(f"egresswatch: error: {message}", err=True)
    if errors:
        sys.exit(EXIT_INPUT)
    if fail_on_violation and enrich.violations:
        click.echo(f"egresswatch: {enrich.violations} violation(s)", err=True)
        sys.exit(EXIT_VIOLATION)


def _with_progress(reader: object, path: Path) -> Iterator[tuple[float, int, bytes]]:
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from probes.capfile import CaptureReader

    assert isinstance(reader, CaptureReader)
    size = path.stat().st_size
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task(path.name, total=size)
        for n, record in enumerate(reader):
            yield record
            if not n & 0x3FFF:
                progress.update(task, completed=reader.bytes_read)


def _quiet_broken_pipe() -> None:
    # Python would print an error at exit when flushing stdout into a closed pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


@main.command()
@INTERFACE_OPTION
@click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in OutputFormat]),
    default=None,
    help="How observations are printed as they happen: live (one line per new destination "
    "with its verdict; the default on a terminal), table (every observation; the default "
    "otherwise), jsonl (DESIGN.md contract).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many seconds (default: run until interrupted).",
)
@GEO_DIR_OPTION
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Judge every connection against this policy; without one, audit only.",
)
@_db_option(
    "Default: /var/lib/egresswatch/egresswatch.db as root, else "
    "$XDG_DATA_HOME/egresswatch/egresswatch.db."
)
@click.option("--no-db", is_flag=True, help="Store nothing; only print.")
@MACHINE_OPTION
@_keep_option("90d")
@_max_size_option("1G")
@click.option(
    "--user",
    "run_as",
    default=None,
    metavar="NAME",
    help="Once the capture is open, drop root to this user keeping CAP_NET_RAW only (default: "
    "'egresswatch' when that user exists and the agent starts as root; 'root' stays root).",
)
@click.option(
    "--broker",
    default=None,
    metavar="URL",
    help="Also publish violations and hourly counts to this MQTT broker: mqtt://[USER@]HOST[:PORT] "
    "or mqtts://... (TLS; a CA file in $EGRESSWATCH_BROKER_CA). The password comes from "
    "$EGRESSWATCH_BROKER_PASSWORD. Messages wait in the store's outbox while the broker is "
    "away, so it needs the store (not --no-db).",
)
@STATS_OPTION
def run(
    interfaces: tuple[str, ...],
    fmt: str | None,
    duration: float | None,
    geo_dir: Path | None,
    policy_file: Path | None,
    db: str | None,
    no_db: bool,
    machine: str | None,
    keep: str | None,
    max_db_size: str | None,
    run_as: str | None,
    broker: str | None,
    stats: bool | None,
) -> None:
    """Capture live and print every observation as it happens (needs root or CAP_NET_RAW).

    A kernel BPF filter passes only handshakes, DNS and what reassembly needs, so bulk
    transfers never reach Python. Stops on Ctrl-C or SIGTERM and prints its counters.
    """
    from egresswatch import allocator
    from egresswatch.enrichment import EnrichingWriter, ObservationEnricher, OwnEndpoints
    from egresswatch.output import Tee
    from egresswatch.policy import load_policy
    from geo.enrich import Enricher
    from probes.errors import CaptureError, ProbeError
    from probes.live import LiveCapture

    # Before any thread starts: glibc's arenas are per thread (see egresswatch/allocator.py).
    allocator.tune()
    # A bad policy is refused before the capture opens (exit 2, file and line).
    judged = load_policy(policy_file) if policy_file is not None else None
    retention = _retention(keep, max_db_size)
    broker_config = None
    if broker is not None:
        from egresswatch.fleet.broker import parse_broker_url

        if no_db:
            msg = "--broker needs the store (its outbox keeps what the broker has not taken yet)"
            raise click.UsageError(msg)
        broker_config = parse_broker_url(broker)
    store = None
    db_path = None
    if not no_db:
        db_value = db or str(paths.default_db_path())
        if "://" not in db_value:
            db_path = Path(db_value)
        store = _open_store(
            db_value,
            machine or socket.gethostname(),
            retention,
            outbox=broker_config is not None,
        )
    if fmt is None:
        fmt = OutputFormat.LIVE.value if sys.stdout.isatty() else OutputFormat.TABLE.value
    sinks: list[ObservationWriter] = [_writer(OutputFormat(fmt), sys.stdout)]
    if store is not None:
        sinks.append(store)
    own = OwnEndpoints.default(_broker_endpoints(broker_config))
    judge = ObservationEnricher(
        Enricher.from_geo_dir(paths.geo_dir(geo_dir, db_path)), judged, own=own
    )
    try:
        capture = LiveCapture(list(interfaces) or None)
    except CaptureError as exc:
        _fail(str(exc), EXIT_INPUT)
    enriching = EnrichingWriter(Tee(*sinks) if store is not None else sinks[0], judge)
    attributing = _attributing(enriching)
    writer: ObservationWriter = attributing or enriching
    import asyncio
    import logging

    from egresswatch.daemon import Agent, AgentConfig

    # Logs go to stderr (the journal under systemd), one line each, key facts first.
    logging.basicConfig(level=logging.INFO, format="egresswatch: %(levelname)s %(message)s")

    where = ", ".join(interfaces) if interfaces else "all interfaces"
    next_prune = time.monotonic() + PRUNE_SECONDS

    def on_idle() -> None:
        nonlocal next_prune
        sys.stdout.flush()
        if store is not None:
            store.tick()
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_SECONDS
                _prune(store, retention)

    config = AgentConfig(
        policy_file=policy_file,
        geo_dir=paths.geo_dir(geo_dir, db_path),
        status_path=_status_path(db_path) if store is not None else None,
        duration=duration,
        interfaces=interfaces,
        db=_describe_db(store),
    )
    if broker_config is not None and store is not None:
        from egresswatch.fleet.publisher import Publisher

        publisher = Publisher(store.engine, broker_config)
        config.extra_tasks.append(publisher.run)
        config.status_extra["fleet"] = publisher.status
    _drop_privileges(run_as, db_path if store is not None else None, config.status_path)
    agent = Agent(
        capture,
        _Quiet(writer),
        judge,
        config,
        on_idle=on_idle,
        early=attributing.prefetch if attributing is not None else None,
        on_ready=lambda: click.echo(
            f"egresswatch {__version__}: capturing on {where}; Ctrl-C to stop", err=True
        ),
    )
    if attributing is not None:
        attributing.pressure = agent.behind
        config.extra_counters.append(attributing.stats)
    try:
        asyncio.run(agent.run())
    except ProbeError as exc:
        _fail(str(exc), EXIT_INPUT)
    finally:
        capture.close()
        counters = {
            **agent.sensor.stats(),
            **{f"capture.{k}": v for k, v in capture.stats().items()},
            **agent.counters,
            **(attributing.stats() if attributing is not None else {}),
        }
        if attributing is not None:
            attributing.shutdown()
        _report({**counters, **_store_stats(store)}, stats)


def _broker_endpoints(config: BrokerConfig | None) -> frozenset[tuple[str, int]]:
    """The broker as (name, port) and (address, port): the agent's own connections to it are
    recorded with rule "self" whether the capture sees a name or only an address."""
    if config is None:
        return frozenset()
    out = {(config.host, config.port)}
    try:
        infos = socket.getaddrinfo(config.host, config.port, proto=socket.IPPROTO_TCP)
    except OSError:
        infos = []  # not resolvable now: the name still matches (TLS SNI, DNS answers)
    out.update((str(info[4][0]), config.port) for info in infos)
    return frozenset(out)


def _attributing(writer: ObservationWriter) -> AttributingWriter | None:
    """Process attribution before ``writer``, or None (logged) where the kernel refuses it."""
    import logging

    from egresswatch.attribution import AttributingWriter
    from probes.errors import CaptureError

    try:
        return AttributingWriter(writer)
    except (CaptureError, OSError) as exc:
        logging.getLogger("egresswatch.agent").warning("no process attribution: %s", exc)
        return None


def _drop_privileges(run_as: str | None, db_path: Path | None, status: Path | None) -> None:
    """Become the service user now that the capture is open (see egresswatch.privileges)."""
    import logging
    import pwd

    from egresswatch.privileges import drop_to, store_files

    log = logging.getLogger("egresswatch.agent")
    if os.geteuid() != 0 or run_as == "root":
        return
    if run_as is None:
        try:
            pwd.getpwnam("egresswatch")
        except KeyError:
            log.info("running as root: no 'egresswatch' user to drop to (--user NAME names one)")
            return
        run_as = "egresswatch"
    try:
        dropped = drop_to(run_as, own=store_files(db_path, status))
    except PermissionError as exc:
        _fail(f"cannot hand the store to user {run_as!r}: {exc}", EXIT_USAGE)
    log.info(
        "running as %s (uid %d) with capabilities %#x",
        dropped.user,
        dropped.uid,
        dropped.capabilities,
    )


def _status_path(db_path: Path | None) -> Path:
    """The agent's status file: beside its SQLite store, else in the data folder."""
    base = db_path if db_path is not None else paths.default_db_path()
    return base.with_name(base.name + ".status.json")


def _describe_db(store: StoreWriter | None) -> str | None:
    from egresswatch.store import describe

    return describe(store.engine.url) if store is not None else None


@main.command()
@_db_option("Default: the agent's database (see run).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="json: the agent's whole status document.",
)
def status(db: str | None, fmt: str) -> None:
    """How the running agent is doing: uptime, packets, observations, drops, violations, policy,
    geo data age. Exit 0 when it runs, 3 when it does not (or its status is stale)."""
    from egresswatch.output import safe_text

    db_value = db or str(paths.default_db_path())
    if "://" in db_value and not db_value.startswith("sqlite:///"):
        msg = "status reads the file beside a local SQLite store; give its path"
        raise click.UsageError(msg)
    db_path = Path(db_value.removeprefix("sqlite:///") if "://" in db_value else db_value)
    path = _status_path(db_path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        _fail(f"no status from an agent at {path} ({exc}); is egresswatch run running?", EXIT_INPUT)
    alive = bool(doc.get("running")) and _pid_alive(int(doc.get("pid", 0)))
    stale = time.time() - float(doc.get("updated", 0)) > 60
    if fmt == "json":
        click.echo(json.dumps({**doc, "alive": alive and not stale}, sort_keys=True))
    else:
        c = doc.get("counters", {})
        age = doc.get("geo_data_age")
        state = "running" if alive and not stale else ("stale" if alive else "not running")
        lines = [
            f"agent:        {state} (pid {doc.get('pid')}), up {_duration(doc.get('uptime', 0))}",
            f"capturing:    {', '.join(doc.get('interfaces', []))}",
            f"store:        {doc.get('db')}",
            f"policy:       {doc.get('policy')}",
            f"geo data:     {doc.get('geo_dir')}, "
            + (f"updated {_duration(age)} ago" if age is not None else "empty"),
            f"packets:      {c.get('frames', 0):,} frames, "
            f"{c.get('observations', 0):,} observations",
            f"violations:   {doc.get('violations', 0):,}",
            f"drops:        {c.get('capture.kernel_drops', 0):,} frames by the kernel; "
            f"by an overloaded queue {c.get('queue.dropped_tls', 0):,} TLS and "
            f"{c.get('queue.dropped_quic', 0):,} QUIC handshakes, "
            f"{c.get('queue.dropped_dns', 0):,} DNS answers",
        ]
        if "proc.attributed" in c:
            named, unnamed = c.get("proc.attributed", 0), c.get("proc.unattributed", 0)
            rate = f"{named / (named + unnamed):.0%}" if named + unnamed else "-"
            lines.append(
                f"processes:    {rate} of connections attributed ({c.get('proc.busy', 0):,} "
                "left unattributed to keep up)"
            )
        fleet = doc.get("fleet")
        if isinstance(fleet, dict):
            waiting = f"{fleet.get('pending', 0):,}{'+' if fleet.get('pending_over') else ''}"
            oldest = fleet.get("oldest_pending")
            state = "connected" if fleet.get("connected") else "not connected"
            lines.append(
                f"fleet:        {fleet.get('broker')} {state}, {fleet.get('published', 0):,} "
                f"published, {waiting} waiting"
                + (f" (oldest {_duration(time.time() - float(oldest))} ago)" if oldest else "")
                + (f"; last error: {fleet['last_error']}" if fleet.get("last_error") else "")
            )
        for line in lines:
            click.echo(safe_text(line, 400))
    if not alive or stale:
        sys.exit(EXIT_INPUT)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


class _Quiet:
    """A writer whose output may go to a closed pipe (``run | head``) without ending the run."""

    def __init__(self, writer: ObservationWriter) -> None:
        self._writer = writer

    def write(self, obs: Observation) -> None:
        try:
            self._writer.write(obs)
        except BrokenPipeError:
            _quiet_broken_pipe()

    def close(self) -> None:
        self._writer.close()


Retention = tuple[float | None, int | None]


def _retention(keep: str | None, max_db_size: str | None) -> Retention:
    """``--keep`` and ``--max-db-size`` as seconds and bytes (usage error when malformed)."""
    from egresswatch.store.retention import parse_duration, parse_size

    try:
        seconds = parse_duration(keep) if keep else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--keep") from None
    try:
        size = parse_size(max_db_size) if max_db_size else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-db-size") from None
    return seconds, size


def _open_store(
    db: str,
    machine: str,
    retention: Retention,
    *,
    flush_seconds: float = 2.0,
    outbox: bool = False,
) -> StoreWriter:
    """Open (create, migrate) the store, apply retention once, and return a writer for it.

    With ``outbox`` (publishing to a broker) hourly counts are written every
    :data:`FLEET_FLUSH_SECONDS` instead, each flush being one fleet message; violations are
    still written (and queued) within half a second."""
    from egresswatch.store import StoreWriter, open_engine
    from egresswatch.store.engine import WRITER_CACHE_KIB

    engine = open_engine(
        db,
        notify=lambda m: click.echo(f"egresswatch: {m}", err=True),
        cache_kib=WRITER_CACHE_KIB,
    )
    writer = StoreWriter(
        engine,
        machine=machine,
        flush_seconds=max(flush_seconds, FLEET_FLUSH_SECONDS) if outbox else flush_seconds,
        outbox=outbox,
    )
    _prune(writer, retention)
    return writer


def _prune(writer: StoreWriter, retention: Retention) -> None:
    from egresswatch.store.retention import prune

    keep, size = retention
    if keep is None and size is None:
        return
    writer.flush()
    result = prune(writer.engine, keep_seconds=keep, max_bytes=size, now=time.time())
    if result.removed:
        messages = f", {result.messages:,} fleet messages" if result.messages else ""
        click.echo(
            f"egresswatch: retention removed {result.observations:,} rows, "
            f"{result.violations:,} violations{messages} older than "
            f"{_day_text(result.before_day)} "
            f"({result.size_before / 1e6:.1f} MB -> {result.size_after / 1e6:.1f} MB)",
            err=True,
        )


def _day_text(day: int | None) -> str:
    from probes.observation import format_ts

    return format_ts(day)[:10] if day is not None else "-"


def _store_stats(store: StoreWriter | None) -> dict[str, int]:
    if store is None:
        return {}
    s = store.stats
    return {
        "store.observations": s.observations,
        "store.rows": s.rows,
        "store.violations": s.violations,
        "store.commits": s.commits,
    }


def entry() -> None:
    """Console entry point: every error of the project becomes its documented exit code."""
    try:
        main(standalone_mode=True)
    except EgressWatchError as exc:
        _fail(str(exc), exc.exit_code)


class InfoFormat(enum.StrEnum):
    """Formats of the informational commands."""

    JSON = "json"
    TABLE = "table"


def _info_format(help_text: str) -> Callable[[FC], FC]:
    """The ``--format json|table`` option of the informational commands."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice([f.value for f in InfoFormat]),
        default=InfoFormat.TABLE.value,
        show_default=True,
        help=help_text,
    )


@main.command()
@click.option(
    "--role",
    "roles",
    multiple=True,
    metavar="ROLE",
    help="Only endpoints with this role (inference, coding-tool, telemetry, auth, gateway, doh, "
    "control-plane, download); repeatable.",
)
@_info_format("json: the whole register with sources and dates; table: one row per endpoint.")
def providers(roles: tuple[str, ...], fmt: str) -> None:
    """List the provider register: who runs which AI endpoints, and where they say they process."""
    from egresswatch.render_info import providers_json, providers_table
    from geo.register import ROLES, load_register

    unknown = sorted(set(roles) - ROLES)
    if unknown:
        msg = f"unknown role {unknown[0]!r}; roles are {', '.join(sorted(ROLES))}"
        raise click.BadParameter(msg, param_hint="--role")
    register = load_register()
    if InfoFormat(fmt) is InfoFormat.JSON:
        click.echo(providers_json(register, set(roles)))
    else:
        providers_table(register, set(roles), sys.stdout)


@main.group()
def geo() -> None:
    """Where is an endpoint: look names and IPs up, refresh the geo data folder."""


@geo.command("lookup")
@click.argument("target", metavar="NAME|IP")
@_info_format("json: one object with the enrichment fields and the source of each.")
@GEO_DIR_OPTION
@click.option(
    "--rdap/--no-rdap",
    default=False,
    show_default=True,
    help="When the databases give no ASN for an IP, ask RDAP (the regional internet "
    "registries) for the network's holder; answers are cached beside the geo data. "
    "$EGRESSWATCH_RDAP_URL replaces ARIN's bootstrap service.",
)
def geo_lookup(target: str, fmt: str, geo_dir: Path | None, rdap: bool) -> None:
    """Everything known about a host name or an IP address."""
    import ipaddress

    from egresswatch.render_info import destination_table
    from geo.enrich import Enricher

    folder = paths.geo_dir(geo_dir)
    enricher = Enricher.from_geo_dir(folder)
    try:
        ip: str | None = str(ipaddress.ip_address(target.strip("[]")))
        name = None
    except ValueError:
        ip, name = None, target
    dest = enricher.destination(name, ip, host_source="query" if name else None)
    if rdap and ip is not None and dest.asn is None:
        dest = _with_rdap(dest, ip, folder)
    if InfoFormat(fmt) is InfoFormat.JSON:
        click.echo(json.dumps(dest.to_dict(), ensure_ascii=False))
    else:
        destination_table(dest, sys.stdout)


def _with_rdap(dest: Destination, ip: str, folder: Path) -> Destination:
    """Fill ASN and holder from RDAP (cached); the database facts, where any, stay first."""
    from dataclasses import replace

    from geo.rdap import DEFAULT_BOOTSTRAP_URL, RdapClient

    folder.mkdir(parents=True, exist_ok=True)
    bootstrap = os.environ.get("EGRESSWATCH_RDAP_URL") or DEFAULT_BOOTSTRAP_URL
    with RdapClient(folder / RDAP_CACHE, enabled=True, bootstrap_url=bootstrap) as client:
        answer = client.lookup(ip)
    if not answer.found:
        note = f"rdap: {answer.status}" + (f" ({answer.error})" if answer.error else "")
        return replace(dest, sources={**dest.sources, "rdap": note})
    source = f"rdap ({answer.source}): {answer.network or answer.handle or ip}"
    sources = dict(dest.sources)
    if answer.asn is not None:
        sources["asn"] = source
    if answer.as_org:
        sources["as_org"] = source
    return replace(dest, asn=answer.asn, as_org=answer.as_org or dest.as_org, sources=sources)


@geo.command("update")
@GEO_DIR_OPTION
@click.option(
    "--source",
    "sources",
    multiple=True,
    metavar="NAME",
    help="Only this source (aws, gcp, azure, oci, cloudflare-v4, cloudflare-v6, maxmind-city, "
    "maxmind-country, maxmind-asn, ipinfo-lite, dbip-city-lite, dbip-asn-lite); repeatable.",
)
@_info_format("json: the full report of what changed.")
def geo_update(geo_dir: Path | None, sources: tuple[str, ...], fmt: str) -> None:
    """Download IP databases and cloud range files into the geo data folder.

    Each file is written atomically after it validates; a failed or corrupt download leaves the
    old file in place. Account keys come from the environment (EGRESSWATCH_MAXMIND_ACCOUNT_ID,
    EGRESSWATCH_MAXMIND_LICENSE_KEY, EGRESSWATCH_IPINFO_TOKEN), never the command line; sources
    without one are skipped. Every URL can be overridden with EGRESSWATCH_GEO_URL_<NAME>.
    Exit 3 when a source failed.
    """
    from geo.errors import GeoUpdateError
    from geo.update import ProgressEvent, source_names, update_geo_dir

    unknown = sorted(set(sources) - set(source_names()))
    if unknown:
        msg = f"unknown source {unknown[0]!r}; sources are {', '.join(source_names())}"
        raise click.BadParameter(msg, param_hint="--source")
    folder = paths.geo_dir(geo_dir)
    interactive = sys.stderr.isatty()

    def progress(event: ProgressEvent) -> None:
        if interactive and event.phase in ("start", "done"):
            state = event.result.status if event.result is not None else "..."
            click.echo(f"[{event.index + 1}/{event.count}] {event.source}: {state}", err=True)

    try:
        report = update_geo_dir(folder, sources=list(sources) or None, progress=progress)
    except GeoUpdateError as exc:
        _fail(str(exc), EXIT_INPUT)
    if InfoFormat(fmt) is InfoFormat.JSON:
        click.echo(json.dumps(report.as_dict(), default=str))
    else:
        click.echo(f"geo data folder: {folder}")
        for result in report.results:
            click.echo(f"  {result.describe()}")
    if report.failed:
        sys.exit(EXIT_INPUT)


@main.group()
def policy() -> None:
    """Check policy files (the format is in POLICY.md)."""


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def policy_check(file: Path) -> None:
    """Validate FILE: exit 0 when it is a valid policy, 2 with file, line and the fix when not."""
    from egresswatch.policy import load_policy

    loaded = load_policy(file)
    click.echo(f"{file}: valid ({len(loaded.rules)} rules, scope {loaded.scope})")


@policy.command("explain")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("target", metavar="NAME|IP")
@click.option("--ip", default=None, help="The address the name was reached at (for location).")
@click.option("--port", type=click.IntRange(0, 65535), default=443, show_default=True)
@click.option(
    "--kind",
    type=click.Choice(["tls", "quic"]),
    default="tls",
    show_default=True,
    help="The kind of connection to judge.",
)
@GEO_DIR_OPTION
def policy_explain(
    file: Path,
    target: str,
    ip: str | None,
    port: int,
    kind: str,
    geo_dir: Path | None,
) -> None:
    """Show step by step how FILE would judge a connection to NAME or IP."""
    import ipaddress

    from egresswatch.output import safe_text
    from egresswatch.policy import evaluate, load_policy
    from geo.enrich import Enricher

    loaded = load_policy(file)
    try:
        address: str | None = str(ipaddress.ip_address(target.strip("[]")))
        name = None
    except ValueError:
        address, name = ip, target
    dest = Enricher.from_geo_dir(paths.geo_dir(geo_dir)).destination(name, address)
    verdict = evaluate(loaded, dest, kind=kind, port=port, ip=address)
    click.echo(f"destination: {safe_text(target, 200)} ({kind}, port {port})")
    where = [
        f"provider {dest.provider or '-'}",
        f"role {dest.role or '-'}",
        f"jurisdiction {dest.jurisdiction or '-'}",
        f"inference {','.join(dest.inference) or '-'}",
        f"endpoint {'anycast' if dest.anycast else dest.endpoint_country or '-'}",
    ]
    click.echo("known: " + ", ".join(where))
    for step in verdict.steps:
        click.echo(f"  {step}")
    click.echo(f"verdict: {verdict.verdict} (rule {verdict.rule or '-'}): {verdict.reason}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Judge every connection against this policy (POLICY.md); without one nothing fails "
    "but the command itself.",
)
@click.option(
    "--junit",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write JUnit XML here: one test case per rule and destination, violations fail.",
)
@click.option(
    "--summary",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write a Markdown summary here (it is also appended to $GITHUB_STEP_SUMMARY when set).",
)
@GEO_DIR_OPTION
@_db_option("Default: a temporary SQLite file, deleted afterwards.")
@INTERFACE_OPTION
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds to keep capturing after the command ends, for its last packets.",
)
@MACHINE_OPTION
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def ci(
    policy_file: Path | None,
    junit: Path | None,
    summary: Path | None,
    geo_dir: Path | None,
    db: str | None,
    interfaces: tuple[str, ...],
    grace: float,
    machine: str | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND, watch its egress, and fail when it reached what the policy forbids.

    Usage: egresswatch ci [OPTIONS] -- COMMAND [ARGS]...  Exit status: the command's own when it
    failed, else 1 on a violation, else 0. Needs root or CAP_NET_RAW, like run.
    """
    import shutil
    import tempfile

    from egresswatch.ci import headline, run_ci, write_outputs
    from egresswatch.policy import load_policy
    from egresswatch.store import open_engine
    from egresswatch.store.writer import StoreWriter
    from geo.enrich import Enricher
    from probes.errors import CaptureError
    from probes.live import LiveCapture

    judged = load_policy(policy_file) if policy_file is not None else None
    try:
        capture = LiveCapture(list(interfaces) or None)
    except CaptureError as exc:
        _fail(f"{exc}; the command was not run", EXIT_INPUT)
    scratch = None if db is not None else tempfile.mkdtemp(prefix="egresswatch-ci-")
    try:
        engine = open_engine(db or str(Path(scratch or ".") / "ci.db"))
        store = StoreWriter(engine, machine=machine or socket.gethostname(), flush_seconds=1.0)
        enricher = Enricher.from_geo_dir(paths.geo_dir(geo_dir))
        try:
            result = run_ci(
                command,
                capture=capture,
                store=store,
                enricher=enricher,
                policy=judged,
                grace=grace,
                echo=sys.stdout,
            )
        finally:
            capture.close()
        for path in write_outputs(result, junit=junit, summary=summary):
            click.echo(f"egresswatch ci: wrote {path}", err=True)
        click.echo(headline(result), err=True)
        engine.dispose()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    sys.exit(result.exit_status)


@main.command()
@click.option(
    "--broker",
    required=True,
    metavar="URL",
    help="The fleet's MQTT broker: mqtt://[USER@]HOST[:PORT] or mqtts://... (TLS; a CA file in "
    "$EGRESSWATCH_BROKER_CA). The password comes from $EGRESSWATCH_BROKER_PASSWORD.",
)
@click.option(
    "--db",
    "db",
    required=True,
    metavar="URL",
    help="The fleet's database, normally postgresql://USER@HOST/DB (the password from "
    "PGPASSWORD, not the URL); an SQLite path works for a trial. Created or migrated on start.",
)
@click.option(
    "--client-id",
    default="egresswatch-collector",
    show_default=True,
    help="The MQTT client id. The broker keeps what arrives for this id while the collector "
    "is away; a second collector needs its own id (and then writes nothing twice either).",
)
@_keep_option("90d")
@STATS_OPTION
def collect(broker: str, db: str, client_id: str, keep: str | None, stats: bool | None) -> None:
    """Write what the fleet's agents publish (run --broker) into the fleet's database.

    Subscribes to egresswatch/+/violations and egresswatch/+/observations with QoS 1 in a
    persistent session, writes each message in one transaction through the store's own code,
    and acknowledges it only after the commit: a message is written exactly once even when the
    broker delivers it again. Runs until SIGTERM or Ctrl-C; `report --db URL` reads the result.
    """
    import asyncio
    import logging
    import signal

    from egresswatch.fleet.broker import parse_broker_url
    from egresswatch.fleet.collector import Collector
    from egresswatch.store import describe, open_engine

    config = parse_broker_url(broker)
    keep_seconds, _ = _retention(keep, None)
    logging.basicConfig(level=logging.INFO, format="egresswatch: %(levelname)s %(message)s")
    log = logging.getLogger("egresswatch.collector")
    engine = open_engine(db, notify=lambda m: click.echo(f"egresswatch: {m}", err=True))
    collector = Collector(engine, config, client_id=client_id, keep_seconds=keep_seconds)
    log.info("collecting from %s into %s", config.describe(), describe(engine.url))

    async def main_loop() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        housekeeping = asyncio.create_task(_collector_housekeeping(collector, stop, keep_seconds))
        try:
            await collector.run(stop)
        finally:
            stop.set()
            await housekeeping

    try:
        asyncio.run(main_loop())
    finally:
        s = collector.stats
        counters = {
            "collector.written": s.written,
            "collector.duplicates": s.duplicates,
            "collector.malformed": s.malformed,
            "collector.expired": s.expired,
            "collector.connects": s.connects,
            "collector.failures": s.failures,
        }
        log.info(
            "stopped: %d messages written, %d duplicates dropped, %d malformed, %d expired",
            s.written,
            s.duplicates,
            s.malformed,
            s.expired,
        )
        if stats:
            click.echo(json.dumps(counters, sort_keys=True), err=True)
        engine.dispose()


async def _collector_housekeeping(
    collector: Collector, stop: asyncio.Event, keep_seconds: float | None
) -> None:
    """Every minute, log what changed; every hour, apply --keep to the fleet database."""
    import asyncio
    import logging

    from egresswatch.fleet.broker import sleep_unless
    from egresswatch.store.retention import prune

    log = logging.getLogger("egresswatch.collector")
    last = None
    next_prune = 0.0
    while not stop.is_set():
        if keep_seconds is not None and time.monotonic() >= next_prune:
            next_prune = time.monotonic() + PRUNE_SECONDS
            try:
                result = await asyncio.to_thread(
                    prune,
                    collector.engine,
                    keep_seconds=keep_seconds,
                    max_bytes=None,
                    now=time.time(),
                )
            except Exception as exc:  # a failed prune must not stop collecting
                log.warning("retention failed: %s", exc)
            else:
                if result.removed:
                    log.info(
                        "retention removed %d rows and %d violations older than %s",
                        result.observations,
                        result.violations,
                        _day_text(result.before_day),
                    )
        s = collector.stats
        now = (s.written, s.duplicates, s.malformed, s.expired)
        if now != last and last is not None:
            log.info(
                "%d messages written, %d duplicates dropped, %d malformed, %d expired",
                *now,
            )
        last = now
        await sleep_unless(stop, 60.0)


def _open_existing(db: str | None) -> Engine:
    """The engine of an existing store (a report never creates one)."""
    from egresswatch.store import StoreError, database_url, open_engine

    value = db or str(paths.default_db_path())
    url = database_url(value)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        msg = (
            f"no database at {url.database} (egresswatch run, or replay --db, creates one; "
            "--db names another)"
        )
        raise StoreError(msg)
    return open_engine(value, notify=lambda m: click.echo(f"egresswatch: {m}", err=True))


@main.command()
@_db_option("Default: the agent's database (see run).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(
        ["table", "json", "jsonl", "csv", "markdown", "html", "junit"], case_sensitive=False
    ),
    default="table",
    show_default=True,
    help="table for a terminal; json/jsonl for programs; csv for spreadsheets (formula-safe); "
    "markdown; html (one self-contained file with charts); junit (one test case per rule and "
    "destination).",
)
@click.option("--since", default=None, help="Only from this time: 7d, 12h, 2026-11-01, RFC 3339.")
@click.option("--until", default=None, help="Only before this time (same forms as --since).")
@click.option(
    "--verdict",
    "verdicts",
    multiple=True,
    type=click.Choice(["allow", "warn", "violation", "audit"]),
    help="Only this verdict (audit: recorded without a policy); repeatable. "
    "--verdict violation alone lists each violation individually.",
)
@click.option("--provider", "providers", multiple=True, metavar="ID", help="Only this provider.")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="GLOB",
    help="Only destinations matching this name or glob (* one label, ** several).",
)
@click.option("--rule", "rules", multiple=True, metavar="ID", help="Only this rule id or name.")
@click.option(
    "--process", "processes", multiple=True, metavar="GLOB", help="Only this process name (glob)."
)
@click.option("--machine", "machines", multiple=True, metavar="NAME", help="Only this machine.")
@click.option(
    "--new-since-last",
    is_flag=True,
    help="Only violations of a rule and destination that the last review (--mark) had not "
    "seen; the review mark then moves on (unless --peek).",
)
@click.option("--mark", default="default", show_default=True, help="The review's name.")
@click.option("--peek", is_flag=True, help="With --new-since-last: leave the mark where it is.")
@click.option(
    "--by",
    type=click.Choice(
        ["host", "provider", "rule", "country", "process", "day", "machine", "verdict"]
    ),
    default=None,
    help="One row per value of this key, with counts per verdict.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="At most this many rows in a listing (default: all; 5000 for table, markdown, html).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write to this file instead of standard output.",
)
def report(
    db: str | None,
    fmt: str,
    since: str | None,
    until: str | None,
    verdicts: tuple[str, ...],
    providers: tuple[str, ...],
    hosts: tuple[str, ...],
    rules: tuple[str, ...],
    processes: tuple[str, ...],
    machines: tuple[str, ...],
    new_since_last: bool,
    mark: str,
    peek: bool,
    by: str | None,
    limit: int | None,
    output: Path | None,
) -> None:
    """Who sent what where, when, and which rule it broke: reports from the store.

    Without --by, lists what was recorded (aggregated per destination, process, verdict and
    hour), or each violation with --verdict violation or --new-since-last.
    """
    from egresswatch.report.formats import renderer
    from egresswatch.report.interface import ReportFormat
    from egresswatch.report.query import Filters, ReportQuery, parse_time

    now = time.time()
    bounds: list[float | None] = []
    for name, value in (("--since", since), ("--until", until)):
        try:
            bounds.append(parse_time(value, now) if value else None)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=name) from None
    shown = {
        key: ", ".join(value) if isinstance(value, tuple) else str(value)
        for key, value in (
            ("since", since),
            ("until", until),
            ("verdict", verdicts),
            ("provider", providers),
            ("host", hosts),
            ("rule", rules),
            ("process", processes),
            ("machine", machines),
            ("new-since-last", mark if new_since_last else None),
            ("by", by),
        )
        if value
    }
    filters = Filters(
        since=bounds[0],
        until=bounds[1],
        verdicts=verdicts,
        providers=providers,
        hosts=hosts,
        rules=rules,
        processes=processes,
        machines=machines,
        new_since_last=new_since_last,
        mark=mark,
        shown=shown,
    )
    form = ReportFormat(fmt.lower())
    if limit is None and form in (ReportFormat.TABLE, ReportFormat.MARKDOWN, ReportFormat.HTML):
        limit = 5000
    engine = _open_existing(db)
    from sqlalchemy.exc import SQLAlchemyError

    from egresswatch.store import StoreError, describe

    try:
        built = ReportQuery(engine).build(
            filters,
            by=by,
            limit=limit,
            now=now,
            advance_mark=not peek,
            with_cases=form in (ReportFormat.JSON, ReportFormat.HTML, ReportFormat.JUNIT),
        )
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        msg = f"cannot read {describe(engine.url)}: {first}"
        raise StoreError(msg) from exc
    if output is not None:
        with open(output, "w", encoding="utf-8", newline="") as stream:
            renderer(form, color=False).render(built, stream)
        click.echo(f"egresswatch: wrote {output}", err=True)
        return
    color = sys.stdout.isatty() and form is ReportFormat.TABLE
    try:
        renderer(form, color=color).render(built, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()


@main.group()
def db() -> None:
    """Look after the store: its schema version, size and retention."""


@db.command("info")
@_db_option("Default: the agent's database (see run).")
def db_info(db: str | None) -> None:
    """Schema revision, row counts and size of the store (migrating an older one)."""
    from sqlalchemy import func, select

    from egresswatch.store.engine import current_revision, describe
    from egresswatch.store.models import DailyRollup, ObservationAggregate, ViolationRecord
    from egresswatch.store.retention import store_size

    engine = _open_existing(db)
    with engine.connect() as conn:
        click.echo(f"database: {describe(engine.url)}")
        click.echo(f"schema:   {current_revision(conn)}")
        for label, model in (
            ("observations", ObservationAggregate),
            ("daily", DailyRollup),
            ("violations", ViolationRecord),
        ):
            n = conn.execute(select(func.count()).select_from(model)).scalar_one()
            click.echo(f"{label + ':':13} {n:,} rows")
        click.echo(f"size:     {store_size(conn) / 1e6:.1f} MB")


@db.command("prune")
@_db_option("Default: the agent's database (see run).")
@_keep_option(None)
@_max_size_option(None)
def db_prune(db: str | None, keep: str | None, max_db_size: str | None) -> None:
    """Apply --keep and --max-db-size now."""
    from egresswatch.store.retention import prune

    seconds, size = _retention(keep, max_db_size)
    if seconds is None and size is None:
        msg = "give --keep and/or --max-db-size"
        raise click.UsageError(msg)
    engine = _open_existing(db)
    result = prune(engine, keep_seconds=seconds, max_bytes=size, now=time.time())
    click.echo(
        f"removed {result.observations:,} hourly rows, {result.daily:,} daily rows and "
        f"{result.violations:,} violations"
        + (f" older than {_day_text(result.before_day)}" if result.before_day else "")
        + f"; {result.size_before / 1e6:.1f} MB -> {result.size_after / 1e6:.1f} MB"
    )
