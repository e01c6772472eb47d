# SPDX-License-Identifier: GPL-3.0-or-later
"""Priors from labelled renders: instance-id PNGs plus object names, exact or SAM-like.

Input (``docs/contracts.md``): ``labels/<image stem>.png``, per-pixel instance ids (uint8 or
uint16, 0 = background), and ``labels/objects.json`` (``{"1": "red mug", ...}``). Each id
present in a view becomes one mask (granularity 1, "object"; score 1.0) whose embedding is
the ``names:hash-512`` code of the object's name (``text.hash_embed``). Ids missing from
``objects.json`` are named ``object <id>``.

SAM-like noise (``LabelNoise``; used by the synthetic benchmark so that the method is
measured on masks as imperfect as SAM's, not on the ground truth). All randomness comes
from ``numpy.random.default_rng([seed, crc32(image name)])``: the same seed and view give
the same masks on every machine, and different views are perturbed differently.

- **parts** (granularity 0): with probability ``p_split`` an object is cut in two by a
  straight line through a random pixel of the object at a random angle (different in every
  view, so parts are *not* consistent across views, like SAM's); both pieces become part
  masks when each has at least ``min_part_fraction`` of the object's area. Parts carry the
  object's embedding.
- **objects** (granularity 1): every object's own mask.
- **groups** (granularity 2): for each pair of objects that touch in the view (4-connected
  pixels), with probability ``p_merge`` their union is a group mask, with embedding the
  normalised mean of the two objects' embeddings.
- **missing**: each mask is dropped with probability ``p_drop``.
- **boundaries**: each mask is dilated (or eroded) by a random whole number of pixels in
  ``[-jitter_px, jitter_px]`` (binary morphology with a 3x3 cross), independently, so
  touching masks overlap or leave gaps as SAM's do.
- **embedding noise**: Gaussian noise of standard deviation ``embedding_noise`` per
  dimension, times 1/sqrt(D) so it is relative to the unit norm, then renormalised.
- **scores**: uniform in [``score_low``, 1.0] (SAM's predicted IoU is rarely lower after
  filtering).
- masks smaller than ``min_area`` pixels after all this are dropped.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..events import MaskFieldError
from .store import Priors, canonical_settings, image_sha256, make_meta
from .text import HASH_ENCODER, hash_embed, parse_encoder_name

LABEL_SUFFIXES = (".png", ".PNG", ".tif", ".tiff", ".exr")


@dataclass
class LabelNoise:
    seed: int = 0
    p_split: float = 0.5
    min_part_fraction: float = 0.15
    p_merge: float = 0.35
    p_drop: float = 0.1
    jitter_px: int = 2
    embedding_noise: float = 0.1
    score_low: float = 0.7
    min_area: int = 16

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- reading ----------------------------------------------------------------------------------

def load_object_names(labels_dir: str | Path) -> dict[int, str]:
    """``objects.json`` as {id: name}; an empty dict if the file is absent."""
    path = Path(labels_dir) / "objects.json"
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))  # with or without a BOM
    except (OSError, ValueError) as exc:
        raise MaskFieldError(f"cannot read {path}: {exc}. It must be a JSON object like "
                             '{"1": "red mug", "2": "table"}.') from None
    if not isinstance(raw, dict):
        raise MaskFieldError(f"{path} must be a JSON object mapping ids to names, like {{\"1\": \"red mug\"}}")
    names: dict[int, str] = {}
    for key, value in raw.items():
        try:
            ident = int(key)
        except (TypeError, ValueError):
            raise MaskFieldError(f"{path}: key {key!r} is not an integer instance id") from None
        if ident <= 0:
            continue  # 0 is the background
        names[ident] = str(value)
    return names


def find_label_file(labels_dir: str | Path, stem: str) -> Path | None:
    """A view's label image: ``labels/<name>.png`` (or another suffix); for a view named by its
    folder too (``cam0__0001``, see ``scene.loaders.name_apart``) also ``labels/cam0/0001.png``."""
    folder = Path(labels_dir)
    for name in dict.fromkeys((stem, stem.replace("__", "/"))):
        for suffix in LABEL_SUFFIXES:
            candidate = folder / f"{name}{suffix}"
            if candidate.exists():
                return candidate
    return None


def read_label_map(path: str | Path) -> np.ndarray:
    """H x W int64 instance ids from a uint8 / uint16 (greyscale or palette) image."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("RGB", "RGBA"):
                data = np.asarray(img)
                colour = data[..., :3]
                if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
                    raise MaskFieldError(f"{path} is a colour image; label maps must be single-channel "
                                         "instance ids (uint8 or uint16 greyscale PNG, 0 = background)")
                data = colour[..., 0]
            elif mode == "LA":
                data = np.asarray(img)[..., 0]
            elif mode == "F":
                data = np.asarray(img)
                if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
                    raise MaskFieldError(f"{path} holds non-integer values; label maps must hold instance ids")
            else:  # L, P (palette indices are the ids), I, I;16*
                data = np.asarray(img)
    except FileNotFoundError:
        raise MaskFieldError(f"label image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise MaskFieldError(f"cannot read label image {path}: {exc}") from None
    data = np.asarray(data)
    if data.ndim != 2:
        raise MaskFieldError(f"{path}: label map must be H x W, got shape {data.shape}")
    if np.any(data < 0):
        raise MaskFieldError(f"{path}: label map holds negative ids")
    return data.astype(np.int64)


def resize_label_map(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an id map (ids above 2**31 are not supported)."""
    if labels.shape == (height, width):
        return labels
    from PIL import Image

    img = Image.fromarray(labels.astype(np.int32), mode="I")
    return np.asarray(img.resize((width, height), Image.Resampling.NEAREST)).astype(np.int64)


# --- exact and noisy masks -----------------------------------------------------------------------

def _touching_pairs(labels: np.ndarray) -> list[tuple[int, int]]:
    pairs = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        differ = (a != b) & (a > 0) & (b > 0)
        if np.any(differ):
            lo = np.minimum(a[differ], b[differ])
            hi = np.maximum(a[differ], b[differ])
            for pair in set(zip(lo.tolist(), hi.tolist())):
                pairs.add(pair)
    return sorted(pairs)


def _jitter(mask: np.ndarray, radius: int) -> np.ndarray:
    from scipy import ndimage

    if radius == 0:
        return mask
    if radius > 0:
        return ndimage.binary_dilation(mask, iterations=radius)
    return ndimage.binary_erosion(mask, iterations=-radius, border_value=1)


def _split(mask: np.ndarray, rng: np.random.Generator, min_fraction: float) -> list[np.ndarray]:
    ys, xs = np.nonzero(mask)
    if len(ys) < 2:
        return []
    pick = int(rng.integers(len(ys)))
    angle = float(rng.uniform(0.0, np.pi))
    normal = np.array([np.cos(angle), np.sin(angle)])
    side = (xs - xs[pick]) * normal[0] + (ys - ys[pick]) * normal[1] > 0
    area = len(ys)
    if min(side.sum(), area - side.sum()) < min_fraction * area:
        return []
    parts = []
    for sel in (side, ~side):
        part = np.zeros_like(mask)
        part[ys[sel], xs[sel]] = True
        parts.append(part)
    return parts


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def label_masks(labels: np.ndarray, names: dict[int, str], dim: int = 512,
                noise: LabelNoise | None = None, view: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(masks, embeddings, granularity, scores, mask names) from an id map.

    Exact when ``noise`` is None: one mask per id present (ascending ids). With noise, the
    SAM-like perturbations of the module docstring, seeded by ``noise.seed`` and ``view``.
    """
    labels = np.asarray(labels)
    h, w = labels.shape
    ids = [int(i) for i in np.unique(labels) if i > 0]
    obj_names = {i: names.get(i, f"object {i}") for i in ids}
    obj_emb = dict(zip(ids, hash_embed([obj_names[i] for i in ids], dim=dim))) if ids else {}
    entries: list[tuple[np.ndarray, np.ndarray, int, float, str]] = []
    if noise is None:
        for i in ids:
            entries.append((labels == i, obj_emb[i], 1, 1.0, obj_names[i]))
    else:
        rng = np.random.default_rng([int(noise.seed) & 0xFFFFFFFF, zlib.crc32(view.encode("utf-8"))])
        objects = {i: labels == i for i in ids}
        for i in ids:
            if rng.random() < noise.p_split:
                for part in _split(objects[i], rng, noise.min_part_fraction):
                    entries.append((part, obj_emb[i], 0, 0.0, obj_names[i]))
            entries.append((objects[i], obj_emb[i], 1, 0.0, obj_names[i]))
        for a, b in _touching_pairs(labels):
            if rng.random() < noise.p_merge:
                emb = obj_emb[a] + obj_emb[b]
                emb = emb / max(np.linalg.norm(emb), 1e-12)
                entries.append((objects[a] | objects[b], emb, 2, 0.0, f"{obj_names[a]} + {obj_names[b]}"))
        noisy = []
        for mask, emb, gran, _score, name in entries:
            if rng.random() < noise.p_drop:
                continue
            radius = int(rng.integers(-noise.jitter_px, noise.jitter_px + 1)) if noise.jitter_px > 0 else 0
            mask = _jitter(mask, radius)
            if noise.embedding_noise > 0:
                emb = emb + rng.normal(0.0, noise.embedding_noise / np.sqrt(dim), size=emb.shape)
            score = float(rng.uniform(noise.score_low, 1.0))
            if mask.sum() < noise.min_area:
                continue
            noisy.append((mask, emb, gran, score, name))
        entries = noisy
    if not entries:
        return (np.zeros((0, h, w), bool), np.zeros((0, dim), np.float32), np.zeros(0, np.int8),
                np.zeros(0, np.float32), [])
    masks = np.stack([e[0] for e in entries]).astype(bool)
    emb = _normalise_rows(np.stack([e[1] for e in entries]).astype(np.float64))
    gran = np.array([e[2] for e in entries], dtype=np.int8)
    scores = np.array([e[3] for e in entries], dtype=np.float32)
    return masks, emb, gran, scores, [e[4] for e in entries]


def priors_from_label_map(labels: np.ndarray, names: dict[int, str], image_name: str,
                          noise: LabelNoise | None = None, embedding_model: str = HASH_ENCODER,
                          image_size: tuple[int, int] | None = None) -> Priors:
    """The priors of one view from its id map (see ``label_masks``).

    ``image_size`` (H, W): when given and different from the map's size, the map is resized
    (nearest) to it first, so the masks match the images used for training.
    """
    kind, params = parse_encoder_name(embedding_model)
    if kind != "names":
        raise MaskFieldError(f"priors from labels embed object names; use a 'names:hash-<dim>' encoder, not {embedding_model}")
    labels = np.asarray(labels)
    if image_size is not None:
        labels = resize_label_map(labels, int(image_size[0]), int(image_size[1]))
    h, w = labels.shape
    masks, emb, gran, scores, mask_names = label_masks(labels, names, dim=params[0], noise=noise, view=image_name)
    settings = {"source": "labels", "noise": noise.to_dict() if noise is not None else None,
                "names": {str(k): v for k, v in sorted(names.items())}}
    meta = make_meta(image_name, image_sha256(labels.astype(np.int64)),
                     "labels+noise" if noise is not None else "labels", embedding_model, settings,
                     mask_names=mask_names)
    return Priors(masks=masks, embeddings=emb, granularity=gran, scores=scores, image_size=(h, w), meta=meta)


def label_settings(names: dict[int, str], noise: LabelNoise | None) -> dict[str, Any]:
    return canonical_settings({"source": "labels", "noise": noise.to_dict() if noise is not None else None,
                               "names": {str(k): v for k, v in sorted(names.items())}})
