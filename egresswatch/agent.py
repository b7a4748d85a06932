"""The capture pump shared by ``run`` and ``ci``: frames in, observations out to a writer.

It reads the live capture in batches, feeds the sensor, expires idle flows when the wire is
quiet, and calls ``on_idle`` between batches (flushing the store, applying retention). When told
to stop it reads what is still queued in the capture socket (the last connections made: in a
CI job, the ones just before it ended), bounded so that a flood cannot keep it alive, and then
finishes the sensor's pending flows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from egresswatch.output import ObservationWriter
from probes.live import LiveCapture
from probes.observation import Observation
from probes.sensor import Sensor

DRAIN_SECONDS = 5.0
"""How long a stopping pump may spend reading frames already queued in the capture socket."""
BATCH_WAIT = 0.25
"""Seconds a read waits for frames before the pump looks at the clock and its stop flag."""


def observe(sensor: Sensor, batch: list[tuple[float, int, bytes]]) -> list[Observation]:
    """What the frames of ``batch`` complete."""
    out: list[Observation] = []
    for ts, linktype, frame in batch:
        out.extend(sensor.frame(ts, linktype, frame))
    return out


def feed(sensor: Sensor, writer: ObservationWriter, batch: list[tuple[float, int, bytes]]) -> None:
    """Every observation the frames of ``batch`` complete, to ``writer``."""
    for obs in observe(sensor, batch):
        writer.write(obs)


def drain(capture: LiveCapture) -> Iterator[list[tuple[float, int, bytes]]]:
    """The batches still queued in the capture socket when a stop was asked for (the last
    connections made), for at most :data:`DRAIN_SECONDS`, so a flood cannot keep it alive."""
    until = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < until:
        batch = capture.read_batch(0)
        if not batch:
            return
        yield batch


def pump(
    capture: LiveCapture,
    sensor: Sensor,
    writer: ObservationWriter,
    should_stop: Callable[[], bool],
    *,
    on_idle: Callable[[], None] | None = None,
    early: Callable[[list[tuple[float, int, bytes]]], None] | None = None,
) -> None:
    """Run until ``should_stop()``; then drain the socket and finish the sensor's flows.
    ``early`` sees each batch first (process attribution's look at new flows)."""
    while not should_stop():
        batch = capture.read_batch(BATCH_WAIT)
        if batch and early is not None:
            early(batch)
        feed(sensor, writer, batch)
        if not batch:
            for obs in sensor.expire(time.time()):
                writer.write(obs)
        if on_idle is not None:
            on_idle()
    for batch in drain(capture):
        feed(sensor, writer, batch)
    for obs in sensor.finish():
        writer.write(obs)
