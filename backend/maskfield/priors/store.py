# SPDX-License-Identifier: GPL-3.0-or-later
"""The per-image priors file (``priors/<image stem>.npz``) and the cache built on it.

Format (``docs/contracts.md``), format version 1:

=============== =================== ==================================================
key             shape / type        meaning
=============== =================== ==================================================
``masks``       M x H x W bool      the masks, at the resolution their shape states
``embeddings``  M x D float32       one L2-normalised embedding per mask
``granularity`` M int8              0 small, 1 medium, 2 large, -1 unknown
``scores``      M float32           confidence (SAM predicted IoU, 1.0 for labels)
``image_size``  (2,) int            H, W of the image the priors were made for
``meta``        0-d str (JSON)      image, image_sha256, mask_model, embedding_model,
                                    settings, format
=============== =================== ==================================================

``image_size`` is the size of the image as it was handed to the prior computation (the
scene image at the chosen downscale). The masks may be stored smaller (SAM works at a long
side of 1024 at most, see ``MaskSettings.max_side``); consumers resample masks to the
resolution they need.

Files are written compressed, to a temporary name in the same folder, then renamed, so a
cancelled run never leaves half a file. A view with no masks is stored with M = 0 (masks
0 x H x W, embeddings 0 x D) and is valid.

Cache: a file is reused when its meta matches the image's SHA-256 (of the decoded RGB
pixels), the mask and embedding model names and the settings; otherwise it is computed
again. A file whose meta carries ``"locked": true`` (or ``"mask_model": "user"``) was
brought by the user and is never overwritten, only validated.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..events import MaskFieldError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("masks", "embeddings", "granularity", "scores", "image_size", "meta")
REQUIRED_META = ("image", "image_sha256", "mask_model", "embedding_model", "settings", "format")


@dataclass
class Priors:
    """One image's masks and embeddings (see the module docstring for the meaning)."""

    masks: np.ndarray
    embeddings: np.ndarray
    granularity: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.masks.shape[0])

    @property
    def name(self) -> str:
        return str(self.meta.get("image", ""))

    @property
    def embedding_model(self) -> str:
        return str(self.meta.get("embedding_model", ""))

    @property
    def mask_model(self) -> str:
        return str(self.meta.get("mask_model", ""))

    @property
    def locked(self) -> bool:
        return bool(self.meta.get("locked")) or self.meta.get("mask_model") == "user"

    @classmethod
    def empty(cls, height: int, width: int, dim: int, meta: dict | None = None,
              image_size: tuple[int, int] | None = None) -> "Priors":
        return cls(
            masks=np.zeros((0, height, width), dtype=bool),
            embeddings=np.zeros((0, dim), dtype=np.float32),
            granularity=np.zeros((0,), dtype=np.int8),
            scores=np.zeros((0,), dtype=np.float32),
            image_size=tuple(image_size or (height, width)),
            meta=dict(meta or {}),
        )


