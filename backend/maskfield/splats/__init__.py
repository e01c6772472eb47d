"""Gaussian splats: the model, the renderers, colour fitting and the 3DGS .ply format."""
from .model import Gaussians
from .ply import read_ply, write_ply
from .render import RenderCamera, compositing_weights, render

__all__ = ["Gaussians", "RenderCamera", "compositing_weights", "read_ply", "render", "write_ply"]
