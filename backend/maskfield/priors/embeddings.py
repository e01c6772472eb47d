# SPDX-License-Identifier: GPL-3.0-or-later
"""One CLIP embedding per mask, with open_clip's ViT-B-16 (OpenAI weights by default).

Two ways (``ClipEmbedder(mode=...)``):

``dense`` (the MaskField paper's): a dense MaskCLIP feature map. The image, resized so its
short side is ``dense_short_side`` pixels (448; both sides rounded to the 16-pixel patch),
goes through the vision tower with its positional embedding interpolated (bicubic) to the
patch grid. In the *last* transformer block the query-key attention is skipped: the
block's input, after its ``ln_1``, goes through the value part of the attention's input
projection and then its output projection (no residual, no MLP), then the tower's
``ln_post`` and ``proj``. This gives each patch token a feature in CLIP's joint space
(MaskCLIP, Zhou et al. 2022). Each patch feature is L2-normalised; a mask's embedding is
the mean of the patch features weighted by the fraction of each patch the mask covers
(area pooling of the mask to the patch grid), L2-normalised.

``crop``: each mask's box (grown by ``crop_padding`` of its size on every side) is cut out
of the image, the pixels outside the mask are set to CLIP's mean colour, the crop is padded
to a square with the same colour, resized to the model's input size (224) and encoded with
the plain image encoder; L2-normalised.

Text goes through the same model's text tower (``encode_clip_texts``).
"""
from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..events import MaskFieldError
from .store import as_rgb_uint8

