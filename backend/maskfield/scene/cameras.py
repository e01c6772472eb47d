"""Cameras and the one place where camera conventions are converted.

Internally every camera is stored in the OpenCV convention (x right, y down, z forward)
as a camera-to-world matrix. transforms.json files (nerfstudio, Instant-NGP,
NeRF-synthetic) and Blender use OpenGL axes (x right, y up, camera looking down -z);
COLMAP stores world-to-camera in OpenCV axes; LLFF's ``poses_bounds.npy`` stores
camera-to-world 3x4 blocks whose rotation columns are (down, right, back).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LENSES = ("pinhole", "fisheye")
# 3DGS's and gsplat's near plane; ``near_plane`` lowers it for scenes in small units
DEFAULT_NEAR = 0.01

# Flips y and z: OpenGL camera axes <-> OpenCV camera axes (its own inverse).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def opengl_to_opencv(c2w_gl: np.ndarray) -> np.ndarray:
    """Camera-to-world in OpenGL axes -> camera-to-world in OpenCV axes."""
    return np.asarray(c2w_gl, dtype=np.float64) @ GL_TO_CV


def opencv_to_opengl(c2w_cv: np.ndarray) -> np.ndarray:
    return np.asarray(c2w_cv, dtype=np.float64) @ GL_TO_CV


def llff_to_opencv(pose_3x4: np.ndarray) -> np.ndarray:
    """An LLFF camera-to-world block (columns down, right, back, centre) -> 4x4 OpenCV c2w.

    (down, right, back) -> OpenGL (right, up, back) = (c1, -c0, c2), then the usual flip.
    """
    pose = np.asarray(pose_3x4, dtype=np.float64)[:3, :4]
    c2w_gl = np.eye(4)
    c2w_gl[:3, 0], c2w_gl[:3, 1], c2w_gl[:3, 2], c2w_gl[:3, 3] = pose[:, 1], -pose[:, 0], pose[:, 2], pose[:, 3]
    return opengl_to_opencv(c2w_gl)


def opencv_to_llff(c2w_cv: np.ndarray) -> np.ndarray:
    """The inverse of ``llff_to_opencv``: 4x4 OpenCV c2w -> LLFF 3x4 (down, right, back, centre)."""
    gl = opencv_to_opengl(c2w_cv)
    return np.stack([-gl[:3, 1], gl[:3, 0], gl[:3, 2], gl[:3, 3]], axis=1)


def world_to_camera_to_c2w(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """COLMAP's world-to-camera (R, t) -> camera-to-world (both OpenCV axes)."""
    w2c = np.eye(4)
    w2c[:3, :3] = rotation
    w2c[:3, 3] = translation
    return np.linalg.inv(w2c)


@dataclass
class Camera:
    """A camera: a pinhole with OpenCV's lens distortion, or a fisheye lens.

    ``camtoworld`` is 4x4 in OpenCV axes. Intrinsics are in pixels of the full-size image.
    ``lens`` "pinhole": ``distortion`` holds OpenCV's coefficients in its order (k1 k2 p1 p2,
    then optionally k3, and k4 k5 k6 of its rational model); "fisheye": OpenCV's (and
    COLMAP's OPENCV_FISHEYE) equidistant model, ``distortion`` k1 k2 k3 k4.
    """

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    camtoworld: np.ndarray
    distortion: np.ndarray = field(default_factory=lambda: np.zeros(4))  # see the class's note
    lens: str = "pinhole"
    near: float = DEFAULT_NEAR  # the renderers' near plane (``near_plane``), in the scene's units

    def __post_init__(self):
        if self.lens not in LENSES:
            raise ValueError(f"lens must be one of {LENSES}, got {self.lens!r}")

    @property
    def has_distortion(self) -> bool:
        # a fisheye is never a pinhole, even with all its coefficients 0 (the plain equidistant lens)
        return self.lens == "fisheye" or bool(np.any(np.abs(self.distortion) > 0))

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    @property
    def viewmat(self) -> np.ndarray:
        """World-to-camera 4x4 (OpenCV axes), what renderers take."""
        return np.linalg.inv(self.camtoworld)

    @property
    def center(self) -> np.ndarray:
        return self.camtoworld[:3, 3].copy()

    def scaled(self, downscale: float) -> "Camera":
        """The same camera for an image resized by 1/downscale (pixel-centre aware)."""
        if downscale == 1:
            return self
        width = max(1, int(round(self.width / downscale)))
        height = max(1, int(round(self.height / downscale)))
        sx, sy = width / self.width, height / self.height
        return Camera(
            name=self.name,
            width=width,
            height=height,
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=self.cx * sx,
            cy=self.cy * sy,
            camtoworld=self.camtoworld.copy(),
            distortion=self.distortion.copy(),
            lens=self.lens,
            near=self.near,
        )

    def undistorted(self) -> "Camera":
        return Camera(self.name, self.width, self.height, self.fx, self.fy, self.cx, self.cy,
                      self.camtoworld.copy(), np.zeros(4), near=self.near)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N,3) -> pixel coordinates (N,2) and depths (N,), ignoring distortion."""
        w2c = self.viewmat
        cam = points @ w2c[:3, :3].T + w2c[:3, 3]
        z = cam[:, 2]
        safe = np.where(np.abs(z) < 1e-12, 1e-12, z)
        u = self.fx * cam[:, 0] / safe + self.cx
        v = self.fy * cam[:, 1] / safe + self.cy
        return np.stack([u, v], axis=1), z

    def unproject(self, pixels: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Pixel coordinates (N,2) at depths (N,) -> world points (N,3): ``project``'s inverse."""
        local = np.stack([(pixels[:, 0] - self.cx) / self.fx * depth, (pixels[:, 1] - self.cy) / self.fy * depth,
                          depth], 1)
        return local @ self.camtoworld[:3, :3].T + self.camtoworld[:3, 3]

    def frames(self, points: np.ndarray) -> np.ndarray:
        """(N,) bool: which world points lie in front of the camera and inside its image
        (distortion and occlusion ignored)."""
        uv, z = self.project(points)
        return (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < self.width) & (uv[:, 1] >= 0) & (uv[:, 1] < self.height)