def make_meta(image: str, image_sha256: str, mask_model: str, embedding_model: str,
              settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    meta = {
        "image": str(image),
        "image_sha256": str(image_sha256),
        "mask_model": str(mask_model),
        "embedding_model": str(embedding_model),
        "settings": canonical_settings(settings),
        "format": FORMAT_VERSION,
    }
    meta.update(extra)
    return meta


def canonical_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as they come back from JSON (tuples become lists, numpy scalars plain)."""
    return json.loads(json.dumps(settings, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"setting of type {type(value).__name__} is not JSON-serialisable")


def image_sha256(image: np.ndarray) -> str:
    """SHA-256 of an image's decoded pixels (dtype, shape and bytes)."""
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}:{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


# --- validation ---------------------------------------------------------------------------

def validate_priors(priors: Priors, source: str | os.PathLike = "priors") -> Priors:
    """Check shapes, dtypes and meta; raise MaskFieldError saying what is wrong and where."""
    where = str(source)

    def bad(message: str) -> MaskFieldError:
        return MaskFieldError(f"invalid priors file {where}: {message}. "
                              "Fix it (format in docs/contracts.md) or delete it to recompute.")

    masks, emb = priors.masks, priors.embeddings
    if not isinstance(masks, np.ndarray) or masks.ndim != 3:
        raise bad(f"'masks' must be M x H x W, got shape {getattr(masks, 'shape', None)}")
    if masks.dtype != np.bool_:
        raise bad(f"'masks' must be bool, got {masks.dtype}")
    m = masks.shape[0]
    if masks.shape[1] < 1 or masks.shape[2] < 1:
        raise bad(f"'masks' has an empty image size {masks.shape[1:]}")
    if not isinstance(emb, np.ndarray) or emb.ndim != 2 or emb.shape[0] != m:
        raise bad(f"'embeddings' must be M x D with M = {m}, got shape {getattr(emb, 'shape', None)}")
    if emb.dtype != np.float32:
        raise bad(f"'embeddings' must be float32, got {emb.dtype}")
    if emb.shape[1] < 1:
        raise bad("'embeddings' has dimension 0")
    if m and not np.all(np.isfinite(emb)):
        raise bad("'embeddings' holds NaN or infinite values")
    if m:
        norms = np.linalg.norm(emb.astype(np.float64), axis=1)
        worst = int(np.argmax(np.abs(norms - 1.0)))
        if abs(norms[worst] - 1.0) > 1e-3:
            raise bad(f"embedding {worst} has norm {norms[worst]:.4f}; embeddings must be L2-normalised")
    g = priors.granularity
    if not isinstance(g, np.ndarray) or g.shape != (m,) or g.dtype != np.int8:
        raise bad(f"'granularity' must be ({m},) int8, got {getattr(g, 'shape', None)} {getattr(g, 'dtype', None)}")
    if m and not np.all(np.isin(g, (-1, 0, 1, 2))):
        raise bad("'granularity' values must be -1, 0, 1 or 2")
    s = priors.scores
    if not isinstance(s, np.ndarray) or s.shape != (m,) or s.dtype != np.float32:
        raise bad(f"'scores' must be ({m},) float32, got {getattr(s, 'shape', None)} {getattr(s, 'dtype', None)}")
    size = tuple(int(v) for v in np.asarray(priors.image_size).reshape(-1))
    if len(size) != 2 or min(size) < 1:
        raise bad(f"'image_size' must be (H, W) with positive values, got {priors.image_size}")
    meta = priors.meta
    if not isinstance(meta, dict):
        raise bad("'meta' must be a JSON object")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise bad(f"'meta' lacks {', '.join(missing)}")
    if meta.get("format") != FORMAT_VERSION:
        raise bad(f"format {meta.get('format')!r} is not supported (this version reads format {FORMAT_VERSION})")
    if not isinstance(meta.get("settings"), dict):
        raise bad("'meta.settings' must be a JSON object")
    from .text import parse_encoder_name

    try:
        kind, params = parse_encoder_name(meta["embedding_model"])
    except MaskFieldError:
        raise bad(f"unknown embedding_model {meta['embedding_model']!r} (expected "
                  "'open_clip:<model>:<pretrained>', 'names:hash-<dim>' or a model of your own, "
                  "e.g. 'user:siglip-so400m')") from None
    if kind == "names" and m and emb.shape[1] != params[0]:
        raise bad(f"embedding_model {meta['embedding_model']} means {params[0]}-d embeddings, got {emb.shape[1]}-d")
    return priors


# --- files --------------------------------------------------------------------------------

def save_priors(path: str | os.PathLike, priors: Priors, validate: bool = True) -> Path:
    """Write ``priors`` to ``path`` (.npz) atomically: temporary file in the folder, then rename."""
    path = Path(path)
    priors = Priors(
        masks=np.ascontiguousarray(priors.masks, dtype=bool),
        embeddings=np.ascontiguousarray(priors.embeddings, dtype=np.float32),
        granularity=np.asarray(priors.granularity, dtype=np.int8).reshape(-1),
        scores=np.asarray(priors.scores, dtype=np.float32).reshape(-1),
        image_size=tuple(int(v) for v in priors.image_size),
        meta=dict(priors.meta),
    )
    if validate:
        validate_priors(priors, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(
                handle,
                masks=priors.masks,
                embeddings=priors.embeddings,
                granularity=priors.granularity,
                scores=priors.scores,
                image_size=np.asarray(priors.image_size, dtype=np.int64),
                meta=np.array(json.dumps(priors.meta, sort_keys=True, default=_json_default)),
            )
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def load_priors(path: str | os.PathLike, validate: bool = True, load_masks: bool = True) -> Priors:
    """Read a priors file; raise MaskFieldError with the file name and the problem if it is bad."""
    path = Path(path)
    if not path.exists():
        raise MaskFieldError(f"priors file not found: {path}. Run `maskfield priors` first, or put your own there.")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in REQUIRED_KEYS if k not in data.files]
            if missing:
                raise MaskFieldError(
                    f"invalid priors file {path}: lacks {', '.join(missing)} "
                    f"(needs {', '.join(REQUIRED_KEYS)}; see docs/contracts.md)")
            meta_raw = data["meta"]
            masks = data["masks"] if load_masks else None
            arrays = {k: data[k] for k in ("embeddings", "granularity", "scores", "image_size")}
    except MaskFieldError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise MaskFieldError(f"cannot read priors file {path}: {exc}. Delete it to recompute.") from None
    try:
        meta = json.loads(str(meta_raw.item() if meta_raw.ndim == 0 else meta_raw))
    except (ValueError, TypeError) as exc:
        raise MaskFieldError(f"invalid priors file {path}: 'meta' is not a JSON string ({exc})") from None
    size = tuple(int(v) for v in np.asarray(arrays["image_size"]).reshape(-1))
    if masks is None:
        m = arrays["embeddings"].shape[0] if arrays["embeddings"].ndim == 2 else 0
        masks = np.zeros((m, 1, 1), dtype=bool)
    priors = Priors(masks=masks, embeddings=arrays["embeddings"], granularity=arrays["granularity"],
                    scores=arrays["scores"], image_size=size, meta=meta)
    if validate:
        validate_priors(priors, path)
    return priors


def read_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The meta of a priors file without reading its masks; None if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            raw = data["meta"]
            return json.loads(str(raw.item() if raw.ndim == 0 else raw))
    except Exception:  # noqa: BLE001 - any damage means "not usable from cache"
        return None


# --- cache --------------------------------------------------------------------------------

class PriorsCache:
    """``<folder>/<image name>.npz`` reused while image, models and settings are unchanged."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path_for(self, name: str) -> Path:
        safe = str(name).replace("/", "_").replace("\\", "_")
        return self.folder / f"{safe}.npz"

    def lookup(self, name: str, image_sha: str, mask_model: str, embedding_model: str,
               settings: dict[str, Any]) -> tuple[Priors | None, str]:
        """(priors, reason): priors when the file may be reused, else None and why not."""
        path = self.path_for(name)
        if not path.exists():
            return None, "not computed yet"
        meta = read_meta(path)
        if meta is None:
            return None, "unreadable file"
        if meta.get("locked") or meta.get("mask_model") == "user":
            try:
                return load_priors(path), "user-provided (locked)"
            except MaskFieldError as exc:
                raise MaskFieldError(f"{exc} (the file is marked as user-provided, so it is not recomputed)") from None
        if meta.get("format") != FORMAT_VERSION:
            return None, "older format"
        if meta.get("image_sha256") != image_sha:
            return None, "image changed"
        if meta.get("mask_model") != mask_model:
            return None, f"mask model changed ({meta.get('mask_model')} -> {mask_model})"
        if meta.get("embedding_model") != embedding_model:
            return None, f"embedding model changed ({meta.get('embedding_model')} -> {embedding_model})"
        if meta.get("settings") != canonical_settings(settings):
            return None, "settings changed"
        try:
            return load_priors(path), "cached"
        except MaskFieldError:
            return None, "invalid file"

    def store(self, name: str, priors: Priors) -> Path:
        return save_priors(self.path_for(name), priors)


def list_priors(folder: str | os.PathLike) -> list[Path]:
    """The priors files in a folder, sorted by name (temporary files left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.npz") if not p.name.startswith("."))


# --- images -------------------------------------------------------------------------------

MIN_IMAGE_SIDE = 32


def as_rgb_uint8(image: np.ndarray, name: str = "image",
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Any H x W (x 1|2|3|4) image (uint8, uint16, float in [0, 1], bool) as H x W x 3 uint8.

    Greyscale is repeated to three channels, alpha is composited over ``background``,
    16-bit is scaled down, floats are clipped to [0, 1]. Images with a side under
    ``MIN_IMAGE_SIDE`` pixels are refused: SAM and CLIP see nothing useful in them.
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise MaskFieldError(f"{name}: expected an H x W x 3 image, got shape {array.shape}")
    h, w = array.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise MaskFieldError(f"{name} is {w}x{h} pixels; priors need at least {MIN_IMAGE_SIDE} pixels a side. "
                             "Use a smaller --downscale or leave the view out.")
    if array.dtype == np.bool_:
        data = array.astype(np.float32)
    elif array.dtype == np.uint8:
        data = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        data = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.integer):
        top = float(array.max()) if array.size else 1.0
        data = array.astype(np.float32) / (65535.0 if top > 255 else 255.0)
    elif np.issubdtype(array.dtype, np.floating):
        data = array.astype(np.float32)
        if not np.all(np.isfinite(data)):
            raise MaskFieldError(f"{name} holds NaN or infinite pixel values")
        data = np.clip(data, 0.0, 1.0)
    else:
        raise MaskFieldError(f"{name}: unsupported pixel type {array.dtype}")
    channels = data.shape[2]
    if channels in (2, 4):  # grey+alpha or RGBA: composite over the background
        alpha = data[..., -1:]
        colour = data[..., :-1]
        if channels == 2:
            colour = np.repeat(colour, 3, axis=2)
        data = colour * alpha + np.asarray(background, dtype=np.float32) * (1.0 - alpha)
    elif channels == 1:
        data = np.repeat(data, 3, axis=2)
    if array.dtype == np.uint8 and channels == 3:
        return np.ascontiguousarray(array)
    return np.ascontiguousarray(np.round(data * 255.0).astype(np.uint8))