CLIP_WEIGHTS = {("ViT-B-16", "openai"): "clip_vit_b16_openai"}  # (model, pretrained) -> weights registry name
EMBEDDING_MODES = ("dense", "crop")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@contextmanager
def _quiet_logging():
    """open_clip logs a warning on the root logger when it builds a model without weights."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


# --- loading ---------------------------------------------------------------------------------

def _read_state_dict(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on TorchScript archives
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except RuntimeError as exc:
                if "TorchScript" not in str(exc):
                    raise
                # OpenAI's own release (ViT-B-16.pt) is a TorchScript archive.
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError("the file holds no state dict")
    if next(iter(state)).startswith("module."):
        state = {k[len("module."):]: v for k, v in state.items()}
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    return state


def build_clip(model_name: str = "ViT-B-16", pretrained: str = "openai", checkpoint: str | Path | None = None,
               device: str = "cpu"):
    """An open_clip CLIP model: weights from ``checkpoint``, or random weights if None."""
    import open_clip

    state = None
    if checkpoint is not None:
        path = Path(checkpoint)
        expected = f"open_clip {model_name} ({pretrained}) weights"
        if not path.exists():
            raise MaskFieldError(f"CLIP weights file not found: {path}. Put the {expected} there.")
        try:
            state = _read_state_dict(path)
        except Exception as exc:  # noqa: BLE001
            raise MaskFieldError(f"cannot read {path} as {expected}: {exc}. "
                                 "The file may be damaged or incomplete; download it again.") from None
    try:
        with _quiet_logging():
            model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=(pretrained == "openai"))
    except RuntimeError as exc:
        raise MaskFieldError(f"unknown open_clip model {model_name!r}: {exc}") from None
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except Exception as exc:  # noqa: BLE001
            first = str(exc).strip().splitlines()[0][:200]
            raise MaskFieldError(f"{path} does not hold {expected} ({first}). "
                                 "Give the file for this model.") from None
    return model.to(device).eval()


def load_clip(model_name: str = "ViT-B-16", pretrained: str = "openai", weights_dir: str | Path | None = None,
              device: str = "cpu", allow_download: bool = True, reporter=None):
    """CLIP with its released weights, found (or downloaded) by ``priors.weights``."""
    from .weights import resolve_checkpoint

    key = CLIP_WEIGHTS.get((model_name, pretrained))
    if key is None:
        supported = ", ".join(f"open_clip:{m}:{p}" for m, p in CLIP_WEIGHTS)
        raise MaskFieldError(f"no weights known for open_clip:{model_name}:{pretrained}; supported: {supported}")
    path = resolve_checkpoint(key, weights_dir=weights_dir, allow_download=allow_download, reporter=reporter)
    return build_clip(model_name, pretrained, path, device)


_LOADED: dict[tuple, Any] = {}


def load_clip_cached(model_name: str = "ViT-B-16", pretrained: str = "openai", weights_dir=None,
                     device: str = "cpu", allow_download: bool = True, reporter=None):
    """``load_clip`` once per (model, pretrained, weights_dir, device) in this process."""
    key = (model_name, pretrained, str(weights_dir) if weights_dir else None, str(device))
    if key not in _LOADED:
        _LOADED[key] = load_clip(model_name, pretrained, weights_dir=weights_dir, device=device,
                                 allow_download=allow_download, reporter=reporter)
    return _LOADED[key]


# --- text --------------------------------------------------------------------------------------

_TOKENIZERS: dict[str, Any] = {}


def encode_clip_texts(model, texts: list[str], model_name: str = "ViT-B-16") -> np.ndarray:
    """(P, D) float32 L2-normalised text embeddings."""
    import open_clip
    import torch

    if model_name not in _TOKENIZERS:
        _TOKENIZERS[model_name] = open_clip.get_tokenizer(model_name)
    device = next(model.parameters()).device
    dim = int(model.text_projection.shape[-1]) if getattr(model, "text_projection", None) is not None else 512
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    tokens = _TOKENIZERS[model_name](list(texts)).to(device)
    with torch.inference_mode():
        features = model.encode_text(tokens).float()
        features = torch.nn.functional.normalize(features, dim=-1)
    return features.cpu().numpy().astype(np.float32)


# --- images ------------------------------------------------------------------------------------

def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


class ClipEmbedder:
    """Mask embeddings from an open_clip CLIP model (``build_clip`` / ``load_clip``).

    ``name`` is the text encoder that queries must use (goes into meta.embedding_model);
    ``settings`` the options that change the embeddings (part of the cache key);
    ``calls`` counts the images embedded.
    """

    def __init__(self, model, mode: str = "dense", name: str = "open_clip:ViT-B-16:openai",
                 dense_short_side: int = 448, crop_padding: float = 0.1, batch_size: int = 32):
        if mode not in EMBEDDING_MODES:
            raise MaskFieldError(f"unknown embedding mode {mode!r}; choose one of {', '.join(EMBEDDING_MODES)}")
        self.model = model
        self.mode = mode
        self.name = name
        self.dense_short_side = int(dense_short_side)
        self.crop_padding = float(crop_padding)
        self.batch_size = int(batch_size)
        self.calls = 0
        visual = model.visual
        self.patch = _pair(getattr(visual, "patch_size", 16))
        self.input_size = _pair(getattr(visual, "image_size", 224))
        self.mean = tuple(getattr(visual, "image_mean", None) or OPENAI_MEAN)
        self.std = tuple(getattr(visual, "image_std", None) or OPENAI_STD)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        proj = getattr(self.model.visual, "proj", None)
        if proj is not None:
            return int(proj.shape[-1])
        return int(getattr(self.model.visual, "output_dim", 512))

    @property
    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode == "dense":
            out["dense_short_side"] = self.dense_short_side
        else:
            out["crop_padding"] = self.crop_padding
        return out

    def _normalise(self, image: np.ndarray):
        import torch

        x = torch.as_tensor(image, dtype=torch.float32, device=self.device).permute(2, 0, 1)[None] / 255.0
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    # dense MaskCLIP ---------------------------------------------------------------------------
    def dense_features(self, image: np.ndarray):
        """(gh, gw, D) torch tensor of L2-normalised MaskCLIP patch features."""
        import torch
        import torch.nn.functional as F

        visual = self.model.visual
        if getattr(visual, "attn_pool", None) is not None:
            raise MaskFieldError("dense MaskCLIP features need a CLIP ViT without attentional pooling; "
                                 "use --embedding crop with this model")
        image = as_rgb_uint8(image)
        h, w = image.shape[:2]
        ph, pw = self.patch
        scale = self.dense_short_side / min(h, w)
        gh = max(1, int(round(h * scale / ph)))
        gw = max(1, int(round(w * scale / pw)))
        with torch.inference_mode():
            x = self._normalise(image)
            x = F.interpolate(x, size=(gh * ph, gw * pw), mode="bicubic", align_corners=False, antialias=True)
            x = visual.conv1(x.to(visual.conv1.weight.dtype))  # (1, width, gh, gw)
            width = x.shape[1]
            x = x.flatten(2).transpose(1, 2)  # (1, gh*gw, width)
            pos = visual.positional_embedding.to(x.dtype)
            cls_pos, grid_pos = pos[:1], pos[1:]
            g0 = int(round(math.sqrt(grid_pos.shape[0])))
            grid_pos = grid_pos.reshape(1, g0, g0, width).permute(0, 3, 1, 2)
            if (g0, g0) != (gh, gw):
                grid_pos = F.interpolate(grid_pos, size=(gh, gw), mode="bicubic", align_corners=False)
            grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(gh * gw, width)
            cls = visual.class_embedding.to(x.dtype).view(1, 1, width)
            x = torch.cat([cls, x], dim=1) + torch.cat([cls_pos, grid_pos], dim=0)[None]
            x = visual.ln_pre(x)
            transformer = visual.transformer
            batch_first = getattr(transformer, "batch_first", True)
            if not batch_first:
                x = x.transpose(0, 1)
            blocks = list(transformer.resblocks)
            for block in blocks[:-1]:
                x = block(x)
            if not batch_first:
                x = x.transpose(0, 1)
            last = blocks[-1]
            y = last.ln_1(x)
            attn = last.attn
            if not hasattr(attn, "in_proj_weight") or not hasattr(attn, "out_proj"):
                raise MaskFieldError(f"dense MaskCLIP features: unsupported attention {type(attn).__name__}; "
                                     "use --embedding crop")
            d = attn.in_proj_weight.shape[1]
            w_v = attn.in_proj_weight[2 * d:]
            b_v = attn.in_proj_bias[2 * d:] if attn.in_proj_bias is not None else None
            v = attn.out_proj(F.linear(y, w_v, b_v))  # value path only: no q-k attention
            v = v[:, 1:]  # patch tokens
            feats = visual.ln_post(v)
            if visual.proj is not None:
                feats = feats @ visual.proj
            feats = F.normalize(feats.float(), dim=-1)
        return feats.reshape(gh, gw, -1)

    def _embed_dense(self, image: np.ndarray, masks: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        feats = self.dense_features(image)  # (gh, gw, D)
        gh, gw, dim = feats.shape
        flat = feats.reshape(gh * gw, dim)
        out = []
        with torch.inference_mode():
            for start in range(0, masks.shape[0], self.batch_size):
                chunk = torch.as_tensor(masks[start:start + self.batch_size], device=feats.device).float()
                weights = F.adaptive_avg_pool2d(chunk[:, None], (gh, gw)).reshape(chunk.shape[0], -1)
                total = weights.sum(1, keepdim=True)
                # An empty mask (only possible in hand-made priors) gets the image's mean feature.
                weights = torch.where(total > 0, weights, torch.ones_like(weights))
                emb = (weights @ flat) / weights.sum(1, keepdim=True)
                out.append(F.normalize(emb, dim=-1).cpu())
        return torch.cat(out).numpy().astype(np.float32)

    # crops ------------------------------------------------------------------------------------
    def _crop(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        from PIL import Image

        h, w = mask.shape
        fill = np.round(np.asarray(self.mean) * 255).astype(np.uint8)
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            y0, y1, x0, x1 = 0, h, 0, w
            crop = image.copy()
        else:
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            pad_y = int(round((y1 - y0) * self.crop_padding))
            pad_x = int(round((x1 - x0) * self.crop_padding))
            y0, y1 = max(0, y0 - pad_y), min(h, y1 + pad_y)
            x0, x1 = max(0, x0 - pad_x), min(w, x1 + pad_x)
            crop = image[y0:y1, x0:x1].copy()
            crop[~mask[y0:y1, x0:x1]] = fill
        ch, cw = crop.shape[:2]
        side = max(ch, cw)
        square = np.empty((side, side, 3), dtype=np.uint8)
        square[:] = fill
        oy, ox = (side - ch) // 2, (side - cw) // 2
        square[oy:oy + ch, ox:ox + cw] = crop
        size = (self.input_size[1], self.input_size[0])
        return np.asarray(Image.fromarray(square).resize(size, Image.Resampling.BICUBIC))

    def _embed_crops(self, image: np.ndarray, masks: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        image = as_rgb_uint8(image)
        if image.shape[:2] != masks.shape[1:]:
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize((masks.shape[2], masks.shape[1]),
                                                             Image.Resampling.BOX))
        out = []
        with torch.inference_mode():
            for start in range(0, masks.shape[0], self.batch_size):
                crops = np.stack([self._crop(image, m) for m in masks[start:start + self.batch_size]])
                x = torch.as_tensor(crops, dtype=torch.float32, device=self.device).permute(0, 3, 1, 2) / 255.0
                mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
                std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
                emb = self.model.encode_image((x - mean) / std).float()
                out.append(F.normalize(emb, dim=-1).cpu())
        return torch.cat(out).numpy().astype(np.float32)

    def embed(self, image: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """(M, D) float32 L2-normalised embeddings of ``masks`` (M x h x w bool, any resolution)."""
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3:
            raise ValueError(f"masks must be M x H x W, got shape {masks.shape}")
        self.calls += 1
        if masks.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.mode == "dense":
            return self._embed_dense(image, masks)
        return self._embed_crops(image, masks)
