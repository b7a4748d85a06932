"""The agent behind ``egresswatch run``: capture and sensing on a thread, the rest on asyncio.

::

    capture thread ────────────────> bounded queue ──> enrichment + policy -> sinks
    (LiveCapture -> Sensor)  observations (drops     (event loop: store, output, publishing)
                                       counted)

The capture thread reads the socket, looks new flows up for process attribution, and runs the
sensor, so what crosses the queue is observations: handshakes and DNS answers, not frames.
It never waits for the consumer. When the queue is full the observations are dropped and
counted by kind (``queue.dropped_tls``, ``queue.dropped_quic``, ``queue.dropped_dns``): under
overload the agent says exactly which handshakes it did not judge, rather than stall (which
would make the kernel drop frames instead, uncounted by handshake). Before it comes to that,
process attribution sheds its look-ups (:meth:`Agent.behind`). SIGHUP reloads the policy and
the geo data (a policy that does not load keeps the old one, and says why); SIGTERM and SIGINT
stop: the capture reads what is still queued in its socket, the sensor finishes its flows, the
consumer finishes, the store flushes.

The agent writes its status (counters, uptime, policy, geo data age) as JSON every few seconds
to a file beside the store; ``egresswatch status`` reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from egresswatch import allocator
from egresswatch.agent import DRAIN_SECONDS, drain, observe
from egresswatch.enrichment import ObservationEnricher
from egresswatch.errors import EgressWatchError
from egresswatch.output import ObservationWriter
from egresswatch.policy import Policy, load_policy
from geo.enrich import Enricher
from probes.live import LiveCapture
from probes.observation import Observation
from probes.sensor import Sensor

log = logging.getLogger("egresswatch.agent")

QUEUE_BATCHES = 512
"""Batches (the observations of one read of the capture) waiting for the consumer at most."""
QUEUE_OBSERVATIONS = 16_384
"""Observations waiting for the consumer at most, whatever the batches (each a few KB at most,
with its ClientHello's fields)."""
STATUS_SECONDS = 5.0
"""How often the status file is rewritten."""
READ_WAIT = 0.25


Batch = list[tuple[float, int, bytes]]
Observations = list[Observation]


@dataclass
class AgentConfig:
    """What the agent was started with."""

    policy_file: Path | None
    """The policy to (re)load; None audits."""
    geo_dir: Path
    """The geo data folder to (re)load."""
    status_path: Path | None
    """Where the status JSON goes; None writes none."""
    duration: float | None = None
    """Stop after this many seconds."""
    interfaces: tuple[str, ...] = ()
    """What is captured (for the status)."""
    db: str | None = None
    """The store, password hidden (for the status)."""
    extra_tasks: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = field(
        default_factory=list
    )
    """Coroutines to run beside the pipeline (e.g. publishing); the event they get is set after
    the store's last flush."""
    status_extra: dict[str, Callable[[], Any]] = field(default_factory=dict)
    """More entries for the status, each computed when it is written (e.g. ``fleet``)."""
    extra_counters: list[Callable[[], dict[str, int]]] = field(default_factory=list)
    """More counters for the status (process attribution's), read when it is written."""


class Agent:
    """Runs the pipeline until stopped; see the module docstring."""

    def __init__(
        self,
        capture: LiveCapture,
        writer: ObservationWriter,
        enrich: ObservationEnricher,
        config: AgentConfig,
        *,
        on_idle: Callable[[], None] | None = None,
        early: Callable[[Batch], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        queue_batches: int = QUEUE_BATCHES,
        queue_observations: int = QUEUE_OBSERVATIONS,
    ) -> None:
        self.capture = capture
        self.writer = writer
        self.enrich = enrich
        self.config = config
        self.sensor = Sensor()
        self.on_idle = on_idle
        self.early = early
        """Called on the capture thread with each batch (process attribution's first look)."""
        self.on_ready = on_ready
        """Called once the SIGTERM and SIGINT handlers are installed (the "capturing" line), so
        that a stop asked for after it flushes and exits 0 instead of dying of the signal."""
        self.started = time.time()
        self.counters: dict[str, int] = {
            "queue.batches": 0,
            "queue.dropped_batches": 0,
            "queue.dropped_observations": 0,
            "queue.dropped_tls": 0,
            "queue.dropped_quic": 0,
            "queue.dropped_dns": 0,
            "reloads": 0,
            "reload_failures": 0,
        }
        self.policy_note = _policy_note(config.policy_file, enrich.policy)
        self._queue: asyncio.Queue[Observations | None] = asyncio.Queue(maxsize=queue_batches)
        self._max_queued = queue_observations
        self._queued = 0
        self._stop_capture = threading.Event()

    def behind(self) -> bool:
        """Whether the queue is an eighth full (from any thread): optional work (process
        attribution) is shed then, before the queue must drop observations."""
        return (
            self._queued > self._max_queued // 8 or self._queue.qsize() > self._queue.maxsize // 8
        )

    # -- the capture thread --------------------------------------------------------------------

    def _capture(self, loop: asyncio.AbstractEventLoop) -> None:
        sensor = self.sensor
        deliver = self._deliver
        try:
            while not self._stop_capture.is_set():
                batch = self.capture.read_batch(READ_WAIT)
                if batch:
                    if self.early is not None:
                        self.early(batch)
                    found = observe(sensor, batch)
                else:
                    found = list(sensor.expire(time.time()))
                if found:
                    loop.call_soon_threadsafe(deliver, found)
            # What passed the filter before the stop: the last connections made.
            for batch in drain(self.capture):
                loop.call_soon_threadsafe(deliver, observe(sensor, batch))
            loop.call_soon_threadsafe(deliver, list(sensor.finish()))
        except Exception:
            log.exception("capture failed")
        finally:
            loop.call_soon_threadsafe(deliver, None)

    def _deliver(self, batch: Observations | None) -> None:
        if batch is None:
            # The end marker must arrive even into a full queue.
            while self._queue.full():
                dropped = self._queue.get_nowait()
                self._queued -= len(dropped or ())
                self._count_drop(dropped)
            self._queue.put_nowait(None)
            return
        if not batch:
            return
        if self._queued + len(batch) > self._max_queued:
            self._count_drop(batch)
            return
        try:
            self._queue.put_nowait(batch)
        except asyncio.QueueFull:
            self._count_drop(batch)
            return
        self._queued += len(batch)
        self.counters["queue.batches"] += 1

    def _count_drop(self, batch: Observations | None) -> None:
        if not batch:
            return
        counters = self.counters
        counters["queue.dropped_batches"] += 1
        counters["queue.dropped_observations"] += len(batch)
        for obs in batch:
            counters[f"queue.dropped_{obs.kind}"] += 1
        log.debug("queue full: dropped %d observations", len(batch))

    # -- the event loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Until SIGTERM/SIGINT (or the configured duration); then drain and flush."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        if self.on_ready is not None:
            self.on_ready()
        thread = threading.Thread(
            target=self._capture, args=(loop,), name="egresswatch-capture", daemon=True
        )
        thread.start()
        status = asyncio.create_task(self._status_loop(stop))
        # The extra tasks (publishing) stop after the last flush, so that they can still send
        # what it wrote.
        last_flushed = asyncio.Event()
        tasks = [asyncio.create_task(make(last_flushed)) for make in self.config.extra_tasks]
        if self.config.duration is not None:
            loop.call_later(self.config.duration, stop.set)
        stopper = asyncio.create_task(self._stop_when(stop))
        try:
            await self._consume()
        finally:
            stop.set()
            self._stop_capture.set()
            await stopper
            with contextlib.suppress(asyncio.CancelledError):
                await status
            try:
                self.writer.close()
            finally:
                last_flushed.set()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self.write_status(running=False)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            thread.join(timeout=DRAIN_SECONDS + 5)

    async def _stop_when(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stop_capture.set()

    async def _consume(self) -> None:
        write = self.writer.write
        while True:
            try:
                batch = await asyncio.wait_for(self._queue.get(), timeout=READ_WAIT)
            except TimeoutError:
                if self.on_idle is not None:
                    self.on_idle()
                continue
            if batch is None:
                return
            self._queued -= len(batch)
            for obs in batch:
                write(obs)
            if self._queue.empty() and self.on_idle is not None:
                self.on_idle()

    async def _status_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.write_status(running=True)
            # Free pages back to the system, so RssAnon shows what is in use (a fraction of a
            # millisecond; see egresswatch/allocator.py).
            allocator.trim()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=STATUS_SECONDS)

    # -- reload and status ---------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: load the policy and geo data again; a bad policy keeps the old one."""
        cfg = self.config
        try:
            policy = load_policy(cfg.policy_file) if cfg.policy_file is not None else None
        except EgressWatchError as exc:
            self.counters["reload_failures"] += 1
            log.error("reload: keeping the policy in force: %s", exc)
            self.policy_note = f"{self.policy_note} (reload failed: {exc})"
            return
        self.enrich.policy = policy
        self.enrich.enricher = Enricher.from_geo_dir(cfg.geo_dir)
        self.counters["reloads"] += 1
        self.policy_note = _policy_note(cfg.policy_file, policy)
        log.info("reloaded: %s; geo data from %s", self.policy_note, cfg.geo_dir)

    def status(self, *, running: bool) -> dict[str, Any]:
        """What ``egresswatch status`` shows."""
        counters = {
            **self.sensor_stats(),
            **{f"capture.{k}": v for k, v in self.capture.stats().items()},
            **self.counters,
            **{k: v for counters in self.config.extra_counters for k, v in counters().items()},
            **_memory(),
        }
        return {
            "pid": os.getpid(),
            "running": running,
            "started": self.started,
            "updated": time.time(),
            "uptime": time.time() - self.started,
            "interfaces": list(self.config.interfaces) or ["all"],
            "db": self.config.db,
            "policy": self.policy_note,
            "geo_dir": str(self.config.geo_dir),
            "geo_data_age": _geo_age(self.config.geo_dir),
            "violations": self.enrich.violations,
            "counters": counters,
            **{name: get() for name, get in self.config.status_extra.items()},
        }

    def sensor_stats(self) -> dict[str, int]:
        """The sensor's counters, read from the event loop while the capture thread counts."""
        for _ in range(10):
            try:
                return self.sensor.stats()
            except RuntimeError:  # a table grew while it was read: read it again
                continue
        return {}

    def write_status(self, *, running: bool) -> None:
        """Replace the status file atomically (readers never see half of one)."""
        path = self.config.status_path
        if path is None:
            return
        try:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(self.status(running=running), sort_keys=True))
            tmp.replace(path)
        except OSError as exc:
            log.warning("cannot write the status file %s: %s", path, exc)


def _memory() -> dict[str, int]:
    """Where the agent's memory goes, for the status: ``memory.sqlite`` (bytes SQLite holds:
    page caches, bounded per connection) and ``memory.python_blocks`` (objects allocated)."""
    import sys

    from egresswatch.store.engine import sqlite_memory

    out = {"memory.python_blocks": sys.getallocatedblocks()}
    used = sqlite_memory()
    if used is not None:
        out["memory.sqlite"] = used
    return out


def _policy_note(path: Path | None, policy: Policy | None) -> str:
    if path is None or policy is None:
        return "none (audit)"
    return f"{path} ({len(policy.rules)} rules, scope {policy.scope})"


def _geo_age(folder: Path) -> float | None:
    """Seconds since the newest file of the geo data folder changed; None when it has none."""
    try:
        times = [p.stat().st_mtime for p in folder.iterdir() if p.is_file()]
    except OSError:
        return None
    return time.time() - max(times) if times else None
