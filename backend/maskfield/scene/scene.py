"""The Scene: cameras, image files, optional seed points, and a train / held-out split."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cameras import Camera
from .images import read_image, to_view


@dataclass
class Scene:
    root: Path
    cameras: list[Camera]  # full resolution, as captured (may carry lens distortion)
    image_paths: list[Path]
    points: np.ndarray | None = None  # N x 3 seed points (COLMAP points3D, Blender surface samples)
    point_colors: np.ndarray | None = None  # N x 3 uint8
    train_indices: list[int] = field(default_factory=list)
    test_indices: list[int] = field(default_factory=list)
    source: str = "transforms"
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    skipped: list[str] = field(default_factory=list)  # frames left out by --skip-missing
    depth_bounds: np.ndarray | None = None  # N x 2 near/far depth per camera (LLFF), if known
    notes: list[str] = field(default_factory=list)  # what the loader corrected, for the user to read
    # Where the camera file's coordinates are far from their 0 (a geo-referenced capture), the
    # point of them the scene's coordinates start from (float64); None: the file's own
    origin: np.ndarray | None = None
    # True for the add-on's renders (transforms.json with a "blender" block): the add-on hands
    # positions over in the Blender scene's own coordinates (face centres, the 3D cursor, the
    # Gaussians it imports), so they are never recentred; Blender is 32-bit there itself
    keep_coordinates: bool = False
    # True where the file says its cameras look outward from among the scene (the add-on's
    # INSIDE layout): poses alone cannot tell that from an orbit in OpenCV's axes
    rendered_inside: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.cameras)

    def camera(self, index: int, downscale: float = 1) -> Camera:
        """The ideal pinhole camera of the undistorted image at this downscale.

        Distorted photos are undistorted on load (see ``load_image``), so every renderer
        sees a plain pinhole camera with the photo's own K.
        """
        return self.cameras[index].undistorted().scaled(downscale)

    def load_image(self, index: int, downscale: float = 1) -> np.ndarray:
        """Float32 H x W x 3 in [0, 1], undistorted, resized; kept in memory after the first read."""
        key = (index, float(downscale))
        if key not in self._cache:
            self._cache[key] = to_view(read_image(self.image_paths[index], self.background), self.cameras[index],
                                       downscale)
        return self._cache[key]

    def forget_image(self, index: int, downscale: float = 1) -> None:
        """Drop an image from the memory cache (its holder keeps a copy elsewhere, on a GPU)."""
        self._cache.pop((index, float(downscale)), None)

    def bounds(self) -> tuple[np.ndarray, float]:
        """Centre and radius of the region the cameras look at (points if there are any)."""
        if self.points is not None and len(self.points) > 0:
            lo, hi = np.percentile(self.points, [2, 98], axis=0)
            return (lo + hi) / 2, float(np.linalg.norm(hi - lo) / 2)
        centers = np.stack([c.center for c in self.cameras])
        dirs = np.stack([c.camtoworld[:3, 2] for c in self.cameras])
        if self.depth_bounds is not None:
            # forward-facing captures: the rays barely cross, but the depths are known
            near, far = np.median(self.depth_bounds, axis=0)
            focus = centers.mean(0) + dirs.mean(0) / max(np.linalg.norm(dirs.mean(0)), 1e-12) * 0.5 * (near + far)
            return focus, float(0.5 * (far - near) + np.linalg.norm(centers - centers.mean(0), axis=1).max())
        focus = _closest_point_to_rays(centers, dirs)
        radius = float(np.median(np.linalg.norm(centers - focus, axis=1)))
        return focus, radius * 0.5

    @property
    def has_alpha(self) -> bool:
        """True when the images carry transparency (renders, NeRF-synthetic): they are then
        composited over ``background``, and fitting must use that same background."""
        if "has_alpha" not in self._cache:
            from PIL import Image

            with Image.open(self.image_paths[0]) as img:
                self._cache["has_alpha"] = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
        return self._cache["has_alpha"]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cameras]


def _closest_point_to_rays(origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Least-squares point nearest to all camera axes: where a capture is looking."""
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for o, d in zip(origins, dirs):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ o
    try:
        return np.linalg.solve(A, b)
    except np.linalg.LinAlgError:
        return origins.mean(axis=0)
