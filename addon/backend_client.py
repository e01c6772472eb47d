# SPDX-License-Identifier: GPL-3.0-or-later
"""The add-on's only link to the MaskField backend: a subprocess and its JSON-lines events.

The backend runs in its own Python (never imported here). A :class:`Job` starts
``python -m maskfield.cli <command> ... --events jsonl``, reads stdout and stderr in two
reader threads into a queue, and :func:`tick` (a ``bpy.app.timers`` callback) drains the
queue on Blender's main thread, so the UI never blocks. Events (docs/contracts.md):

    {"event": "progress", "stage": ..., "done": n, "total": m}
    {"event": "log", "level": ..., "message": ...}
    {"event": "result", "stage": ..., ...}
    {"event": "error", "message": ..., "kind": ...}

Cancel sends SIGTERM (the backend saves and stops), then SIGKILL after a grace period.
Every process is killed when Blender exits (atexit) or loads another file (load_pre).
Without Blender's event loop (background scripts, tests) call :func:`pump`.
"""
from __future__ import annotations

import atexit
import collections
import json
import os
import queue
import signal
import subprocess
import threading
import time
from typing import Any, Callable, Optional, Sequence

BACKEND_MODULE = "maskfield.cli"
KILL_GRACE_S = 5.0
TICK_S = 0.1


class BackendError(RuntimeError):
    """A problem starting or talking to the backend; the message says what to do."""


def backend_command(python: str, *args: str) -> list[str]:
    return [python, "-m", BACKEND_MODULE, *args]


def child_env(offline: bool = False, extra: dict | None = None) -> dict:
    """Environment for the backend: UTF-8, unbuffered, without Blender's Python paths."""
    env = dict(os.environ)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__"):
        env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONUTF8"] = "1"
    # the backend watches this process and stops (saving, resumable) when Blender is gone,
    # even when Blender could not stop it (a crash, a kill)
    env["MASKFIELD_PARENT_PID"] = str(os.getpid())
    if offline:
        env["MASKFIELD_OFFLINE"] = "1"
        env["HF_HUB_OFFLINE"] = "1"
    if extra:
        env.update(extra)
    return env


class _Outcome:
    """What a Job and a server Request share: result events and timing."""

    results: list[dict]
    started_at: float
    ended_at: float

    @property
    def elapsed(self) -> float:
        if not self.started_at:
            return 0.0
        return (self.ended_at or time.monotonic()) - self.started_at

    def result(self, stage: str | None = None) -> dict | None:
        """The last result event (of ``stage`` if given)."""
        for res in reversed(self.results):
            if stage is None or res.get("stage") == stage:
                return res
        return None


