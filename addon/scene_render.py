# SPDX-License-Identifier: GPL-3.0-or-later
"""Render chosen Blender objects into a MaskField scene folder.

The folder is the first form of docs/contracts.md: ``images/*.png``, ``transforms.json``
(nerfstudio: OpenGL camera-to-world matrices, ``fl_x fl_y cx cy w h``), the object-index
pass as ``labels/<stem>.png`` with ``labels/objects.json``, and ``points.ply`` (surface
points with their material colours) named by ``ply_file_path``.

Nothing of the user's scene is changed: the objects are rendered as temporary copies in a
temporary scene that is removed afterwards, so their pass indices, transforms, materials and
the scene's render settings stay as they were. The index pass is read from an uncompressed
multilayer EXR with numpy (no compositor, which changed its Python API in Blender 5.0).

Works from an operator (one view per call of :meth:`RenderJob.step`, so the UI can breathe
between views) and from scripts (:func:`render_scene_folder`), e.g. ``tools/make_tabletop.py``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence, cast

import bpy
import numpy as np
from mathutils import Matrix, Vector

from . import imageio

GEOMETRY_TYPES = {"MESH", "CURVE", "SURFACE", "META", "FONT", "CURVES", "POINTCLOUD", "VOLUME"}
LAYOUTS = ("HEMISPHERE", "SPHERE", "RINGS", "INSIDE", "WALK")
# WALK: the side the cameras walk past, as the yaw (degrees) that turns the front (-Y) side to it
WALK_SIDES = {"FRONT": 0.0, "RIGHT": 90.0, "BACK": 180.0, "LEFT": -90.0}
# WALK: the least half-length of a pass, as a fraction of its distance from the middle
MIN_WALK_HALF_LENGTH = 0.25
TEMP_TAG = "maskfield_temp"


class RenderError(RuntimeError):
    """A problem with the input a person can fix (message says what to do)."""


@dataclass
class RenderSettings:
    views: int = 40
    resolution: int | tuple[int, int] = 128
    samples: int = 16
    engine: str = "CYCLES"
    # HEMISPHERE / SPHERE (fibonacci), RINGS, INSIDE (a room from its middle) or WALK (past one side)
    layout: str = "HEMISPHERE"
    min_elevation: float = 10.0  # degrees, for HEMISPHERE
    max_elevation: float = 70.0
    ring_elevations: tuple[float, ...] = (15.0, 35.0, 60.0)  # degrees, for RINGS
    # INSIDE: cameras on a small circle round the middle of the bounds (this fraction of the
    # smaller horizontal half-size) at this fraction of their height, looking outward at these
    # pitches (degrees, negative: down), as a person turning in the middle of a room
    inside_radius: float = 0.2
    inside_height: float = 0.75
    inside_pitches: tuple[float, ...] = (-10.0, -30.0)
    # WALK: a person walking past one side of the objects (FRONT: Blender's front, the -Y side;
    # BACK +Y, LEFT -X, RIGHT +X; for a counter or a shelf against a wall): one straight pass per
    # elevation (degrees, from the bounds' middle), as long as this fraction of the bounds' width
    # along that side, at this fraction of the orbit's distance, each camera turned this far from
    # straight ahead toward the middle
    walk_side: str = "FRONT"
    walk_elevations: tuple[float, ...] = (20.0, 40.0)
    walk_width: float = 1.0
    walk_distance: float = 0.5
    walk_turn: float = 0.5
    lens: float = 35.0  # mm, on a 36 mm sensor
    margin: float = 1.1  # distance factor so that the bounding sphere fits the view
    seed: int = 0
    points: int = 20000  # surface points for points.ply (0: none)
    lighting: str = "SCENE"  # SCENE: the scene's lights and world (studio light if none); STUDIO
    use_gpu: bool = False
    labels: bool = True
    stem_format: str = "frame_{:05d}"
    # False: the world is rendered behind the objects (opaque images, as photos are)
    transparent: bool = True
    # held-out views off the training trajectory: a ring at this elevation (degrees), at this
    # factor of the training distance (INSIDE: at this pitch, on a circle this factor of the
    # training circle's radius; WALK: a pass at this elevation and factor of the distance);
    # listed in transforms.json's "test_filenames"
    holdout_views: int = 0
    holdout_elevation: float = 30.0
    holdout_distance: float = 1.0
    holdout_stem_format: str = "holdout_{:05d}"
    extra: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        if isinstance(self.resolution, (tuple, list)):
            return int(self.resolution[0]), int(self.resolution[1])
        return int(self.resolution), int(self.resolution)


# ----------------------------------------------------------------------------------------
# geometry helpers


def scene_depsgraph(scene: Any):
    """An up-to-date evaluated depsgraph of ``scene`` (also when it is not the active one)."""
    ctx = bpy.context
    if getattr(ctx, "scene", None) == scene and getattr(ctx, "view_layer", None) is not None:
        ctx.view_layer.update()
        return ctx.evaluated_depsgraph_get()
    vl = scene.view_layers[0]
    vl.update()
    return vl.depsgraph


def _renderable(objects: Iterable[bpy.types.Object]) -> list[bpy.types.Object]:
    return [ob for ob in objects if ob is not None and ob.type in GEOMETRY_TYPES]


# ----------------------------------------------------------------------------------------
# collection instances: the objects they show, as the render and the face table take them


class _Placed:
    """An evaluated object seen at another place: its data, but ``matrix_world`` given."""

    def __init__(self, evaluated, matrix_world: Matrix):
        self._evaluated = evaluated
        self.matrix_world = matrix_world

    def __getattr__(self, attr: str):
        return getattr(self._evaluated, attr)


class InstancePart:
    """One object that a collection instance shows (an Empty instancing a collection, as the
    asset browser makes them), standing in for an object of its own where the render, the
    surface points and the face table read one: the member's data (mesh, materials,
    modifiers) placed where the instance shows it. Its name is "<instance> / <member>".

    ``relative``: the member's world matrix in the instancer's frame (from the depsgraph,
    nested instances and the collection's instance offset included), so that a moved instance
    carries its part along."""

    def __init__(self, instancer: bpy.types.Object, member: bpy.types.Object, relative: Matrix, name: str):
        self.instancer = instancer
        self.member = member
        self.relative = relative.copy()
        self.name = name
        self.type = member.type

    @property
    def matrix_world(self) -> Matrix:
        return self.instancer.matrix_world @ self.relative

    def evaluated_get(self, depsgraph):
        return _Placed(self.member.evaluated_get(depsgraph), self.matrix_world)

    def instance_info(self) -> dict:
        """What the face table keeps to find the part again (``find_instance_part``)."""
        return {"instancer": self.instancer.name, "member": self.member.name,
                "relative": [[float(self.relative[r][c]) for c in range(4)] for r in range(4)]}

    def __getattr__(self, attr: str):
        return getattr(self.member, attr)


def is_collection_instance(ob) -> bool:
    return getattr(ob, "instance_type", "NONE") == "COLLECTION" and getattr(ob, "instance_collection", None) is not None


def instance_parts(instancers: Sequence[bpy.types.Object], depsgraph=None) -> list[InstancePart]:
    """The renderable objects the given collection instances show, one part per object shown
    (an object shown twice by nested collections is two parts, "<instance> / <member> 2")."""
    if not instancers:
        return []
    if depsgraph is None:
        depsgraph = scene_depsgraph(bpy.context.scene)
    wanted = {ob.name: ob for ob in instancers}
    parts: list[InstancePart] = []
    seen: dict[str, int] = {}
    for inst in depsgraph.object_instances:
        if not inst.is_instance or inst.parent is None or inst.object is None:
            continue
        instancer = wanted.get(inst.parent.original.name)
        member = inst.object.original
        if instancer is None or member.type not in GEOMETRY_TYPES:
            continue
        name = f"{instancer.name} / {member.name}"
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} {seen[name]}"
        relative = instancer.matrix_world.inverted_safe() @ inst.matrix_world
        parts.append(InstancePart(instancer, member, relative, name))
    return parts


def find_instance_part(info: dict, name: str) -> InstancePart | None:
    """The part named ``name`` that a face-table entry's ``instance`` describes, or None when
    its instance or member is gone from the file, or the instance no longer instances a
    collection. (The member may sit in a collection nested in the instanced one: the stored
    matrix places it either way.)"""
    instancer = bpy.data.objects.get(info.get("instancer", ""))
    member = bpy.data.objects.get(info.get("member", ""))
    if instancer is None or member is None or not is_collection_instance(instancer):
        return None
    return InstancePart(instancer, member, Matrix(info["relative"]), name)


REALIZE_NAME = "MaskField realize instances (temporary)"


def geometry_node_instancers(objects: Sequence[bpy.types.Object], depsgraph) -> set[str]:
    """Names of the mesh objects among ``objects`` whose geometry nodes make instances (rocks
    scattered on a ground): the render shows them, but they are not faces of the object's
    evaluated mesh until realized (``shown_object``)."""
    names = {ob.name for ob in objects if not isinstance(ob, InstancePart) and ob.type == "MESH"}
    found: set[str] = set()
    if not names:
        return found
    for inst in depsgraph.object_instances:
        if not inst.is_instance or inst.parent is None or inst.object is None:
            continue
        parent = inst.parent.original.name
        # a geometry-nodes instance is reported as its own object (a collection instance's is
        # the member's)
        if parent in names and inst.object.original.name == parent:
            found.add(parent)
    return found


def realizes(ob, instancing: set[str]) -> bool:
    """Whether ``ob`` is one of ``instancing`` (``geometry_node_instancers``): its faces are
    taken with its geometry-nodes instances realized."""
    return not isinstance(ob, InstancePart) and ob.name in instancing


def _realize_group() -> bpy.types.NodeTree:
    group = bpy.data.node_groups.new(REALIZE_NAME, "GeometryNodeTree")
    group.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    group.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    given, result = group.nodes.new("NodeGroupInput"), group.nodes.new("NodeGroupOutput")
    realize = group.nodes.new("GeometryNodeRealizeInstances")
    group.links.new(given.outputs[0], realize.inputs[0])
    group.links.new(realize.outputs[0], result.inputs[0])
    return group


@contextlib.contextmanager
def shown_object(ob: bpy.types.Object, depsgraph, realize: bool = False):
    """The evaluated ``ob``, whose mesh is what the user sees (modifiers, shape keys). With
    ``realize``, its geometry-nodes instances are faces of that mesh too: a temporary copy of
    the object (sharing its data) with a Realize Instances modifier last is evaluated, and
    removed with its node group afterwards."""
    if not realize:
        yield ob.evaluated_get(depsgraph) if depsgraph is not None else ob
        return
    scene = depsgraph.scene if depsgraph is not None else bpy.context.scene
    scene = getattr(scene, "original", scene)
    group = _realize_group()
    tmp = ob.copy()
    try:
        tmp.name = REALIZE_NAME
        cast(bpy.types.NodesModifier, tmp.modifiers.new(REALIZE_NAME, "NODES")).node_group = group
        scene.collection.objects.link(tmp)
        tmp.hide_viewport = False
        yield tmp.evaluated_get(scene_depsgraph(scene))
    finally:
        bpy.data.objects.remove(tmp, do_unlink=True)
        bpy.data.node_groups.remove(group)
        scene_depsgraph(scene)  # evaluated again without the copy


def world_bounds(objects: Sequence[bpy.types.Object], depsgraph=None) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world bounds (min, max) of the objects' (evaluated) bounding boxes."""
    corners = []
    for ob in objects:
        if depsgraph is not None:
            ob = ob.evaluated_get(depsgraph)
        mw = np.array(ob.matrix_world, dtype=np.float64)
        bb = np.array([tuple(c) for c in ob.bound_box], dtype=np.float64)
        if not len(bb):
            continue
        corners.append(bb @ mw[:3, :3].T + mw[:3, 3])
    if not corners:
        raise RenderError("the chosen objects have no geometry to render")
    pts = np.concatenate(corners)
    return pts.min(0), pts.max(0)


ENGINES = ("CYCLES", "EEVEE", "WORKBENCH")
# the engine's identifier by Blender version: EEVEE Next is "BLENDER_EEVEE_NEXT" in 4.2-4.5
# and "BLENDER_EEVEE" again from 5.0
ENGINE_IDS = {"CYCLES": ("CYCLES",), "EEVEE": ("BLENDER_EEVEE_NEXT", "BLENDER_EEVEE"),
              "WORKBENCH": ("BLENDER_WORKBENCH",)}


def set_render_engine(render, engine: str) -> str:
    """Set ``render.engine`` to the running Blender's identifier of ``engine``; returns it."""
    for ident in ENGINE_IDS[engine]:
        try:
            render.engine = ident
            return ident
        except TypeError:
            continue
    raise RenderError(f"this Blender has no {engine} render engine")


def grey_world(name: str, grey: float, strength: float):
    """A new world of a uniform grey, set on its Background node too (the node tree is what Cycles renders)."""
    world = bpy.data.worlds.new(name)
    world.color = (grey, grey, grey)
    tree = getattr(world, "node_tree", None)
    if tree is None and hasattr(world, "use_nodes"):
        world.use_nodes = True
        tree = world.node_tree
    if tree is not None:
        bg = next((n for n in tree.nodes if n.bl_idname == "ShaderNodeBackground"), None)
        if bg is not None:
            bg.inputs["Color"].default_value = (grey, grey, grey, 1.0)
            bg.inputs["Strength"].default_value = strength
    return world


def camera_intrinsics(cam: bpy.types.Camera, width: int, height: int,
                      pixel_aspect: tuple[float, float] = (1.0, 1.0)) -> dict[str, float]:
    """Pinhole intrinsics in pixels of a Blender perspective camera, sensor fit handled."""
    if cam.type != "PERSP":
        raise RenderError(f"camera '{cam.name}' is {cam.type.lower()}; only perspective cameras are supported")
    ax, ay = pixel_aspect
    fit = cam.sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if width * ax >= height * ay else "VERTICAL"
        sensor = cam.sensor_width
    else:
        sensor = cam.sensor_width if fit == "HORIZONTAL" else cam.sensor_height
    if fit == "HORIZONTAL":
        fit_units = width * ax
    else:
        fit_units = height * ay
    f_units = cam.lens / sensor * fit_units  # focal length in "aspect units"
    fl_x = f_units / ax
    fl_y = f_units / ay
    cx = width / 2.0 - cam.shift_x * fit_units / ax
    cy = height / 2.0 + cam.shift_y * fit_units / ay
    return {"fl_x": fl_x, "fl_y": fl_y, "cx": cx, "cy": cy, "w": int(width), "h": int(height)}


def _look(location: Vector, direction: Vector) -> Matrix:
    """Camera-to-world matrix at ``location`` looking along ``direction``, world Z up."""
    return Matrix.Translation(location) @ direction.to_track_quat("-Z", "Y").to_matrix().to_4x4()


def _ring_angles(settings: RenderSettings, angles_deg: Sequence[float], n: int) -> list[tuple[float, float]]:
    """(angle, azimuth) pairs in radians: ``n`` views shared over rings at ``angles_deg``,
    more where the ring is longer (cosine of its angle), alternate rings offset by half a step."""
    rng = np.random.default_rng(settings.seed)
    az0 = float(rng.uniform(0.0, 2.0 * math.pi))
    angles = [math.radians(a) for a in angles_deg] or [math.radians(30.0)]
    weights = np.array([max(math.cos(a), 1e-3) for a in angles])
    counts = np.floor(weights / weights.sum() * n).astype(int)
    counts[np.argsort(-weights)[: n - counts.sum()]] += 1
    out = []
    for r, (a, c) in enumerate(zip(angles, counts)):
        for j in range(int(c)):
            out.append((a, az0 + 2.0 * math.pi * (j + 0.5 * (r % 2)) / max(1, c)))
    return out


def orbit_poses(settings: RenderSettings, center: np.ndarray, radius: float, fov_min: float) -> list[Matrix]:
    """Camera-to-world matrices looking at ``center`` from around the bounding sphere
    (HEMISPHERE, SPHERE or RINGS)."""
    n = max(1, int(settings.views))
    dist = orbit_distance(settings, radius, fov_min)
    layout = settings.layout.upper()
    if layout in ("HEMISPHERE", "SPHERE"):
        az0 = float(np.random.default_rng(settings.seed).uniform(0.0, 2.0 * math.pi))
        golden = math.pi * (3.0 - math.sqrt(5.0))
        if layout == "HEMISPHERE":
            lo, hi = math.radians(settings.min_elevation), math.radians(settings.max_elevation)
        else:
            lo, hi = math.radians(-75.0), math.radians(75.0)
        s_lo, s_hi = math.sin(lo), math.sin(hi)
        dirs = [(math.asin(s_lo + (s_hi - s_lo) * (i + 0.5) / n), az0 + i * golden)  # equal-area bands
                for i in range(n)]
    else:
        dirs = _ring_angles(settings, settings.ring_elevations, n)
    c = Vector(center.tolist())
    poses = []
    for elev, az in dirs:
        d = Vector((math.cos(elev) * math.cos(az), math.cos(elev) * math.sin(az), math.sin(elev)))
        poses.append(_look(c + d * dist, -d))
    return poses


def inside_poses(settings: RenderSettings, lo: np.ndarray, hi: np.ndarray,
                 radius_factor: float = 1.0, pitches: Sequence[float] | None = None) -> list[Matrix]:
    """INSIDE: cameras on a horizontal circle round the middle of the bounds ``lo``..``hi``,
    each looking outward (away from the middle) at the settings' pitches, as a person turning
    in the middle of a room films its walls; ``radius_factor`` scales the circle."""
    n = max(1, int(settings.views))
    mid = (np.asarray(lo, dtype=float) + np.asarray(hi, dtype=float)) / 2.0
    half = (np.asarray(hi, dtype=float) - np.asarray(lo, dtype=float)) / 2.0
    circle = settings.inside_radius * radius_factor * float(min(half[0], half[1]))
    eye_z = float(lo[2]) + settings.inside_height * float(hi[2] - lo[2])
    poses = []
    for pitch, az in _ring_angles(settings, settings.inside_pitches if pitches is None else pitches, n):
        out = Vector((math.cos(az), math.sin(az), 0.0))
        location = Vector((float(mid[0]), float(mid[1]), eye_z)) + out * circle
        direction = Vector((math.cos(pitch) * out.x, math.cos(pitch) * out.y, math.sin(pitch)))
        poses.append(_look(location, direction))
    return poses


def orbit_distance(settings: RenderSettings, radius: float, fov_min: float) -> float:
    """How far an orbit's cameras stand from the middle: the bounding sphere of ``radius``
    fills ``1 / margin`` of the narrower field of view ``fov_min``."""
    return radius * settings.margin / math.sin(fov_min / 2.0)


def walk_distance(settings: RenderSettings, radius: float, fov_min: float) -> float:
    """WALK: how far the passes are from the bounds' middle (a fraction of the orbit's)."""
    return settings.walk_distance * orbit_distance(settings, radius, fov_min)


def walk_poses(settings: RenderSettings, lo: np.ndarray, hi: np.ndarray, fov_min: float,
               distance_factor: float = 1.0, elevations: Sequence[float] | None = None,
               offset: float | None = None) -> list[Matrix]:
    """WALK: straight passes along the ``walk_side`` of the bounds ``lo``..``hi`` (FRONT: along X
    on their -Y side, where Blender's front view looks from), one per elevation, ``views``
    shared evenly. Each camera looks toward the bounds' middle line, turned ``walk_turn`` of the
    way from straight ahead to the middle, as a person filming while walking sideways keeps the
    scene in view. Alternate passes are offset by half a step; ``offset`` (0..1) sets where the
    steps fall."""
    side = settings.walk_side.upper()
    if side not in WALK_SIDES:
        raise RenderError(f"unknown walk side {settings.walk_side!r}; use one of {', '.join(WALK_SIDES)}")
    yaw = Matrix.Rotation(math.radians(WALK_SIDES[side]), 4, "Z")
    n = max(1, int(settings.views))
    center, radius = bounding_sphere(lo, hi)
    middle = Vector(center.tolist())
    dist = walk_distance(settings, radius, fov_min) * distance_factor
    along = 0 if side in ("FRONT", "BACK") else 1  # the bounds' axis the walk runs along
    # never shorter than half the distance: past a thing seen edge-on (a wall along the walk's
    # line of sight) the cameras would otherwise all stand in one place, with nothing to triangulate
    half_width = max(settings.walk_width * float(hi[along] - lo[along]) / 2.0, MIN_WALK_HALF_LENGTH * dist)
    angles = [math.radians(e) for e in (settings.walk_elevations if elevations is None else elevations)]
    angles = angles or [math.radians(30.0)]
    counts = [n // len(angles) + (1 if r < n % len(angles) else 0) for r in range(len(angles))]
    poses = []
    for r, (elev, count) in enumerate(zip(angles, counts)):
        shift = 0.25 + 0.5 * (r % 2) if offset is None else offset
        for j in range(count):
            t = -1.0 + 2.0 * ((j + shift) % count) / count if count > 1 else 0.0
            # in the front's frame round the middle, then turned to the side walked past
            location = Vector((half_width * t, -dist * math.cos(elev), dist * math.sin(elev)))
            target = Vector(((1.0 - settings.walk_turn) * half_width * t, 0.0, 0.0))
            location, target = middle + yaw @ location, middle + yaw @ target
            poses.append(_look(location, target - location))
    return poses


def camera_poses(settings: RenderSettings, lo: np.ndarray, hi: np.ndarray, fov_min: float) -> list[Matrix]:
    """The training cameras' camera-to-world matrices for the objects' bounds ``lo``..``hi``."""
    layout = settings.layout.upper()
    if layout not in LAYOUTS:
        raise RenderError(f"unknown camera layout {settings.layout!r}; use one of {', '.join(LAYOUTS)}")
    if layout == "INSIDE":
        return inside_poses(settings, lo, hi)
    if layout == "WALK":
        return walk_poses(settings, lo, hi, fov_min)
    center, radius = bounding_sphere(lo, hi)
    return orbit_poses(settings, center, radius, fov_min)


def holdout_poses(settings: RenderSettings, lo: np.ndarray, hi: np.ndarray, fov_min: float) -> list[Matrix]:
    """Held-out cameras off the training trajectory, at azimuths of their own (another seed):
    ``holdout_views`` on a ring at ``holdout_elevation`` and ``holdout_distance`` times the
    training distance, or for INSIDE at that pitch on a circle that factor of the training one,
    or for WALK on a pass at that elevation and factor of the distance, at steps of their own."""
    from dataclasses import replace

    other = replace(settings, views=settings.holdout_views, seed=settings.seed + 7919)
    if settings.layout.upper() == "INSIDE":
        return inside_poses(other, lo, hi, settings.holdout_distance, (settings.holdout_elevation,))
    if settings.layout.upper() == "WALK":
        offset = float(np.random.default_rng(other.seed).uniform(0.0, 1.0))
        return walk_poses(other, lo, hi, fov_min, settings.holdout_distance, (settings.holdout_elevation,), offset)
    center, radius = bounding_sphere(lo, hi)
    ring = replace(other, layout="RINGS", ring_elevations=(settings.holdout_elevation,),
                   margin=settings.margin * settings.holdout_distance)
    return orbit_poses(ring, center, radius, fov_min)


def bounding_sphere(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and radius of the sphere round the box ``lo``..``hi`` (never under 1e-3)."""
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    return (lo + hi) / 2.0, max(float(np.linalg.norm(hi - lo)) / 2.0, 1e-3)


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(c, 1.0 / 2.4) - 0.055)


def material_base_color(mat: bpy.types.Material | None) -> tuple[float, float, float]:
    """Linear RGB base colour of a material (Principled BSDF, else viewport colour)."""
    if mat is None:
        return (0.8, 0.8, 0.8)
    tree = getattr(mat, "node_tree", None)
    if tree is not None:
        for node in tree.nodes:
            if node.bl_idname == "ShaderNodeBsdfPrincipled" or node.bl_idname == "ShaderNodeBsdfDiffuse":
                sock = node.inputs.get("Base Color") or node.inputs.get("Color")
                if sock is not None and not sock.is_linked:
                    v = sock.default_value
                    return (float(v[0]), float(v[1]), float(v[2]))
            if node.bl_idname == "ShaderNodeEmission":
                sock = node.inputs.get("Color")
                if sock is not None and not sock.is_linked:
                    v = sock.default_value
                    return (float(v[0]), float(v[1]), float(v[2]))
    v = mat.diffuse_color
    return (float(v[0]), float(v[1]), float(v[2]))


def _triangles_world(ob: bpy.types.Object, depsgraph,
                     realize: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """World-space triangle corners (T x 3 x 3), sRGB colours per triangle (T x 3)."""
    if realize:
        with shown_object(ob, depsgraph, realize=True) as ob_eval:
            return _triangles_of(ob_eval)
    return _triangles_of(ob.evaluated_get(depsgraph) if depsgraph is not None else ob)


def _triangles_of(ob_eval) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    try:
        me = ob_eval.to_mesh()
    except RuntimeError:
        return None
    try:
        if me is None or not len(me.polygons):
            return None
        # fan triangles from each face's own corners: unlike loop_triangles, whose choice of
        # quad diagonal may change between runs on ties, this depends on the topology only
        npoly, nloop, nv = len(me.polygons), len(me.loops), len(me.vertices)
        co = np.empty(nv * 3, dtype=np.float32)
        me.vertices.foreach_get("co", co)
        start = np.empty(npoly, dtype=np.int64)
        me.polygons.foreach_get("loop_start", start)
        total = np.empty(npoly, dtype=np.int64)
        me.polygons.foreach_get("loop_total", total)
        poly_mat = np.empty(npoly, dtype=np.int32)
        me.polygons.foreach_get("material_index", poly_mat)
        loop_vert = np.empty(nloop, dtype=np.int64)
        me.loops.foreach_get("vertex_index", loop_vert)
        ntri = np.clip(total - 2, 0, None)
        owner = np.repeat(np.arange(npoly), ntri)
        k = np.arange(int(ntri.sum())) - np.repeat(np.cumsum(ntri) - ntri, ntri)
        s0 = start[owner]
        tri = np.stack([loop_vert[s0], loop_vert[s0 + k + 1], loop_vert[s0 + k + 2]], axis=1)
        mat_idx = poly_mat[owner]
        mw = np.array(ob_eval.matrix_world, dtype=np.float64)
        co_w = co.reshape(-1, 3).astype(np.float64) @ mw[:3, :3].T + mw[:3, 3]
        corners = co_w[tri.reshape(-1, 3)]
        slots = [s.material for s in ob_eval.material_slots] or [None]
        palette = np.array([material_base_color(m) for m in slots], dtype=np.float64)
        cols = palette[np.clip(mat_idx, 0, len(palette) - 1)]
        return corners, _linear_to_srgb(cols), mat_idx
    finally:
        ob_eval.to_mesh_clear()


def sample_surface_points(objects: Sequence[bpy.types.Object], count: int, seed: int = 0,
                          depsgraph=None) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted random points on the objects' evaluated surfaces (world space).

    Returns (N x 3 float32 positions, N x 3 uint8 sRGB colours of the material base colour).
    """
    if depsgraph is None:
        depsgraph = scene_depsgraph(bpy.context.scene)
    tris, cols = [], []
    instancing = geometry_node_instancers(objects, depsgraph)
    for ob in objects:
        got = _triangles_world(ob, depsgraph, realize=realizes(ob, instancing))
        if got is not None:
            tris.append(got[0])
            cols.append(got[1])
    if not tris or count <= 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    corners = np.concatenate(tris)
    colors = np.concatenate(cols)
    area = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    total = area.sum()
    if total <= 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(area), size=int(count), p=area / total)
    r1 = np.sqrt(rng.random(int(count)))
    r2 = rng.random(int(count))
    a, b, c = corners[pick, 0], corners[pick, 1], corners[pick, 2]
    pts = (1 - r1)[:, None] * a + (r1 * (1 - r2))[:, None] * b + (r1 * r2)[:, None] * c
    rgb = np.round(colors[pick] * 255.0).astype(np.uint8)
    return pts.astype(np.float32), rgb


def write_points_ply(path: str, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Binary little-endian PLY with x y z (float) and red green blue (uchar)."""
    n = len(xyz)
    data = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                              ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    data["x"], data["y"], data["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    data["red"], data["green"], data["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment written by the MaskField Blender add-on\n"
        f"element vertex {n}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(data.tobytes())


def evaluated_face_centres(ob: bpy.types.Object, depsgraph, realize: bool = False) -> np.ndarray:
    """Local-space centres of the faces the user sees: the mesh after its modifiers and shape
    keys (what the render shows), with ``realize`` its geometry-nodes instances too, F x 3."""
    with shown_object(ob, depsgraph, realize) as ob_eval:
        me = ob_eval.to_mesh()
        try:
            centres = np.empty(len(me.polygons) * 3, dtype=np.float32)
            me.polygons.foreach_get("center", centres)
        finally:
            ob_eval.to_mesh_clear()
    return centres.reshape(-1, 3)


def export_face_centres(objects: Sequence[bpy.types.Object], npy_path: str,
                        json_path: str | None = None, scene_name: str = "", depsgraph=None) -> dict:
    """Write the world-space centres of all faces of the mesh objects (N x 3 float32).

    Faces are stored object after object, in each mesh's own face order, so a row index
    maps back to (object name, face index) through the ``objects`` table of the returned
    (and, with ``json_path``, written) map: ``{"objects": [{"name", "mesh", "start",
    "count", "faces", "evaluated"}], "total": N, "scene": ..., "points": npy file name}``.
    The faces are those the user sees and the render shows: after modifiers and shape keys
    (``evaluated`` is true where that differs from the mesh's own data; ``faces`` is the
    mesh's own face count), placed by the evaluated world matrix (parents, constraints,
    unapplied scale and rotation). A part of a collection instance (``InstancePart``) also
    has ``instance``: its instancer, the object it shows and that object's matrix in the
    instancer's frame (``find_instance_part`` finds it again). An object whose geometry nodes
    make instances has ``realized``: its rows are the faces of its mesh with the instances
    realized (``shown_object``), the instances' after its own.
    """
    if depsgraph is None:
        depsgraph = scene_depsgraph(bpy.context.scene)
    instancing = geometry_node_instancers(objects, depsgraph)
    table = []
    parts = []
    start = 0
    for ob in objects:
        if ob is None or ob.type != "MESH":
            continue
        if ob.mode == "EDIT":
            ob.update_from_editmode()
        me = ob.data
        own = np.empty(len(me.polygons) * 3, dtype=np.float32)
        me.polygons.foreach_get("center", own)
        own = own.reshape(-1, 3)
        realize = realizes(ob, instancing)
        shown = evaluated_face_centres(ob, depsgraph, realize)
        evaluated = shown.shape != own.shape or not np.allclose(shown, own, atol=1e-6)
        n = len(shown)
        mw = np.array(ob.evaluated_get(depsgraph).matrix_world, dtype=np.float64)
        parts.append((shown.astype(np.float64) @ mw[:3, :3].T + mw[:3, 3]).astype(np.float32))
        entry = {"name": ob.name, "mesh": me.name, "start": start, "count": n, "faces": len(own),
                 "evaluated": bool(evaluated)}
        if isinstance(ob, InstancePart):  # shown by a collection instance: found again by these
            entry["instance"] = ob.instance_info()
        if realize:
            entry["realized"] = True
        table.append(entry)
        start += n
    arr = np.concatenate(parts) if parts else np.zeros((0, 3), np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(npy_path)), exist_ok=True)
    info = {"objects": table, "total": int(start), "scene": scene_name,
            "points": os.path.basename(npy_path), "format": 1}
    with _replacing(npy_path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr)
    if json_path:
        with _replacing(json_path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=1, ensure_ascii=False)
    return info


@contextlib.contextmanager
def _replacing(path: str):
    """A unique temporary name beside ``path``, renamed to it only when the block succeeds: an
    interrupted write never leaves a half-written table under the real name."""
    tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


# ----------------------------------------------------------------------------------------
# the render job


def _set_multilayer_exr(settings) -> None:
    if hasattr(settings, "media_type"):  # Blender 5.0+
        settings.media_type = "MULTI_LAYER_IMAGE"
    settings.file_format = "OPEN_EXR_MULTILAYER"
    settings.exr_codec = "NONE"
    settings.color_depth = "32"


def _set_png(settings, alpha: bool = True) -> None:
    if hasattr(settings, "media_type"):
        settings.media_type = "IMAGE"
    settings.file_format = "PNG"
    settings.color_mode = "RGBA" if alpha else "RGB"  # opaque renders (world background) as photos are
    settings.color_depth = "8"
    settings.compression = 15


class RenderJob:
    """Renders the views one at a time; :meth:`step` does one view and returns False when done.

    Use :meth:`run` to do everything at once. Always ends with :meth:`cleanup` (also
    called by :meth:`run`, on error and on :meth:`cancel`), which removes every temporary
    datablock it made.
    """

    def __init__(self, objects: Sequence[bpy.types.Object], out_dir: str,
                 settings: RenderSettings | None = None, scene: bpy.types.Scene | None = None,
                 depsgraph=None):
        self.settings = settings or RenderSettings()
        self.scene: bpy.types.Scene = cast(bpy.types.Scene, scene or bpy.context.scene)
        self.out_dir = os.path.abspath(bpy.path.abspath(out_dir))
        objs = _renderable(objects)
        if not objs:
            raise RenderError("no objects to render: select one or more mesh objects")
        # stable ids: by name
        self.objects = sorted(objs, key=lambda o: o.name)
        self.depsgraph = depsgraph
        self.done = 0
        self.total = max(1, int(self.settings.views))
        self.frames: list[dict] = []
        self.holdout: list[str] = []  # file paths of the held-out frames
        self._n_train = self.total
        self._temp_ids: list[Any] = []
        self._tmp_scene: bpy.types.Scene | None = None
        self._cam: bpy.types.Object | None = None
        self._poses: list[Matrix] = []
        self._intr: dict = {}
        self._exr_dir: str | None = None
        self._engine = "CYCLES"
        self._started = False
        self.summary: dict = {}

    # -- setup -------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        self._started = True
        s = self.settings
        if s.engine not in ENGINES:
            raise RenderError(f"unknown render engine {s.engine!r}; use one of {', '.join(ENGINES)}")
        if s.views < 1:
            raise RenderError("the number of views must be at least 1")
        w, h = s.size
        if w < 8 or h < 8:
            raise RenderError("the resolution must be at least 8 pixels")
        for ob in self.objects:
            if ob.mode == "EDIT":
                ob.update_from_editmode()
        try:
            os.makedirs(os.path.join(self.out_dir, "images"), exist_ok=True)
            if s.labels:
                os.makedirs(os.path.join(self.out_dir, "labels"), exist_ok=True)
        except OSError as exc:
            raise RenderError(f"cannot write to {self.out_dir}: {exc.strerror or exc}") from exc
        if self.depsgraph is None:
            self.depsgraph = scene_depsgraph(self.scene)
        lo, hi = world_bounds(self.objects, self.depsgraph)
        center, radius = bounding_sphere(lo, hi)
        try:
            self._build_scene(lo, hi)
        except Exception:
            self.cleanup()
            raise
        self.summary.update({"center": center.tolist(), "radius": radius})

    def _world_matrix(self, ob: bpy.types.Object) -> Matrix:
        if self.depsgraph is not None:
            return ob.evaluated_get(self.depsgraph).matrix_world.copy()
        return ob.matrix_world.copy()

    def _keep(self, idblock):
        try:
            idblock[TEMP_TAG] = True
        except Exception:
            pass
        self._temp_ids.append(idblock)
        return idblock

    def _build_scene(self, lo: np.ndarray, hi: np.ndarray) -> None:
        s = self.settings
        center, radius = bounding_sphere(lo, hi)
        user = self.scene
        tmp = self._keep(bpy.data.scenes.new("MaskField render (temporary)"))
        self._tmp_scene = tmp
        w, h = s.size
        r = tmp.render
        # Cycles settings are made in any case: with another engine, Cycles renders the
        # object-index pass (EEVEE and Workbench have none)
        r.engine = "CYCLES"
        r.resolution_x, r.resolution_y, r.resolution_percentage = w, h, 100
        r.pixel_aspect_x = r.pixel_aspect_y = 1.0
        # transparent film (default): images carry alpha, so the backend composites them over a
        # known background instead of fitting Gaussians to the world colour
        r.film_transparent = bool(s.transparent)
        r.use_persistent_data = True
        try:
            r.use_compositing = False
            r.use_sequencer = False
        except AttributeError:
            pass
        cy = tmp.cycles
        cy.samples = max(1, int(s.samples))
        cy.use_denoising = False
        cy.use_adaptive_sampling = False
        cy.device = "GPU" if s.use_gpu else "CPU"
        cy.max_bounces = 4
        cy.seed = int(s.seed)
        for attr in ("preview_samples",):
            if hasattr(cy, attr):
                setattr(cy, attr, 1)
        # colour management as the user's scene
        try:
            tmp.display_settings.display_device = user.display_settings.display_device
            tmp.view_settings.view_transform = user.view_settings.view_transform
            tmp.view_settings.look = user.view_settings.look
            tmp.view_settings.exposure = user.view_settings.exposure
            tmp.view_settings.gamma = user.view_settings.gamma
        except (TypeError, AttributeError):
            pass
        self._engine = set_render_engine(r, s.engine)
        if s.engine == "EEVEE" and hasattr(tmp, "eevee"):
            tmp.eevee.taa_render_samples = max(1, int(s.samples))
        vl = tmp.view_layers[0]
        vl.use_pass_object_index = bool(s.labels)
        coll = tmp.collection
        for i, ob in enumerate(self.objects, start=1):
            c = self._keep(ob.copy())
            c.parent = None
            c.constraints.clear() if hasattr(c, "constraints") else None
            c.animation_data_clear()
            c.matrix_world = self._world_matrix(ob)
            c.pass_index = i
            c.hide_render = False
            for m in c.modifiers:  # render what the viewport shows (the faces are taken from it too)
                m.show_render = m.show_viewport
                if hasattr(m, "render_levels") and hasattr(m, "levels"):
                    m.render_levels = m.levels
            coll.objects.link(c)
        lights = []
        if s.lighting == "SCENE":
            lights = [ob for ob in user.objects if ob.type == "LIGHT" and not ob.hide_render]
        for ob in lights:
            c = self._keep(ob.copy())
            c.parent = None
            c.animation_data_clear()
            c.matrix_world = self._world_matrix(ob)
            coll.objects.link(c)
        if s.lighting == "SCENE" and user.world is not None and lights:
            tmp.world = user.world
        else:
            self._studio_light(coll, center, radius)
        cam_data = self._keep(bpy.data.cameras.new("MaskField camera (temporary)"))
        cam_data.lens = s.lens
        cam_data.sensor_width = 36.0
        cam_data.sensor_fit = "AUTO"
        self._poses = []
        fov_min = 2.0 * math.atan(min(w, h) / max(w, h) * cam_data.sensor_width / (2.0 * cam_data.lens))
        self._poses = camera_poses(s, lo, hi, fov_min)
        self._n_train = len(self._poses)
        if s.holdout_views > 0:
            self._poses += holdout_poses(s, lo, hi, fov_min)
        if s.layout.upper() == "INSIDE":  # the cameras stand among the objects
            cam_data.clip_start = max(1e-4, radius * 1e-3)
            cam_data.clip_end = 4.0 * radius
        else:
            dist = (walk_distance if s.layout.upper() == "WALK" else orbit_distance)(s, radius, fov_min)
            near = dist * min(1.0, s.holdout_distance if s.holdout_views > 0 else 1.0)
            cam_data.clip_start = max(1e-3, (near - radius) * 0.1)
            cam_data.clip_end = dist * max(1.0, s.holdout_distance) + 4.0 * radius
        cam = self._keep(bpy.data.objects.new("MaskField camera (temporary)", cam_data))
        coll.objects.link(cam)
        tmp.camera = cam
        self._cam = cam
        self._intr = camera_intrinsics(cam_data, w, h)
        self.total = len(self._poses)
        self._exr_dir = tempfile.mkdtemp(prefix="maskfield_exr_")

    def _studio_light(self, coll, center: np.ndarray, radius: float) -> None:
        world = self._keep(grey_world("MaskField world (temporary)", 0.6, 1.0))
        assert self._tmp_scene is not None
        self._tmp_scene.world = world
        sun = self._keep(bpy.data.lights.new("MaskField sun (temporary)", "SUN"))
        sun.energy = 3.0
        sun_ob = self._keep(bpy.data.objects.new("MaskField sun (temporary)", sun))
        sun_ob.rotation_euler = (math.radians(40), math.radians(10), math.radians(30))
        coll.objects.link(sun_ob)

    # -- rendering ---------------------------------------------------------------------
    def step(self) -> bool:
        """Render the next view. Returns True while views remain."""
        if not self._started:
            self.start()
        if self.done >= self.total:
            return False
        try:
            self._render_view(self.done)
        except Exception:
            self.cleanup()
            raise
        self.done += 1
        if self.done >= self.total:
            self.finish()
            return False
        return True

    def _render_view(self, i: int) -> None:
        s = self.settings
        tmp, cam = self._tmp_scene, self._cam
        assert tmp is not None and cam is not None and self._exr_dir is not None
        pose = self._poses[i]
        cam.matrix_world = pose
        held_out = i >= self._n_train
        stem = s.holdout_stem_format.format(i - self._n_train + 1) if held_out else s.stem_format.format(i + 1)
        bpy.ops.render.render(write_still=False, scene=tmp.name)
        result = bpy.data.images.get("Render Result")
        if result is None:
            raise RenderError("Blender produced no render result")
        img_rel = f"images/{stem}.png"
        _set_png(tmp.render.image_settings, alpha=s.transparent)
        result.save_render(os.path.join(self.out_dir, img_rel), scene=tmp)
        frame: dict[str, Any] = {"file_path": img_rel,
                                 "transform_matrix": [list(map(float, row)) for row in pose]}
        if s.labels:
            if self._engine != "CYCLES":
                result = self._render_index_pass(tmp)
            exr = os.path.join(self._exr_dir, "view.exr")
            _set_multilayer_exr(tmp.render.image_settings)
            result.save_render(exr, scene=tmp)
            chans = imageio.read_exr_channels(exr)
            index = imageio.find_channel(chans, "IndexOB.X", "Object Index.X", "IndexOB", "Object Index")
            if index is None:
                raise RenderError("the render has no object-index pass (" + ", ".join(sorted(chans)) + ")")
            ids = np.rint(index).astype(np.int64)
            ids = np.clip(ids, 0, len(self.objects))
            dtype = np.uint8 if len(self.objects) < 256 else np.uint16
            lab_rel = f"labels/{stem}.png"
            imageio.write_png(os.path.join(self.out_dir, lab_rel), ids.astype(dtype))
            frame["label_path"] = lab_rel
        if held_out:
            self.holdout.append(img_rel)
        self.frames.append(frame)

    def _render_index_pass(self, tmp):
        """Render the object-index pass with Cycles at 1 sample (the index is exact at 1)."""
        r, samples = tmp.render, tmp.cycles.samples
        r.engine, tmp.cycles.samples = "CYCLES", 1
        try:
            bpy.ops.render.render(write_still=False, scene=tmp.name)
        finally:
            r.engine, tmp.cycles.samples = self._engine, samples
        result = bpy.data.images.get("Render Result")
        if result is None:
            raise RenderError("Blender produced no render result for the object-index pass")
        return result

    def finish(self) -> dict:
        s = self.settings
        w, h = s.size
        try:
            points_rel = None
            if s.points > 0:
                xyz, rgb = sample_surface_points(self.objects, s.points, s.seed, self.depsgraph)
                points_rel = "points.ply"
                write_points_ply(os.path.join(self.out_dir, points_rel), xyz, rgb)
                self.summary["points"] = int(len(xyz))
            names = {str(i): ob.name for i, ob in enumerate(self.objects, start=1)}
            if s.labels:
                with open(os.path.join(self.out_dir, "labels", "objects.json"), "w", encoding="utf-8") as fh:
                    json.dump(names, fh, indent=1, ensure_ascii=False)
            intr = dict(self._intr)
            meta = asdict(s)
            meta.pop("extra", None)
            meta.update(s.extra)
            data: dict[str, Any] = {
                "camera_model": "PINHOLE",
                **intr,
                "camera_angle_x": 2.0 * math.atan(w / (2.0 * intr["fl_x"])),
                "camera_angle_y": 2.0 * math.atan(h / (2.0 * intr["fl_y"])),
                "frames": self.frames,
                "blender": {
                    "scene": self.scene.name,
                    "objects": names,
                    "version": bpy.app.version_string,
                    "settings": meta,
                    "center": self.summary.get("center"),
                    "radius": self.summary.get("radius"),
                },
            }
            if points_rel:
                data["ply_file_path"] = points_rel
            if self.holdout:  # nerfstudio's split keys: the loader holds out exactly these
                data["train_filenames"] = [f["file_path"] for f in self.frames if f["file_path"] not in self.holdout]
                data["test_filenames"] = list(self.holdout)
            with open(os.path.join(self.out_dir, "transforms.json"), "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, ensure_ascii=False)
            self._remove_stale_frames()
            self.summary.update({"folder": self.out_dir, "views": len(self.frames), "objects": names,
                                 "width": w, "height": h, "holdout_views": len(self.holdout)})
        finally:
            self.cleanup()
        return self.summary

    def _remove_stale_frames(self) -> None:
        """Frames of an earlier render into the same folder that this one did not write."""
        import re

        stems = (self.settings.stem_format, self.settings.holdout_stem_format)
        pattern = re.compile("^(" + "|".join(re.escape(f).replace(r"\{:05d\}", r"\d+").replace(r"\{\}", r"\d+")
                                             for f in stems) + r")\.png$")
        keep = {os.path.basename(f["file_path"]) for f in self.frames}
        for sub in ("images", "labels"):
            folder = os.path.join(self.out_dir, sub)
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                if pattern.match(name) and name not in keep:
                    try:
                        os.remove(os.path.join(folder, name))
                    except OSError:
                        pass

    def cancel(self) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Remove every temporary datablock and file this job made (safe to call twice)."""
        tmp = self._tmp_scene
        ids, self._temp_ids = self._temp_ids, []
        self._tmp_scene = None
        self._cam = None
        if tmp is not None:
            try:
                bpy.data.scenes.remove(tmp)
            except (ReferenceError, RuntimeError):
                pass
        for idb in reversed(ids):
            if idb is tmp:
                continue
            try:
                if isinstance(idb, bpy.types.Object):
                    bpy.data.objects.remove(idb)
                elif isinstance(idb, bpy.types.Camera):
                    bpy.data.cameras.remove(idb)
                elif isinstance(idb, bpy.types.Light):
                    bpy.data.lights.remove(idb)
                elif isinstance(idb, bpy.types.World):
                    bpy.data.worlds.remove(idb)
            except (ReferenceError, RuntimeError):
                pass
        if self._exr_dir:
            shutil.rmtree(self._exr_dir, ignore_errors=True)
            self._exr_dir = None

    def run(self, progress: Callable[[int, int], None] | None = None) -> dict:
        try:
            self.start()
            while self.step():
                if progress:
                    progress(self.done, self.total)
            if progress:
                progress(self.done, self.total)
        finally:
            self.cleanup()
        return self.summary


def render_scene_folder(objects: Sequence[bpy.types.Object], out_dir: str,
                        settings: RenderSettings | None = None, scene: bpy.types.Scene | None = None,
                        progress: Callable[[int, int], None] | None = None, **overrides: Any) -> dict:
    """Render ``objects`` of ``scene`` into the scene folder ``out_dir`` (see module doc).

    Keyword ``overrides`` set fields of :class:`RenderSettings` (views=40, resolution=128,
    samples=16, layout=..., seed=0, points=20000, ...). Returns a summary dict.
    """
    settings = settings or RenderSettings()
    for key, value in overrides.items():
        if not hasattr(settings, key):
            raise TypeError(f"unknown render setting {key!r}")
        setattr(settings, key, value)
    return RenderJob(objects, out_dir, settings, scene).run(progress)
