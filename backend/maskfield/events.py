"""Progress and messages, for a person in a terminal or for the Blender add-on.

With ``--events jsonl`` every message is one JSON object on its own line of stdout:

    {"event": "progress", "stage": "fit", "done": 120, "total": 3000, ...extra}
    {"event": "log", "level": "info", "message": "..."}
    {"event": "result", "stage": "fit", ...payload}
    {"event": "error", "message": "what is wrong and what to do", "kind": "..."}

Without it, progress is a tqdm bar on stderr and logs are plain lines on stderr, so that
stdout stays clean for whatever a command prints as its answer.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any, Iterable, Iterator, TextIO


class MaskFieldError(Exception):
    """An error caused by the user's input or set-up: the message says what to do."""

    def __init__(self, message: str, kind: str = "input"):
        super().__init__(message)
        self.kind = kind


def write_crash_log(exc: BaseException, folder, argv: list[str] | None = None) -> str:
    """Write the full traceback of ``exc`` to FOLDER/logs/ (or the temp folder when FOLDER is
    missing or not writable); returns the log's path, for the one-line message that names it."""
    import os
    import tempfile
    import traceback
    from pathlib import Path

    text = (f"maskfield {' '.join(argv if argv is not None else sys.argv[1:])}\n"
            f"time: {time.strftime('%Y-%m-%dT%H:%M:%S')}  python: {sys.version.split()[0]}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    places = [Path(folder) / "logs"] if folder and Path(folder).is_dir() else []
    places.append(Path(tempfile.gettempdir()) / "maskfield-logs")
    for place in places:
        try:
            place.mkdir(parents=True, exist_ok=True)
            path = place / name
            path.write_text(text, encoding="utf-8")
            return str(path)
        except OSError:
            continue
    return "(no log could be written)"


class Cancelled(Exception):
    """The run was cancelled (SIGINT / SIGTERM, or a 'cancel' from the add-on)."""


class Reporter:
    """Sends progress, logs and results either as JSON lines or as tqdm bars."""

    def __init__(self, mode: str = "tqdm", stream: TextIO | None = None, quiet: bool = False):
        if mode not in ("tqdm", "jsonl", "none"):
            raise ValueError(f"unknown events mode {mode!r}; use 'tqdm', 'jsonl' or 'none'")
        self.mode = mode
        self.quiet = quiet
        self._stream = stream
        self._lock = threading.Lock()
        self._cancel = threading.Event()

    _reader_gone = False

    def _reader_gone_now(self) -> None:
        """Stdout is closed: stop like a cancel (the stage saves, the command resumes later), and
        send what is still printed to nowhere instead of failing on every write."""
        import os

        self._reader_gone = True
        self._cancel.set()
        if self._stream is None:
            try:
                sys.stdout = open(os.devnull, "w")
            except OSError:
                pass

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    # --- cancellation -------------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled by the user")

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM set the cancel flag; loops stop at their next check and save."""

        def handler(signum, frame):  # noqa: ARG001
            if self._cancel.is_set():  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self._cancel.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)
            signal.signal(signal.SIGTERM, handler)

    # --- messages -------------------------------------------------------------------
    def emit(self, event: str, **fields: Any) -> None:
        if self.mode != "jsonl":
            return
        record = {"event": event, **fields}
        line = json.dumps(record, default=_json_default)
        with self._lock:
            if self._reader_gone:
                return
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # nobody reads us any more (the add-on or a pipe went away)
                self._reader_gone_now()

    def log(self, message: str, level: str = "info") -> None:
        if self.mode == "jsonl":
            self.emit("log", level=level, message=message)
        elif not self.quiet or level in ("warning", "error"):
            print(message if level == "info" else f"{level}: {message}", file=sys.stderr, flush=True)

    def result(self, stage: str, **payload: Any) -> None:
        self.emit("result", stage=stage, **payload)

    def error(self, message: str, kind: str = "input") -> None:
        if self.mode == "jsonl":
            self.emit("error", message=message, kind=kind)
        else:
            print(f"error: {message}", file=sys.stderr, flush=True)

    def progress(self, stage: str, total: int, desc: str | None = None, initial: int = 0) -> "Progress":
        return Progress(self, stage, total, desc or stage, initial)

    def track(self, items: Iterable, stage: str, total: int | None = None, desc: str | None = None) -> Iterator:
        items = list(items) if total is None else items
        total = len(items) if total is None else total  # type: ignore[arg-type]
        with self.progress(stage, total, desc) as bar:
            for item in items:
                self.check_cancel()
                yield item
                bar.update(1)


class Progress:
    """One stage's progress; JSON events are rate-limited to about 10 a second."""

    def __init__(self, reporter: Reporter, stage: str, total: int, desc: str, initial: int = 0):
        self.reporter = reporter
        self.stage = stage
        self.total = int(total)
        self.done = int(initial)
        self._bar = None
        self._last_emit = 0.0
        self._extra: dict[str, Any] = {}
        if reporter.mode == "tqdm" and not reporter.quiet:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=desc, file=sys.stderr, dynamic_ncols=True)
        self._send(force=True)

    def _send(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_emit >= 0.1:
            self._last_emit = now
            self.reporter.emit("progress", stage=self.stage, done=self.done, total=self.total, **self._extra)

    def update(self, n: int = 1, **extra: Any) -> None:
        self.done += n
        if extra:
            self._extra.update(extra)
            if self._bar is not None:
                self._bar.set_postfix({k: _short(v) for k, v in self._extra.items()}, refresh=False)
        if self._bar is not None:
            self._bar.update(n)
        self._send(force=self.done >= self.total)

    def close(self) -> None:
        self._send(force=True)
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _short(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value


def _json_default(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(value)
