# SPDX-License-Identifier: GPL-3.0-or-later
"""2D priors: per training image, masks at three granularities and one embedding per mask.

- ``masks``: SAM automatic masks (``SamMaskGenerator``, ``MaskSettings``, ``filter_overlapping``,
  ``build_sam`` / ``load_sam``).
- ``embeddings``: CLIP mask embeddings, dense MaskCLIP or masked crops (``ClipEmbedder``,
  ``build_clip`` / ``load_clip``).
- ``text``: query encoders (``encode_texts``; CLIP text, or the offline ``names:hash-512``).
- ``store``: the per-image ``.npz`` format and the cache (``Priors``, ``save_priors``,
  ``load_priors``, ``PriorsCache``).
- ``from_labels``: priors from instance-label renders, exact or SAM-like (``LabelNoise``).
- ``command``: the ``maskfield priors`` subcommand and ``compute_priors``.
- ``weights``: finding and downloading checkpoints.

Importing this package does not import torch; the model code does, when it is used.
"""
from .command import compute_label_priors, compute_priors, register, run, spread_subset
from .from_labels import LabelNoise, label_masks, load_object_names, priors_from_label_map, read_label_map
from .store import (
    FORMAT_VERSION,
    Priors,
    PriorsCache,
    as_rgb_uint8,
    image_sha256,
    list_priors,
    load_priors,
    make_meta,
    save_priors,
    validate_priors,
)
from .text import CLIP_ENCODER, HASH_ENCODER, encode_texts, hash_embed, normalize_name

__all__ = [
    "CLIP_ENCODER",
    "FORMAT_VERSION",
    "HASH_ENCODER",
    "LabelNoise",
    "Priors",
    "PriorsCache",
    "as_rgb_uint8",
    "compute_label_priors",
    "compute_priors",
    "encode_texts",
    "hash_embed",
    "image_sha256",
    "label_masks",
    "list_priors",
    "load_object_names",
    "load_priors",
    "make_meta",
    "normalize_name",
    "priors_from_label_map",
    "read_label_map",
    "register",
    "run",
    "save_priors",
    "spread_subset",
    "validate_priors",
]
