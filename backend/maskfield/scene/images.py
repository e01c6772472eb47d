"""Reading photos: colour conversion, alpha over a background, downscaling."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..events import MaskFieldError


def read_image(path: Path, background: tuple[float, float, float] | None = None) -> np.ndarray:
    """Read an image as float32 H x W x 3 in [0, 1].

    RGBA images are composited over ``background`` (white by default): NeRF-synthetic
    scenes are RGBA with a transparent background. 16-bit and greyscale are converted.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            array = _to_float(img)
    except FileNotFoundError:
        raise MaskFieldError(f"image not found: {path}. Put the file there or remove its frame from the camera file.") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise MaskFieldError(f"cannot read image {path}: {exc}. Re-export it as PNG or JPEG.") from None
    if array.shape[2] == 4:
        bg = np.asarray(background if background is not None else (1.0, 1.0, 1.0), dtype=np.float32)
        alpha = array[..., 3:4]
        array = array[..., :3] * alpha + bg * (1 - alpha)
    return np.ascontiguousarray(array[..., :3], dtype=np.float32)


def _to_float(img) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        data = np.asarray(img, dtype=np.float32)
        data = data / (65535.0 if data.max() > 255 else 255.0)
        return np.repeat(data[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        data = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        return data
    data = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return data


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise MaskFieldError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise MaskFieldError(f"cannot read image {path}: {exc}. Re-export it as PNG or JPEG.") from None


def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average resize (anti-aliased), float32 in, float32 out."""
    from PIL import Image

    if image.shape[1] == width and image.shape[0] == height:
        return image
    channels = [
        np.asarray(Image.fromarray(image[..., c]).resize((width, height), Image.Resampling.BOX), dtype=np.float32)
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=-1)


def resize_labels(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize for integer label images."""
    from PIL import Image

    if labels.shape[1] == width and labels.shape[0] == height:
        return labels
    img = Image.fromarray(labels.astype(np.int32))
    return np.asarray(img.resize((width, height), Image.Resampling.NEAREST)).astype(labels.dtype)