def near_plane(cameras, center: np.ndarray) -> float:
    """The renderers' near plane for a capture: 3DGS's 0.01, or 1% of the cameras' median
    distance to what they look at where that is less than 1 (a capture in kilometres, a
    product shot in metres at 3 cm, a COLMAP model of small scale). With 0.01 there, every
    Gaussian lies before the near plane and none is drawn: the fit learns nothing and the
    mask field finds no pixel covered. Scenes at the usual scale keep 0.01, to the digit."""
    distance = float(np.median([np.linalg.norm(cam.center - center) for cam in cameras]))
    return DEFAULT_NEAR * min(1.0, distance) if np.isfinite(distance) and distance > 0 else DEFAULT_NEAR


def whole_downscale(cameras, long_side: int) -> float:
    """The smallest whole-number downscale that brings the longest image side of ``cameras``
    to at most ``long_side`` (1 for images already that small). The largest camera decides,
    where a capture mixes cameras."""
    longest = max(max(cam.width, cam.height) for cam in cameras)
    return float(max(1, -(-longest // int(long_side))))


def view_downscale(camera, downscale: float, max_side: int = 0) -> float:
    """One view's downscale: with ``max_side``, the smallest whole number that brings this
    camera's own long side to at most that; else ``downscale``, the same for every view."""
    return whole_downscale([camera], max_side) if max_side else float(downscale)


def sizes_text(cameras) -> str:
    """The image sizes of ``cameras`` for a log line: "200x150", or where a capture mixes them
    (portrait and landscape photos, a rig of two cameras) each size with its count of views,
    the commonest first: "200x150 (16 views), 150x200 (8)"."""
    from collections import Counter

    counts = Counter((cam.width, cam.height) for cam in cameras).most_common()
    if len(counts) == 1:
        return "{}x{}".format(*counts[0][0])
    parts = [f"{w}x{h} ({n}{' views' if i == 0 else ''})" for i, ((w, h), n) in enumerate(counts)]
    return ", ".join(parts)


def _padded(coeffs, count: int) -> list[float]:
    """The first ``count`` coefficients, those a camera file left out as 0."""
    values = [float(c) for c in np.asarray(coeffs, np.float64).ravel()[:count]]
    return values + [0.0] * (count - len(values))


def distort_normalized(x: np.ndarray, y: np.ndarray, coeffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's radial-tangential model on normalised image coordinates: coefficients in its
    order k1 k2 p1 p2 [k3 [k4 k5 k6]], missing ones 0 (k4-k6 divide, its rational model)."""
    k1, k2, p1, p2, k3, k4, k5, k6 = _padded(coeffs, 8)
    r2 = x * x + y * y
    radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def distort_fisheye_normalized(x: np.ndarray, y: np.ndarray, coeffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's fisheye (equidistant) model, as COLMAP's OPENCV_FISHEYE: a ray at angle theta
    from the axis lands at radius theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)."""
    r = np.sqrt(x * x + y * y)
    theta_d = fisheye_radius(np.arctan(r), coeffs)
    # theta_d / r -> 1 at the centre (both are r to first order)
    scale = np.where(r > 1e-12, theta_d / np.maximum(r, 1e-12), 1.0)
    return x * scale, y * scale


def fisheye_radius(theta: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """The fisheye model's normalised image radius of a ray at ``theta`` from the axis."""
    k1, k2, k3, k4 = _padded(coeffs, 4)
    t2 = theta * theta
    return theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))


def distort(camera: Camera, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the ideal pinhole's normalised coordinates (x, y) land in ``camera``'s photo, in
    normalised coordinates of its own K."""
    if camera.lens == "fisheye":
        return distort_fisheye_normalized(x, y, camera.distortion)
    return distort_normalized(x, y, camera.distortion)


def undistort_image(image: np.ndarray, camera: Camera, order: int = 1) -> np.ndarray:
    """Resample a distorted photo onto the ideal pinhole camera with the same K.

    For each output pixel we distort its ray (a closed-form forward model, no iteration)
    and sample the photo there. ``order`` 1 for colours, 0 for label images.
    """
    from scipy.ndimage import map_coordinates

    if not camera.has_distortion:
        return image
    h, w = image.shape[:2]
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    x = (u + 0.5 - camera.cx) / camera.fx
    y = (v + 0.5 - camera.cy) / camera.fy
    xd, yd = distort(camera, x, y)
    src_u = xd * camera.fx + camera.cx - 0.5
    src_v = yd * camera.fy + camera.cy - 0.5
    coords = np.stack([src_v, src_u])
    if image.ndim == 2:
        return map_coordinates(image, coords, order=order, mode="nearest").astype(image.dtype)
    channels = [map_coordinates(image[..., c], coords, order=order, mode="nearest") for c in range(image.shape[2])]
    return np.stack(channels, axis=-1).astype(image.dtype)
