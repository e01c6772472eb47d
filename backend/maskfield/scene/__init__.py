"""Scenes: cameras, images and seed points from the capture formats users bring."""
from .cameras import Camera, opencv_to_opengl, opengl_to_opencv, undistort_image
from .loaders import load_scene
from .scene import Scene

__all__ = ["Camera", "Scene", "load_scene", "opengl_to_opencv", "opencv_to_opengl", "undistort_image"]
