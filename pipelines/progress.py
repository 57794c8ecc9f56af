"""One progress line per phase: a bar when a terminal is attached, plain lines otherwise.

``Progress("train", total=1500, unit="step")`` then ``update(done, loss=0.81, ...)`` and
``close()``. On a terminal (stderr is a TTY) it is a tqdm bar whose postfix carries the values;
otherwise (logs, CI, pipes) a line every ``every_s`` seconds and one at the end::

    train: step 150/1500 (10%), loss 0.8123, 22.4 samples/s, data wait 4%, 0:09:12 left

``TrainProgressRelay`` carries rank 0's training values to the driver's line: a small Ray actor
the worker posts to and a driver thread polls (in local mode, ``train.num_workers: 0``, the
worker updates the line directly).
"""

from __future__ import annotations

import datetime
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO

_EVERY_S = 30.0


def format_seconds(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf") or seconds < 0:  # NaN, unknown
        return "?"
    return str(datetime.timedelta(seconds=round(seconds)))


def format_fields(fields: Mapping[str, Any]) -> str:
    """``{"loss": 0.81234, "samples/s": 22.41}`` → ``"loss 0.8123, 22.4 samples/s"``."""
    parts = []
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, float):
            if name.endswith("/s"):
                parts.append(f"{value:.1f} {name}")
                continue
            if name.endswith("%"):
                parts.append(f"{name[:-1].strip()} {value:.0f}%")
                continue
            text = f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
        else:
            text = str(value)
        parts.append(f"{name} {text}")
    return ", ".join(parts)


class Progress:
    """The progress of one phase (``phase``: its name in the line). ``total`` None: no ETA."""

    def __init__(self, phase: str, total: int | None, *, unit: str = "step", initial: int = 0,
                 stream: TextIO | None = None, every_s: float = _EVERY_S, bar: bool | None = None):
        self.phase, self.total, self.unit = phase, total, unit
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.done = self.initial = initial
        self.started = time.perf_counter()
        self._last_line = self.started  # the first line after every_s: a short phase prints one line
        self._fields: dict[str, Any] = {}
        self._closed = False
        use_bar = self.stream.isatty() if bar is None else bar
        self._bar = None
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=phase, unit=unit, file=self.stream,
                             dynamic_ncols=True, leave=True, disable=False)  # whatever TQDM_DISABLE says

    def update(self, done: int, **fields: Any) -> None:
        """``done`` units are finished (absolute, not an increment); ``fields`` go into the line."""
        self._fields = fields
        if self._bar is not None:
            self._bar.update(done - self.done)
            self._bar.set_postfix_str(format_fields(fields), refresh=True)
            self.done = done
            return
        self.done = done
        now = time.perf_counter()
        finished = self.total is not None and done >= self.total  # close() prints the last line
        if now - self._last_line >= self.every_s and not finished:
            self._last_line = now
            self._print(self.line())

    def line(self) -> str:
        count = f"{self.unit} {self.done}" + (f"/{self.total} ({100 * self.done / self.total:.0f}%)" if self.total else "")
        parts = [count]
        if self._fields:
            parts.append(format_fields(self._fields))
        if self.total and self.done < self.total:
            parts.append(f"{format_seconds(self.eta())} left")
        return f"{self.phase}: " + ", ".join(parts)

    def eta(self) -> float:
        elapsed = time.perf_counter() - self.started
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        return (self.total - self.done) / rate if rate > 0 and self.total else float("inf")

    def close(self, summary: str | None = None) -> None:
        """End the phase: the bar is closed, and ``summary`` (default: the last line with the
        elapsed time) is printed once."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elapsed = format_seconds(time.perf_counter() - self.started)
        self._print(summary if summary is not None else f"{self.line()} (done in {elapsed})")

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def phase_line(phase: str, text: str, *, stream: TextIO | None = None) -> None:
    """A phase that needs no bar (it is short, or reports only its result): one line."""
    print(f"{phase}: {text}", file=stream or sys.stderr, flush=True)


class _Board:
    """The Ray actor between rank 0 and the driver: holds the latest values posted."""

    def __init__(self) -> None:
        self._latest: dict[str, Any] | None = None

    def post(self, values: dict[str, Any]) -> None:
        self._latest = values

    def latest(self) -> dict[str, Any] | None:
        return self._latest


_LOCAL: dict[str, Progress] = {}


class TrainProgressRelay:
    """The driver's side: a ``Progress`` line fed by rank 0's posts (``post_progress``).

    ``handle`` goes into the worker's loop config: a Ray actor handle, or a key of this
    process's table in local mode (the worker then runs in this very process)."""

    def __init__(self, progress: Progress, *, use_ray: bool, poll_s: float = 1.0):
        self.progress = progress
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if use_ray:
            import ray

            self.handle: Any = ray.remote(num_cpus=0)(_Board).remote()
            self._thread = threading.Thread(target=self._poll, args=(poll_s,), daemon=True)
            self._thread.start()
        else:
            self.handle = f"local-{id(self)}"
            _LOCAL[self.handle] = progress

    def _poll(self, poll_s: float) -> None:
        import ray

        seen = None
        while not self._stop.wait(poll_s):
            try:
                values = ray.get(self.handle.latest.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - the progress line must never fail training
                continue
            if values is not None and values.get("step") != seen:
                seen = values.get("step")
                _show(self.progress, values)

    def close(self, summary: str | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            import ray

            ray.kill(self.handle)
        else:
            _LOCAL.pop(self.handle, None)
        self.progress.close(summary)


def post_progress(handle: Any, values: Mapping[str, Any]) -> None:
    """Rank 0, at each log step: send the step's values to the driver's line (no waiting)."""
    if handle is None:
        return
    if isinstance(handle, str):
        progress = _LOCAL.get(handle)
        if progress is not None:
            _show(progress, values)
        return
    handle.post.remote(dict(values))


def _show(progress: Progress, values: Mapping[str, Any]) -> None:
    progress.update(
        int(values.get("step", 0)),
        loss=values.get("loss/total"),
        **{"samples/s": values.get("samples_per_s"), "data wait %": _percent(values.get("data_wait_fraction"))},
    )


def _percent(fraction: Any) -> float | None:
    return None if fraction is None else 100.0 * float(fraction)
