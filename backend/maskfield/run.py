"""The run folder: where each stage writes, run.json, atomic writes, devices."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .events import MaskFieldError


def resolve_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise MaskFieldError("--device cuda was asked for, but torch sees no CUDA GPU; use --device auto or cpu.")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MaskFieldError("--device mps was asked for, but this machine has no Apple GPU; use --device auto or cpu.")
    if requested not in ("cpu", "cuda", "mps"):
        raise MaskFieldError(f"unknown device {requested!r}; use auto, cpu, cuda or mps.")
    return requested


def temp_path(path: Path) -> Path:
    """A temporary name beside ``path``, unique to this process and call: two writers of one
    file never share a temporary file (the later rename decides which complete file wins)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def io_error_message(exc: OSError, path: Path | str | None = None, kept: str = "") -> str:
    """What a person can act on for an OSError: the file, the system's reason, what to do."""
    where = path or exc.filename or "a file"
    reason = exc.strerror or str(exc)
    if exc.errno in SPACE_ERRNOS:
        return (f"cannot write {where}: {reason} (the disk is full or a size limit was reached). "
                f"Free some space and run the same command again{'; ' + kept if kept else ''}.")
    if exc.errno == errno.ENAMETOOLONG:
        return f"cannot use {where}: {reason}; choose a shorter name or folder."
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where}: {reason}; choose a folder you can write to."
    if exc.errno == errno.ENOTDIR:
        return f"cannot use {where}: a part of this path is a file, not a folder; choose another folder."
    if exc.errno == errno.EEXIST:
        return f"cannot create the folder {where}: a file of that name exists; choose another folder."
    return f"cannot access {where}: {reason}; check the path."


@contextlib.contextmanager
def atomic_file(path: Path, kept: str = ""):
    """Yields a unique temporary path beside ``path``; renamed to ``path`` only when the block
    finishes. On any failure the temporary file is removed and ``path`` is left as it was; a full
    disk (or any OSError) becomes a MaskFieldError naming the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MaskFieldError(io_error_message(exc, path.parent), kind="io") from exc
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        if not kept and path.exists():
            kept = f"the previous {path.name} is kept as it was"
        raise MaskFieldError(io_error_message(exc, path, kept), kind="io") from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_json_atomic(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, default=_default)
    with atomic_file(path) as tmp:
        Path(tmp).write_text(text)


class _RecordingWriter:
    """A file object for torch.save that remembers the OSError of a failed write: torch itself
    reports a full disk only as 'unexpected pos', hiding the cause."""

    def __init__(self, fh):
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def save_torch_atomic(obj: Any, path: Path, kept: str = "") -> None:
    import torch

    path = Path(path)
    with atomic_file(path, kept) as tmp:
        with open(tmp, "wb") as fh:
            writer = _RecordingWriter(fh)
            try:
                torch.save(obj, writer)
                fh.flush()
            except RuntimeError as exc:
                if writer.error is not None:  # the real cause, not torch's 'unexpected pos'
                    raise writer.error from exc
                raise


def load_torch_file(path: Path, device="cpu", remedy: str = "") -> Any:
    """A file ``save_torch_atomic`` wrote, or MaskFieldError saying it is damaged and what to do.

    Our writes are atomic, so a damaged file was cut short or changed outside (a copy that
    stopped, a sync tool, a full disk); PyTorch's own message for it ("Invalid argument",
    "failed finding central directory") names no file and no way out."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except FileNotFoundError:
        raise
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:
        raise MaskFieldError(f"{path} is damaged and cannot be read ({type(exc).__name__}: {exc}); it was cut "
                             f"short or changed outside MaskField. {remedy}".rstrip(), kind="input") from None


