"""The run folder: where each stage writes, run.json, atomic writes, devices."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
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


def write_json_atomic(path: Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_default))
    os.replace(tmp, path)


def save_torch_atomic(obj: Any, path: Path) -> None:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
        data = self.read()
        fingerprint = scene_fingerprint(scene)
        if data and data.get("scene_fingerprint") not in (None, fingerprint) and not overwrite:
            raise MaskFieldError(
                f"{self.path} holds a run of another scene ({data.get('scene')}). Choose another --out, "
                "or pass --overwrite to replace it.", kind="run_mismatch")
        if not data and self.path.exists() and any(self.path.iterdir()) and not overwrite:
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
