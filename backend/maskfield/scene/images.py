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
            array = _to_float(upright(img))
    except FileNotFoundError:
        raise MaskFieldError(f"image not found: {path}. Put the file there or remove its frame from the camera file.") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise MaskFieldError(f"cannot read image {path}: {exc}. Re-export it as PNG or JPEG, or pass "
                             "--skip-missing to leave out every image that cannot be read.") from None
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


# EXIF orientations that turn the stored pixels by 90 degrees (width and height swap)
TRANSPOSING = {5, 6, 7, 8}


def upright(img):
    """The image as a viewer shows it: a phone's portrait photo is stored landscape with an EXIF
    orientation tag, and the camera that took it saw it upright."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(img) if exif_orientation_of(img) not in (None, 1) else img


def exif_orientation_of(img) -> int | None:
    try:
        value = img.getexif().get(0x0112)  # Orientation
    except Exception:  # a damaged EXIF block: treat as untagged
        return None
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def exif_orientation(path: Path) -> int | None:
    """The EXIF orientation tag of an image file (1-8), or None."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return exif_orientation_of(img)
    except Exception:
        return None


def stored_size(path: Path) -> tuple[int, int]:
    """(width, height) of the pixels as stored, before any EXIF rotation."""
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as the image is shown (EXIF orientation applied), without decoding it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            w, h = img.size
            return (h, w) if exif_orientation_of(img) in TRANSPOSING else (w, h)
    except FileNotFoundError:
        raise MaskFieldError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise MaskFieldError(f"cannot read image {path}: {exc}. Re-export it as PNG or JPEG, or pass "
                             "--skip-missing to leave out every image that cannot be read.") from None


def unreadable(path: Path, decode: bool = True) -> str | None:
    """Why the image at ``path`` cannot be used (empty, truncated, not an image), or None.
    ``decode`` reads every pixel, as ``--skip-missing`` does to leave such images out up front
    instead of stopping the fit at the first; without it only the header is read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if decode:
                img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None


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


def to_view(image: np.ndarray, camera, downscale: float = 1, labels: bool = False) -> np.ndarray:
    """Pixels of ``camera``'s photo (an image, its alpha or its label image, at any size) as
    the view is fitted and scored: brought to ``camera.scaled(downscale)`` (area average;
    nearest for ``labels``), then undistorted onto the pinhole of that size if the lens has
    distortion. Resizing first is ~60x cheaper, and the same: the lens model works on
    normalised coordinates, so it holds at any scale."""
    from .cameras import undistort_image

    target = camera.scaled(downscale)
    resize = resize_labels if labels else resize_image
    return undistort_image(resize(image, target.width, target.height), target, order=0 if labels else 1)


def resize_labels(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize for integer label images."""
    from PIL import Image

    if labels.shape[1] == width and labels.shape[0] == height:
        return labels
    img = Image.fromarray(labels.astype(np.int32))
    return np.asarray(img.resize((width, height), Image.Resampling.NEAREST)).astype(labels.dtype)
