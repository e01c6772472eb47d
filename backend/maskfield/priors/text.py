# SPDX-License-Identifier: GPL-3.0-or-later
"""Text encoders for queries: CLIP text, or a hashed n-gram code of object names.

The priors' ``meta["embedding_model"]`` names the encoder that prompts must go through so
that they live in the same space as the mask embeddings:

- ``open_clip:<model>:<pretrained>`` (``open_clip:ViT-B-16:openai`` by default): the CLIP
  text tower of the same model that embedded the masks.
- ``user:<name>`` (or any other name, e.g. ``user:siglip-so400m``): embeddings from a model
  this package cannot run (SigLIP, DINO, a segmenter of one's own). Training accepts them;
  prompts must then come as vectors from that same model (``segment --prompt-embeddings``),
  and text prompts are refused with a message that says so.
- ``names:hash-<D>`` (``names:hash-512``): a deterministic, offline embedding of *names*.
  Used for priors made from labelled renders (object names from Blender) when no CLIP
  weights exist. It is not CLIP and knows nothing of meaning: it matches spelling, so
  "red mug" is closest to an object called "Red_Mug.001", and "mug" is close to it too.

The hashed code: a name is normalised (Blender's ``.001`` suffixes dropped, ``_ - .`` and
camelCase split into words, lower case), then each word contributes itself (weight 1) and
its character 3-grams with ``#`` as word boundary (weight 1/sqrt(n-grams), so short and
long words weigh alike); each feature is hashed with BLAKE2b to a dimension and a sign
(signed feature hashing), the sum is L2-normalised.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Sequence

import numpy as np

from ..events import MaskFieldError

HASH_ENCODER = "names:hash-512"
CLIP_ENCODER = "open_clip:ViT-B-16:openai"
TEXT_KINDS = ("open_clip", "names")  # encoders this package can run on text

_BLENDER_SUFFIX = re.compile(r"\.\d{3,}$")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[_\-.\s/\\:,;|()\[\]{}]+")


def normalize_name(name: str) -> str:
    """'Red_Mug.001' -> 'red mug', 'coffeeTable' -> 'coffee table', '  A  B ' -> 'a b'."""
    name = str(name).strip()
    while _BLENDER_SUFFIX.search(name):
        name = _BLENDER_SUFFIX.sub("", name)
    name = _CAMEL.sub(" ", name)
    name = _SEPARATORS.sub(" ", name)
    return " ".join(name.lower().split())


def _features(text: str) -> list[tuple[str, float]]:
    words = normalize_name(text).split() or ["object"]
    feats: list[tuple[str, float]] = []
    for word in words:
        feats.append(("w:" + word, 1.0))
        padded = f"#{word}#"
        grams = [padded[i:i + 3] for i in range(len(padded) - 2)]
        weight = 1.0 / np.sqrt(len(grams))
        feats.extend(("g:" + g, weight) for g in grams)
    return feats


def _hash(feature: str, dim: int) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % dim, (1.0 if (value >> 63) & 1 else -1.0)


def hash_embed(texts: Sequence[str], dim: int = 512) -> np.ndarray:
    """Deterministic hashed character n-gram embedding, (N, dim) float32, rows L2-normalised."""
    if dim < 8:
        raise ValueError("hash embedding dimension must be at least 8")
    out = np.zeros((len(texts), dim), dtype=np.float64)
    for row, text in enumerate(texts):
        for feature, weight in _features(text):
            index, sign = _hash(feature, dim)
            out[row, index] += sign * weight
        norm = np.linalg.norm(out[row])
        if norm > 0:
            out[row] /= norm
    return out.astype(np.float32)


def parse_encoder_name(encoder_name: str) -> tuple[str, tuple[Any, ...]]:
    """'names:hash-512' -> ('names', (512,)); 'open_clip:ViT-B-16:openai' -> ('open_clip', ('ViT-B-16', 'openai'));
    any other non-empty name, e.g. 'user:siglip-so400m' -> ('user', ('user:siglip-so400m',)).

    The two prefixes this package runs itself are checked strictly, so that a damaged name of
    one of them is caught rather than taken for a model of the user's.
    """
    name = str(encoder_name).strip()
    parts = name.split(":")
    if parts[0] == "names":
        match = re.fullmatch(r"hash-(\d+)", parts[1]) if len(parts) == 2 else None
        if match:
            return "names", (int(match.group(1)),)
    elif parts[0] == "open_clip":
        if len(parts) == 3 and parts[1] and parts[2]:
            return "open_clip", (parts[1], parts[2])
    elif name:
        return "user", (name,)
    raise MaskFieldError(
        f"unknown embedding model {encoder_name!r}: expected 'open_clip:<model>:<pretrained>' "
        f"(e.g. {CLIP_ENCODER!r}), 'names:hash-<dim>' (e.g. {HASH_ENCODER!r}) or a name of your own model "
        "such as 'user:siglip-so400m'. The priors' meta.embedding_model names it; recompute the priors if it "
        "is damaged."
    )


def can_encode_text(encoder_name: str) -> bool:
    """Whether this package can turn text into that model's embedding space."""
    return parse_encoder_name(encoder_name)[0] in TEXT_KINDS


def text_refused_message(encoder_name: str) -> str:
    return (f"this run's mask embeddings come from {encoder_name!r}, which MaskField cannot run on text. "
            "Give the prompts as vectors from that same model: `maskfield segment RUN --prompt-embeddings "
            "FILE` (.npy P x D, or .npz with 'embeddings', optional 'names' and 'negatives'), or select by "
            "position.")


def encode_texts(
    prompts: Sequence[str],
    encoder_name: str,
    *,
    clip_model=None,
    weights_dir=None,
    device: str = "cpu",
    allow_download: bool = True,
    reporter=None,
    template: str = "{}",
) -> np.ndarray:
    """Encode prompts with the encoder the priors name: (P, D) float32, rows L2-normalised.

    ``clip_model`` lets a caller pass an open_clip CLIP model it already has (tests give one
    with random weights); otherwise the weights are found with ``priors.weights`` and the
    model is kept in memory for later calls.
    """
    prompts = [str(p) for p in prompts]
    kind, params = parse_encoder_name(encoder_name)
    if kind == "user":
        raise MaskFieldError(text_refused_message(encoder_name), kind="text_unsupported")
    if kind == "names":
        return hash_embed(prompts, dim=params[0])
    model_name, pretrained = params
    from .embeddings import encode_clip_texts, load_clip_cached

    if clip_model is None:
        clip_model = load_clip_cached(model_name, pretrained, weights_dir=weights_dir, device=device,
                                      allow_download=allow_download, reporter=reporter)
    return encode_clip_texts(clip_model, [template.format(p) for p in prompts], model_name=model_name)