def _default(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def scene_fingerprint(scene) -> str:
    """Identifies a capture by its image names, sizes and poses (not by where it lives)."""
    h = hashlib.sha256()
    for cam in scene.cameras:
        h.update(cam.name.encode())
        h.update(f"{cam.width}x{cam.height}".encode())
        h.update(np.round(cam.camtoworld, 4).astype(np.float32).tobytes())
    return h.hexdigest()[:16]


class RunFolder:
    """RUN/: gaussians.ply, run.json, fit_checkpoint.pt, priors/, field.pt, segments/."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    gaussians_ply = property(lambda self: self.path / "gaussians.ply")
    fit_checkpoint = property(lambda self: self.path / "fit_checkpoint.pt")
    priors_dir = property(lambda self: self.path / "priors")
    field_checkpoint = property(lambda self: self.path / "field.pt")
    field_progress = property(lambda self: self.path / "field_checkpoint.pt")
    segments_dir = property(lambda self: self.path / "segments")
    json_path = property(lambda self: self.path / "run.json")

    def read(self) -> dict:
        if not self.json_path.exists():
            return {}
        try:
            return json.loads(self.json_path.read_text())
        except json.JSONDecodeError:
            raise MaskFieldError(f"{self.json_path} is damaged; delete the run folder or choose another --out.") from None

    def claim(self, scene, scene_path: str | Path, overwrite: bool = False) -> dict:
        """Make sure this folder is empty, or holds a run of this very scene."""
        if self.path.exists() and not self.path.is_dir():
            raise MaskFieldError(f"{self.path} is a file, not a folder; choose another --out.")
        prepare_folder(self.path)
        data = self.read()
        fingerprint = scene_fingerprint(scene)
        if data and data.get("scene_fingerprint") not in (None, fingerprint) and not overwrite:
            raise MaskFieldError(
                f"{self.path} holds a run of another scene ({data.get('scene')}). Choose another --out, "
                "or pass --overwrite to replace it.", kind="run_mismatch")
        if not data and self.path.exists() and any(p.name not in BOOKKEEPING for p in self.path.iterdir()) \
                and not overwrite:
            raise MaskFieldError(f"{self.path} is not empty and holds no MaskField run; choose another --out "
                                 "or pass --overwrite.", kind="run_mismatch")
        if data.get("scene_fingerprint") != fingerprint:
            data = {}
        self.path.mkdir(parents=True, exist_ok=True)
        data.update({
            "format": 1,
            "scene": str(Path(scene_path).resolve()),
            "scene_fingerprint": fingerprint,
            "images": [c.name for c in scene.cameras],
            "train_indices": list(scene.train_indices),
            "test_indices": list(scene.test_indices),
        })
        if scene.source == "llff":  # which of images/, images_4/, ... the run was made from
            data["image_folder"] = scene.image_paths[0].parent.name
        data.pop("origin", None)
        if scene.origin is not None:  # the run's coordinates + origin = the camera file's
            data["origin"] = [float(v) for v in scene.origin]
        data.setdefault("stages", {})
        data["versions"] = versions()
        write_json_atomic(self.json_path, data)
        return data

    def update_stage(self, stage: str, **values: Any) -> dict:
        data = self.read()
        data.setdefault("stages", {})[stage] = {**values, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(self.json_path, data)
        return data

    def require(self, what: str) -> None:
        checks = {
            "gaussians": (self.gaussians_ply, "run `maskfield fit SCENE --out RUN` first"),
            "priors": (self.priors_dir, "run `maskfield priors SCENE --out RUN` first"),
            "field": (self.field_checkpoint, "run `maskfield train-field RUN` first"),
        }
        path, hint = checks[what]
        if not path.exists() or (path.is_dir() and not any(path.glob("*.npz"))):
            raise MaskFieldError(f"{self.path} has no {what} ({path.name} is missing): {hint}.", kind="missing_stage")


def versions() -> dict:
    from importlib import metadata

    out = {"maskfield": __version__, "python": platform.python_version()}
    for dist in ("torch", "gsplat", "numba", "segment-anything", "open_clip_torch", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


# --- one writer per run folder ------------------------------------------------------------

LOCK_NAME = ".maskfield.lock"
LOG_DIR = "logs"
# what a run folder may hold besides a run and still count as empty (the lock, crash logs)
BOOKKEEPING = {LOCK_NAME, LOG_DIR}
_HELD: dict[str, int] = {}  # lock paths this process holds -> nesting depth (train runs fit inside)


def prepare_folder(path: str | Path, option: str = "--out") -> Path:
    """Create ``path`` as a folder we can write to, or say what is wrong before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MaskFieldError(f"{option} {path} is a file, not a folder; choose another {option}.", kind="input")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = _mkstemp(path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MaskFieldError(f"{option}: " + io_error_message(exc, path) + f" Choose a folder you can write to "
                             f"for {option}.", kind="io") from exc
    return path


def _mkstemp(folder: Path):
    import tempfile

    return tempfile.mkstemp(prefix=".maskfield-write-test.", dir=folder)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def run_lock(folder: str | Path, command: str, reporter=None):
    """Hold RUN/.maskfield.lock while a command writes the run.

    The lock names its holder (process id, host, command, start time). A second writer is
    refused with that name; a lock whose process is gone (killed, machine restarted) is taken
    over. Nested use within one process (``train`` runs ``fit``) is allowed. A folder this
    call created and left empty is removed again.
    """
    folder = Path(folder)
    existed = folder.exists()
    prepare_folder(folder)
    lock = folder / LOCK_NAME
    key = str(lock.resolve())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield lock
        finally:
            _HELD[key] -= 1
        return
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _attempt in range(5):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_lock(lock)
            pid = int(holder.get("pid") or 0)
            same_host = holder.get("host") in (None, socket.gethostname())
            if pid and (not same_host or _process_alive(pid)) and pid != os.getpid():
                where = "" if same_host else f" on {holder.get('host')}"
                raise MaskFieldError(
                    f"{folder} is in use by process {pid}{where} ({holder.get('command', 'maskfield')}, started "
                    f"{holder.get('started', '?')}). Wait for it to finish or stop it; two commands writing one "
                    f"run would overwrite each other. If no such process runs, delete {lock}.", kind="busy")
            if not holder and time.time() - _mtime(lock) < 2.0:
                time.sleep(0.2)  # being written by a starting process: look again
                continue
            # its holder is gone: move the stale lock aside (a rename: one taker wins) and retry
            stale = lock.with_name(f"{LOCK_NAME}.{os.getpid()}.{uuid.uuid4().hex[:6]}.stale")
            try:
                os.replace(lock, stale)
                os.unlink(stale)
            except OSError:
                pass
            if reporter is not None and pid:
                reporter.log(f"took over the lock of {folder} left by process {pid}, which is no longer running",
                             level="warning")
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
        break
    else:
        raise MaskFieldError(f"could not lock {folder}; delete {lock} if no MaskField command is using it.",
                             kind="busy")
    _HELD[key] = 1
    try:
        yield lock
    finally:
        _HELD.pop(key, None)
        if _read_lock(lock).get("pid") == os.getpid():
            _remove_quietly(lock)
        if not existed:
            try:
                folder.rmdir()  # only if the command left nothing in it
            except OSError:
                pass


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# --- a run whose scene folder moved ---------------------------------------------------------

def scene_of_run(run: "RunFolder", override: str | Path | None, command: str, reporter=None):
    """The scene a run was trained on: where run.json says, or ``override`` (--scene) when the
    folder moved; the override must be the same capture (same images and cameras) and run.json
    is updated to point at it."""
    from .scene import load_scene

    info = run.read()
    recorded = info.get("scene")
    if override is not None:
        scene = _as_recorded(load_scene(override, skip_missing=True, images=info.get("image_folder"),
                                        check_readable=False), info)
        expected = info.get("scene_fingerprint")
        if expected and scene_fingerprint(scene) != expected:
            raise MaskFieldError(f"--scene {override} is not the scene this run was trained on (other images or "
                                 f"cameras); the run was made from {recorded}.", kind="run_mismatch")
        if recorded != str(Path(override).resolve()):
            info["scene"] = str(Path(override).resolve())
            write_json_atomic(run.json_path, info)
            if reporter is not None:
                reporter.log(f"{run.json_path.name} now points to the scene at {info['scene']} (was {recorded})")
        return scene
    if not recorded:
        raise MaskFieldError(f"{run.json_path} does not name its scene; pass --scene SCENE, or re-run `maskfield fit`.")
    if not Path(recorded).exists():
        raise MaskFieldError(
            f"the scene folder of this run, {recorded}, no longer exists. If you moved it, point the run at its "
            f"new place: maskfield {command} {run.path} --scene NEW_FOLDER (it is checked to be the same capture, "
            "and run.json is updated).", kind="missing_scene")
    return _as_recorded(load_scene(recorded, skip_missing=True, images=info.get("image_folder"), check_readable=False),
                        info)


def _as_recorded(scene, info: dict):
    """The scene with the views and the held-out split the run was made with (run.json's
    ``images``, ``train_indices``, ``test_indices``): frames the fit left out (--skip-missing)
    are left out again without decoding every image, and a --holdout-every other than the
    default holds. A scene that does not hold the recorded views is returned as loaded."""
    names = info.get("images")
    if not names or "train_indices" not in info or "test_indices" not in info:
        return scene
    wanted = set(names)
    keep = [i for i, cam in enumerate(scene.cameras) if cam.name in wanted]
    if [scene.cameras[i].name for i in keep] != list(names):
        return scene
    if len(keep) != len(scene.cameras):
        scene.cameras = [scene.cameras[i] for i in keep]
        scene.image_paths = [scene.image_paths[i] for i in keep]
        if scene.depth_bounds is not None:
            scene.depth_bounds = scene.depth_bounds[keep]
    scene.train_indices = [int(i) for i in info["train_indices"]]
    scene.test_indices = [int(i) for i in info["test_indices"]]
    return scene