class Job(_Outcome):
    """One backend process (or a chain of processes run one after another).

    ``steps`` is a list of argv lists; each starts when the previous one exited with 0.
    States: pending, running, finished, failed, cancelled.
    """

    def __init__(self, steps: Sequence[Sequence[str]], *, kind: str = "job", label: str = "",
                 step_labels: Sequence[str] | None = None, env: dict | None = None,
                 cwd: str | None = None, json_events: bool = True, keep_stdin: bool = False,
                 on_done: Optional[Callable[["Job"], None]] = None,
                 on_event: Optional[Callable[["Job", dict], None]] = None):
        if not steps:
            raise ValueError("a job needs at least one command")
        self.steps = [list(map(str, s)) for s in steps]
        self.step_labels = list(step_labels or [])
        self.kind = kind
        self.label = label or kind
        self.env = env
        self.cwd = cwd
        self.json_events = json_events
        self.keep_stdin = keep_stdin
        self.on_done = on_done
        self.on_event = on_event
        self.state = "pending"
        self.idle = False  # a kept-alive process waiting for requests (not shown as busy)
        self.step_index = 0
        self.stage = ""
        self.done = 0
        self.total = 0
        self.message = ""
        self.error: str | None = None
        self.error_kind: str | None = None
        self.results: list[dict] = []
        self.logs: collections.deque[str] = collections.deque(maxlen=400)
        # what the backend warned of (a corrected path, a recentred capture, views left out for
        # memory): kept apart from the log so that the panel can show them when the job ends
        self.warnings: list[str] = []
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.stdout_text: list[str] = []
        self.returncode: int | None = None
        self.started_at = 0.0
        self.ended_at = 0.0
        self.proc: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._cancel_requested = False
        self._kill_at: float | None = None
        self._done_called = False
        self._stdin_lock = threading.Lock()

    # -- state ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.state in ("pending", "running")

    @property
    def fraction(self) -> float:
        if self.total > 0:
            f = self.done / self.total
        else:
            f = 0.0
        if len(self.steps) > 1:
            f = (self.step_index + min(max(f, 0.0), 1.0)) / len(self.steps)
        return min(max(f, 0.0), 1.0)

    @property
    def stage_text(self) -> str:
        stage = self.stage or "starting"
        if len(self.steps) > 1:
            stage = f"{self.step_index + 1}/{len(self.steps)} {stage}"
        if self.total > 0:
            return f"{stage} {self.done}/{self.total}"
        return stage

    # -- process -------------------------------------------------------------------------
    def start(self) -> "Job":
        self.started_at = time.monotonic()
        self.state = "running"
        self._launch(self.steps[0])
        return self

    def _launch(self, argv: list[str]) -> None:
        if self.step_index < len(self.step_labels):
            self.stage = self.step_labels[self.step_index]
            self.done = self.total = 0
        exe = argv[0]
        if os.path.isabs(exe) and not os.path.exists(exe):
            raise BackendError(f"The backend Python '{exe}' does not exist. Set it in Preferences > "
                               "Add-ons > MaskField, or press 'Set up backend'.")
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | getattr(
                subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own process group: cancel reaches its children
        try:
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=subprocess.PIPE if self.keep_stdin else subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, **kwargs)
        except (OSError, ValueError) as exc:
            raise BackendError(f"Cannot start the backend ('{exe}'): {exc}. Check the backend Python in "
                               "Preferences > Add-ons > MaskField.") from exc
        proc = self.proc
        self._readers = [
            threading.Thread(target=self._reader, args=(proc.stdout, "out"), daemon=True),
            threading.Thread(target=self._reader, args=(proc.stderr, "err"), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _reader(self, stream, tag: str) -> None:
        try:
            for raw in iter(stream.readline, b""):
                self._queue.put((tag, raw.decode("utf-8", "replace").rstrip("\r\n")))
        except (OSError, ValueError):
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    def send(self, payload: dict) -> None:
        """Write one JSON line to the process's stdin (for ``maskfield serve``)."""
        if self.proc is None or self.proc.stdin is None or self.proc.poll() is not None:
            raise BackendError("the backend process is not running")
        line = (json.dumps(payload) + "\n").encode("utf-8")
        with self._stdin_lock:
            try:
                self.proc.stdin.write(line)
                self.proc.stdin.flush()
            except (OSError, ValueError) as exc:
                raise BackendError(f"the backend process stopped listening: {exc}") from exc

    # -- events --------------------------------------------------------------------------
    def _handle_line(self, tag: str, line: str) -> None:
        if tag == "err":
            if line.strip():
                self.stderr_tail.append(line)
                self.logs.append(line)
            return
        self.stdout_text.append(line)
        event = None
        if self.json_events and line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
        if not isinstance(event, dict) or "event" not in event:
            if line.strip():
                self.logs.append(line)
                if not self.json_events:
                    self.message = line.strip()[:200]
            return
        self._handle_event(event)

    def _handle_event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "progress":
            self.stage = str(event.get("stage", self.stage))
            try:
                self.done = int(event.get("done", 0))
                self.total = int(event.get("total", 0))
            except (TypeError, ValueError):
                pass
        elif kind == "log":
            msg = str(event.get("message", ""))
            level = str(event.get("level", "info"))
            self.logs.append(msg if level == "info" else f"{level}: {msg}")
            self.message = msg[:200]
            if level == "warning" and msg not in self.warnings and len(self.warnings) < 20:
                self.warnings.append(msg)
        elif kind == "result":
            self.results.append(event)
        elif kind == "cancelled":
            self.message = str(event.get("message") or "cancelled")
            self.logs.append(self.message)
        elif kind == "error":
            self.error = str(event.get("message") or "the backend reported an error")
            self.error_kind = str(event.get("kind") or "")
            self.logs.append(f"error: {self.error}")
        if self.on_event is not None:
            try:
                self.on_event(self, event)
            except Exception as exc:  # never let a UI callback kill the poller
                self.logs.append(f"add-on error in event handler: {exc}")

    def poll(self) -> bool:
        """Handle queued output; returns True while the job is still running."""
        while True:
            try:
                tag, line = self._queue.get_nowait()
            except queue.Empty:
                break
            self._handle_line(tag, line)
        if self.state not in ("pending", "running"):
            return False
        proc = self.proc
        if proc is None:
            return True
        if self._kill_at is not None and time.monotonic() >= self._kill_at and proc.poll() is None:
            self._signal(kill=True)
            self._kill_at = None
        rc = proc.poll()
        if rc is None or any(t.is_alive() for t in self._readers) or not self._queue.empty():
            return True
        # drained and exited
        while not self._queue.empty():
            tag, line = self._queue.get_nowait()
            self._handle_line(tag, line)
        self.returncode = rc
        if rc == 0 and not self._cancel_requested and self.step_index + 1 < len(self.steps) and not self.error:
            self.step_index += 1
            try:
                self._launch(self.steps[self.step_index])
            except BackendError as exc:
                self._finish("failed", str(exc))
            return self.running
        if self._cancel_requested:
            self._finish("cancelled")
        elif rc != 0 or self.error:
            self._finish("failed", self.error or self._explain_exit(rc))
        else:
            self._finish("finished")
        return False

    def _explain_exit(self, rc: int) -> str:
        tail = [ln for ln in self.stderr_tail if ln.strip()]
        text = "\n".join(tail[-6:])
        if "No module named" in text and "maskfield" in text:
            return (f"The Python '{self.steps[self.step_index][0]}' has no MaskField backend installed "
                    "(No module named maskfield). Press 'Set up backend' in Preferences > Add-ons > "
                    "MaskField, or choose the Python where maskfield is installed.")
        missing = _missing_module(text)
        if missing:
            return (f"The backend Python '{self.steps[self.step_index][0]}' lacks '{missing}', which MaskField "
                    "needs. Press 'Set up backend' in Preferences > Add-ons > MaskField (it installs everything), "
                    "or choose a Python where the backend and its requirements are installed.")
        where = f" during '{self.stage}'" if self.stage else ""
        if rc is not None and rc < 0:
            how = f"was stopped by signal {-rc}"
        else:
            how = f"stopped with exit code {rc}"
        msg = f"The MaskField backend {how}{where}."
        if text:
            msg += " Last output:\n" + text
        return msg

    def _finish(self, state: str, error: str | None = None) -> None:
        self.state = state
        if error:
            self.error = error
        self.ended_at = time.monotonic()
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.on_done is not None and not self._done_called:
            self._done_called = True
            try:
                self.on_done(self)
            except Exception as exc:  # report, never raise into the timer
                import traceback

                traceback.print_exc()
                self.state = "failed"
                self.error = f"the add-on failed to use the backend's result: {exc}"

    # -- stopping ------------------------------------------------------------------------
    def _signal(self, kill: bool) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            if os.name == "nt":
                proc.kill() if kill else proc.terminate()
            else:
                os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except (ProcessLookupError, PermissionError, OSError):
            try:
                proc.kill() if kill else proc.terminate()
            except OSError:
                pass

    def cancel(self, grace: float = KILL_GRACE_S) -> None:
        """Ask the process to stop (SIGTERM); kill it if it is still there after ``grace`` s."""
        if not self.running:
            return
        self._cancel_requested = True
        self.message = "cancelling..."
        if self.proc is None:
            self._finish("cancelled")
            return
        self._signal(kill=False)
        self._kill_at = time.monotonic() + grace

    def kill(self, wait: float = 0.5) -> None:
        """Stop now (used at exit): SIGTERM, a short wait, then SIGKILL."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self._cancel_requested = True
        self._signal(kill=False)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self._signal(kill=True)
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass


def _missing_module(text: str) -> str | None:
    """The module named by a 'No module named X' / "cannot import 'X'" in the backend's output."""
    import re

    found = re.findall(r"No module named '?([\w.]+)'?|cannot import '([\w.]+)'|lacks '([\w.]+)'", text)
    for groups in reversed(found):
        for name in groups:
            if name:
                return name
    return None


# ----------------------------------------------------------------------------------------
# the job list, the timer and Blender's exit/load hooks

_jobs: list[Job] = []
_listeners: list[Callable[[], None]] = []
_timer_registered = False


def jobs() -> list[Job]:
    return list(_jobs)


def active_job(kind: str | None = None) -> Job | None:
    """The newest running job (of ``kind``) that is working, not idly waiting."""
    for job in reversed(_jobs):
        if job.running and not job.idle and (kind is None or job.kind == kind):
            return job
    return None


def add_listener(fn: Callable[[], None]) -> None:
    """Called after every tick that changed something (e.g. to redraw the UI)."""
    if fn not in _listeners:
        _listeners.append(fn)


def remove_listener(fn: Callable[[], None]) -> None:
    if fn in _listeners:
        _listeners.remove(fn)


def start(job: Job) -> Job:
    """Start ``job`` and poll it from a Blender timer. Raises BackendError if it cannot start."""
    job.start()
    _jobs.append(job)
    _ensure_timer()
    return job


def _ensure_timer() -> None:
    global _timer_registered
    try:
        import bpy
    except ImportError:  # pragma: no cover - outside Blender
        return
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=TICK_S, persistent=True)
    _timer_registered = True


_last_view: tuple = ()


def tick() -> float | None:
    """Timer callback: poll every job; unregisters itself when nothing runs."""
    global _last_view
    for job in list(_jobs):
        still = job.poll()
        if not still and job in _jobs:
            _jobs.remove(job)
            _finished.append(job)
            del _finished[:-20]
    view = tuple((id(j), j.state, j.idle, j.stage, j.done, j.total, j.message) for j in _jobs)
    if view != _last_view:  # tell the UI only when something it shows changed
        _last_view = view
        for fn in list(_listeners):
            try:
                fn()
            except Exception:
                pass
    return TICK_S if _jobs else None


_finished: list[Job] = []


def last_finished(kind: str | None = None) -> Job | None:
    for job in reversed(_finished):
        if kind is None or job.kind == kind:
            return job
    return None


def pump(timeout: float = 60.0, until: Callable[[], bool] | None = None) -> bool:
    """Run the poller without Blender's event loop (background mode, tests).

    Returns True when no job is left working (an idle server may stay) or ``until()`` became
    true before ``timeout``.
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        tick()
        if until is not None and until():
            return True
        if until is None and not any(not job.idle for job in _jobs):
            return True
        time.sleep(0.02)
    return False


# ----------------------------------------------------------------------------------------
# a kept-alive `maskfield serve RUN` process


class Request(_Outcome):
    """One segmentation request to the server; ``on_done(request)`` is called once at the end."""

    _next_id = 0

    def __init__(self, payload: dict, on_done: Optional[Callable[["Request"], None]] = None):
        Request._next_id += 1
        self.id = f"r{Request._next_id}"
        self.payload = dict(payload, id=self.id)
        self.on_done = on_done
        self.state = "pending"
        self.error: str | None = None
        self.results: list[dict] = []
        self.started_at = time.monotonic()
        self.ended_at = 0.0

    @property
    def running(self) -> bool:
        return self.state in ("pending", "running")

    def _end(self, state: str, error: str | None = None) -> None:
        if not self.running:
            return
        self.state = state
        self.error = error
        self.ended_at = time.monotonic()
        if self.on_done is not None:
            try:
                self.on_done(self)
            except Exception as exc:  # pragma: no cover - reported, never raised into the timer
                import traceback

                traceback.print_exc()
                self.state = "failed"
                self.error = f"the add-on failed to use the backend's result: {exc}"


class ServeSession:
    """``maskfield serve RUN``: the run and the text encoder stay loaded between requests.

    The server says ``ready`` once loaded, then answers each JSON request line with events
    that end with a ``result`` (or an ``error``) event carrying the request's id.
    """

    def __init__(self, argv: Sequence[str], key: Any, env: dict | None = None, label: str = "Segmenting"):
        self.key = key
        self.ready = False
        self.queue: list[Request] = []
        self.current: Request | None = None
        self.job = Job([argv], kind="serve", label=label, keep_stdin=True, env=env,
                       on_event=self._on_event, on_done=self._on_exit)
        self.job.idle = True

    @property
    def alive(self) -> bool:
        return self.job.running

    def start(self) -> "ServeSession":
        start(self.job)
        return self

    def submit(self, request: Request) -> Request:
        self.queue.append(request)
        self.job.idle = False
        self._next()
        return request

    def _next(self) -> None:
        if not self.ready or self.current is not None or not self.queue or not self.job.running:
            return
        self.current = self.queue.pop(0)
        self.current.state = "running"
        self.job.stage, self.job.done, self.job.total = "segment", 0, 0
        self.job.message = ""
        try:
            self.job.send(self.current.payload)
        except BackendError as exc:
            self._finish_current("failed", str(exc))

    def _finish_current(self, state: str, error: str | None = None) -> None:
        req, self.current = self.current, None
        if req is not None:
            req._end(state, error)
        self.job.idle = not self.queue
        self._next()

    def _on_event(self, job: Job, event: dict) -> None:
        kind = event.get("event")
        if kind == "ready":
            self.ready = True
            job.message = "backend ready"
            self._next()
        elif kind == "result" and self.current is not None:
            if event.get("id") in (None, self.current.id):
                self.current.results.append(event)
                self._finish_current("finished")
        elif kind == "error" and self.ready:
            # an answer to a request; the server itself goes on
            message = str(event.get("message") or "the backend reported an error")
            job.error = None
            if self.current is not None:
                self._finish_current("failed", message)

    def _on_exit(self, job: Job) -> None:
        global _server
        state = "cancelled" if job.state == "cancelled" else "failed"
        error = job.error or "the backend process stopped"
        pending = ([self.current] if self.current is not None else []) + self.queue
        self.current, self.queue = None, []
        for req in pending:
            req._end(state, error)
        if _server is self:
            _server = None

    def quit(self) -> None:
        if self.job.running:
            try:
                self.job.send({"cmd": "quit"})
            except BackendError:
                pass
            self.job.cancel(grace=2.0)


_server: ServeSession | None = None


def server() -> ServeSession | None:
    return _server if _server is not None and _server.alive else None


def serve_request(argv: Sequence[str], key: Any, payload: dict, env: dict | None = None,
                  on_done: Optional[Callable[[Request], None]] = None) -> Request:
    """Send ``payload`` to the server for ``key`` (started with ``argv`` if needed)."""
    global _server
    if _server is not None and (_server.key != key or not _server.alive):
        _server.quit()
        _server = None
    if _server is None:
        _server = ServeSession(argv, key, env).start()
    return _server.submit(Request(payload, on_done))


def stop_server() -> None:
    global _server
    if _server is not None:
        _server.quit()
        _server = None


def kill_all(wait: float = 3.0) -> None:
    """Stop every process (Blender quits, the extension is disabled, another file loads): each
    gets ``wait`` seconds to save its checkpoint (so the run resumes), then is killed."""
    global _server
    _server = None
    for job in list(_jobs):  # ask all at once, then wait, so the waits do not add up
        if job.proc is not None and job.proc.poll() is None:
            job._cancel_requested = True
            job._signal(kill=False)
    end = time.monotonic() + wait
    for job in list(_jobs):
        job.kill(wait=max(0.05, end - time.monotonic()))
        job.poll()
    _jobs.clear()


def cancel_all() -> None:
    for job in list(_jobs):
        job.cancel()


atexit.register(kill_all)


def _load_pre(*_args) -> None:
    kill_all()


_load_pre._bpy_persistent = True  # type: ignore[attr-defined]  # as @bpy.app.handlers.persistent


def register() -> None:
    import bpy

    if _load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_load_pre)


def unregister() -> None:
    import bpy

    if _load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_load_pre)
    kill_all()
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)


__all__ = ["Job", "Request", "ServeSession", "serve_request", "server", "stop_server", "BackendError", "backend_command", "child_env", "start", "tick", "pump", "active_job",
           "kill_all", "cancel_all", "jobs", "last_finished", "add_listener", "remove_listener"]
