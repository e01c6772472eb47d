# SPDX-License-Identifier: GPL-3.0-or-later
"""Blender-side data: read Gaussians from .ply into point objects, split faces, select.

Everything goes through numpy and ``foreach_set`` (no Python loop over points). Objects,
meshes and collections the add-on makes carry the custom property ``maskfield_owned``, so
that re-running a prompt removes exactly what the add-on made before and nothing else.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Iterable, Sequence, cast

import bpy
import numpy as np

OWNED = "maskfield_owned"
PROMPT_KEY = "maskfield_prompt"
COLLECTION_PREFIX = "MaskField: "
RUN_COLLECTION = "MaskField: run"
# a recentred capture's offset (run.json 'origin'): the object's coordinates + this = the camera file's
ORIGIN_KEY = "maskfield_origin"
RUN_KEY = "<all gaussians>"  # the prompt key of the whole run's import (no typed prompt looks like it)
SH_C0 = 0.28209479177387814
POINTS_GROUP = "MaskField Points"
POINTS_MATERIAL = "MaskField Points"
LABELS_GROUP = "MaskField Label Points"
LABELS_MATERIAL = "MaskField Labels"
MESH_MATERIAL = "MaskField Vertex Colours"
LABELS_FILE = "labels.npz"
LEGEND_FILE = "labels.json"

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


class DataError(RuntimeError):
    """A file that cannot be used; the message says why."""


# ----------------------------------------------------------------------------------------
# PLY


def read_ply_vertices(path: str) -> np.ndarray:
    """The ``vertex`` element of a PLY file as a numpy structured array (binary or ASCII)."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot open {path}: {exc.strerror or exc}") from exc
    with fh:
        if fh.readline().strip() != b"ply":
            raise DataError(f"{path} is not a PLY file")
        fmt = None
        elements: list[tuple[str, int, list[tuple[str, str]]]] = []
        while True:
            line = fh.readline()
            if not line:
                raise DataError(f"{path}: PLY header has no end_header")
            words = line.decode("ascii", "replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append((words[1], int(words[2]), []))
            elif words[0] == "property":
                if not elements:
                    raise DataError(f"{path}: property before element in the PLY header")
                if words[1] == "list":
                    elements[-1][2].append((words[-1], "list"))
                else:
                    if words[1] not in _PLY_TYPES:
                        raise DataError(f"{path}: unknown PLY type {words[1]}")
                    elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
            elif words[0] == "end_header":
                break
        body_start = fh.tell()
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise DataError(f"{path}: unsupported PLY format {fmt}")
    offset = 0
    for name, count, props in elements:
        if any(t == "list" for _, t in props):
            if name == "vertex":
                raise DataError(f"{path}: list properties in the vertex element are not supported")
            if fmt != "ascii":
                raise DataError(f"{path}: elements with lists before 'vertex' are not supported")
        endian = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(p, endian + t) for p, t in props])
        if name == "vertex":
            if fmt == "ascii":
                with open(path, "rb") as fh2:
                    fh2.seek(body_start)
                    arr = np.loadtxt(fh2, dtype=np.float64, max_rows=count, ndmin=2)
                out = np.empty(count, dtype=np.dtype([(p, t) for p, t in props]))
                for i, (p, _t) in enumerate(props):
                    out[p] = arr[:, i]
                return out
            data = np.fromfile(path, dtype=dtype, count=count, offset=body_start + offset)
            if len(data) != count:
                raise DataError(f"{path}: file is shorter than its header says ({len(data)} of {count} points)")
            return data
        offset += dtype.itemsize * count
    raise DataError(f"{path}: no vertex element")


def _col(data: np.ndarray, name: str) -> np.ndarray | None:
    return np.asarray(data[name], dtype=np.float32) if name in (data.dtype.names or ()) else None


def gaussian_arrays(data: np.ndarray) -> dict[str, np.ndarray]:
    """Positions and display attributes of 3DGS (or plain point) PLY data.

    ``co`` (N x 3), ``color`` (N x 4 linear RGBA), ``opacity`` (N, 0..1), ``scale`` (N x 3),
    ``rotation`` (N x 4, w x y z, unit), ``radius`` (N). Plain point clouds (red/green/blue)
    get opacity 1 and a small radius.
    """
    names = data.dtype.names or ()
    if not {"x", "y", "z"} <= set(names):
        raise DataError("the PLY file has no x, y, z vertex properties")
    n = len(data)
    co = np.empty((n, 3), dtype=np.float32)
    co[:, 0], co[:, 1], co[:, 2] = data["x"], data["y"], data["z"]
    out: dict[str, np.ndarray] = {"co": co}
    if {"f_dc_0", "f_dc_1", "f_dc_2"} <= set(names):
        rgb = np.stack([_col(data, f"f_dc_{i}") for i in range(3)], axis=1) * SH_C0 + 0.5  # type: ignore[misc]
    elif {"red", "green", "blue"} <= set(names):
        rgb = np.stack([data["red"], data["green"], data["blue"]], axis=1).astype(np.float32)
        if data["red"].dtype.kind in "ui":
            rgb /= 255.0
    else:
        rgb = np.full((n, 3), 0.8, dtype=np.float32)
    rgb = np.clip(rgb, 0.0, 1.0)
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4).astype(np.float32)
    op = _col(data, "opacity")
    opacity = (1.0 / (1.0 + np.exp(-op))).astype(np.float32) if op is not None else np.ones(n, np.float32)
    color = np.empty((n, 4), dtype=np.float32)
    color[:, :3] = lin
    color[:, 3] = opacity
    out["color"] = color
    out["opacity"] = opacity
    if {"scale_0", "scale_1", "scale_2"} <= set(names):
        log_s = np.stack([_col(data, f"scale_{i}") for i in range(3)], axis=1)  # type: ignore[misc]
        scale = np.exp(np.clip(log_s, -30.0, 10.0)).astype(np.float32)
        out["scale"] = scale
        out["radius"] = np.clip(scale.mean(axis=1), 1e-5, None).astype(np.float32)
    else:
        out["radius"] = np.full(n, 0.005, dtype=np.float32)
    if {"rot_0", "rot_1", "rot_2", "rot_3"} <= set(names):
        q = np.stack([_col(data, f"rot_{i}") for i in range(4)], axis=1)  # type: ignore[misc]
        norm = np.linalg.norm(q, axis=1, keepdims=True)
        norm[norm == 0] = 1.0
        out["rotation"] = (q / norm).astype(np.float32)
    for extra in ("score", "scores", "segment_score"):
        v = _col(data, extra)
        if v is not None:
            out["score"] = v
            break
    return out


# ----------------------------------------------------------------------------------------
# ownership, collections


def is_owned(idblock) -> bool:
    try:
        return bool(idblock.get(OWNED))
    except (AttributeError, ReferenceError):
        return False


def _tag(idblock, prompt: str | None = None, run: str | None = None) -> None:
    idblock[OWNED] = 1
    if prompt is not None:
        idblock[PROMPT_KEY] = prompt
    if run is not None:
        idblock["maskfield_run"] = run
        if isinstance(idblock, bpy.types.Object) and (origin := run_origin(run)) is not None:
            idblock[ORIGIN_KEY] = origin  # Python floats: kept as doubles, every digit of a UTM easting


def run_origin(run_dir: str) -> list[float] | None:
    """run.json's 'origin', where the backend recentred a geo-referenced capture (cameras far
    from their coordinates' 0, where 32-bit numbers, Blender's too, would blur the scene): the
    run's positions plus it are the camera file's. None for every other run."""
    try:
        with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as fh:
            origin = json.load(fh).get("origin")
    except (OSError, ValueError, AttributeError):
        return None
    if (isinstance(origin, list) and len(origin) == 3
            and all(isinstance(v, (int, float)) and np.isfinite(v) for v in origin)):
        return [float(v) for v in origin]
    return None


def origin_text(origin: Sequence[float]) -> str:
    return ", ".join(f"{v:.10g}" for v in origin)


def find_prompt_collection(scene: bpy.types.Scene, prompt: str) -> bpy.types.Collection | None:
    for coll in _all_collections(scene.collection):
        if is_owned(coll) and coll.get(PROMPT_KEY) == prompt:
            return coll
    return None


def _all_collections(root: bpy.types.Collection) -> Iterable[bpy.types.Collection]:
    for child in root.children:
        yield child
        yield from _all_collections(child)


def _remove_owned_object(ob: bpy.types.Object) -> None:
    data = ob.data
    bpy.data.objects.remove(ob, do_unlink=True)
    if data is not None and is_owned(data) and data.users == 0:
        if isinstance(data, bpy.types.Mesh):
            bpy.data.meshes.remove(data)


def clear_prompt(scene: bpy.types.Scene, prompt: str) -> bpy.types.Collection | None:
    """Remove what the add-on made for ``prompt``; returns the (kept) collection if the user
    put objects of their own into it, else None."""
    coll = find_prompt_collection(scene, prompt)
    if coll is None:
        return None
    for ob in list(coll.objects):
        if is_owned(ob):
            _remove_owned_object(ob)
    if len(coll.objects) == 0 and len(coll.children) == 0:
        bpy.data.collections.remove(coll)
        return None
    return coll


def clear_all(scene: bpy.types.Scene) -> int:
    """Remove every object and collection the add-on made in ``scene``; returns how many objects."""
    count = 0
    for coll in list(_all_collections(scene.collection)):
        if not is_owned(coll):
            continue
        for ob in list(coll.objects):
            if is_owned(ob):
                _remove_owned_object(ob)
                count += 1
        if len(coll.objects) == 0 and len(coll.children) == 0:
            bpy.data.collections.remove(coll)
    return count


def prompt_collection(scene: bpy.types.Scene, prompt: str, run: str | None = None) -> bpy.types.Collection:
    """The add-on's collection "MaskField: <prompt>" in ``scene`` (made if needed)."""
    coll = find_prompt_collection(scene, prompt)
    if coll is None:
        coll = bpy.data.collections.new(COLLECTION_PREFIX + prompt)
        _tag(coll, prompt, run)
        scene.collection.children.link(coll)
    return coll


# ----------------------------------------------------------------------------------------
# point objects


def _points_node_group(group_name: str = POINTS_GROUP, colour_attribute: str = "color") -> bpy.types.NodeTree | None:
    """A geometry-nodes group showing the mesh vertices as points (radius from 'radius'),
    coloured by the named colour attribute."""
    ng = bpy.data.node_groups.get(group_name)
    if ng is not None and is_owned(ng):
        return ng
    try:
        ng = bpy.data.node_groups.new(group_name, "GeometryNodeTree")
        _tag(ng)
        if hasattr(ng, "interface"):
            ng.interface.new_socket(name="Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
            ng.interface.new_socket(name="Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
        else:  # pragma: no cover - Blender < 4.0
            getattr(ng, "inputs").new("NodeSocketGeometry", "Geometry")
            getattr(ng, "outputs").new("NodeSocketGeometry", "Geometry")
        nodes, links = ng.nodes, ng.links
        gin = nodes.new("NodeGroupInput")
        gout = nodes.new("NodeGroupOutput")
        to_points = nodes.new("GeometryNodeMeshToPoints")
        radius = cast(Any, nodes.new("GeometryNodeInputNamedAttribute"))
        radius.data_type = "FLOAT"
        radius.inputs["Name"].default_value = "radius"
        set_mat = cast(Any, nodes.new("GeometryNodeSetMaterial"))
        set_mat.inputs["Material"].default_value = _points_material(
            POINTS_MATERIAL if colour_attribute == "color" else LABELS_MATERIAL, colour_attribute)
        links.new(gin.outputs[0], to_points.inputs["Mesh"])
        links.new(radius.outputs["Attribute"], to_points.inputs["Radius"])
        links.new(to_points.outputs["Points"], set_mat.inputs["Geometry"])
        links.new(set_mat.outputs["Geometry"], gout.inputs[0])
        gin.location, radius.location = (-400, 0), (-400, -150)
        to_points.location, set_mat.location, gout.location = (-150, 0), (80, 0), (300, 0)
        return ng
    except Exception as exc:  # the points still exist as vertices; only the display is missing
        print(f"MaskField: could not build the point display node group: {exc}")
        if ng is not None:
            bpy.data.node_groups.remove(ng)
        return None


def _points_material(name: str = POINTS_MATERIAL, colour_attribute: str = "color") -> bpy.types.Material:
    mat = bpy.data.materials.get(name)
    if mat is not None and is_owned(mat):
        return mat
    mat = bpy.data.materials.new(name)
    _tag(mat)
    tree = mat.node_tree
    if tree is None:
        mat.use_nodes = True
        tree = mat.node_tree
    bsdf = next((n for n in tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled"), None)
    if bsdf is not None:
        attr = cast(Any, tree.nodes.new("ShaderNodeAttribute"))
        attr.attribute_name = colour_attribute
        attr.location = (-300, 0)
        tree.links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def points_object(name: str, arrays: dict[str, np.ndarray], collection: bpy.types.Collection,
                  prompt: str | None = None, run: str | None = None, display: bool = True) -> bpy.types.Object:
    """A mesh object with one vertex per Gaussian and its attributes (numpy + foreach_set)."""
    co = arrays["co"]
    n = len(co)
    me = bpy.data.meshes.new(name)
    me.vertices.add(n)
    me.vertices.foreach_set("co", np.ascontiguousarray(co, dtype=np.float32).ravel())
    attrs = me.attributes

    def put(attr_name: str, kind: Any, field: str, values: np.ndarray | None) -> None:
        if values is None:
            return
        a = cast(Any, attrs.new(attr_name, kind, "POINT"))
        a.data.foreach_set(field, np.ascontiguousarray(values, dtype=np.float32).ravel())

    put("opacity", "FLOAT", "value", arrays.get("opacity"))
    put("radius", "FLOAT", "value", arrays.get("radius"))
    put("scale", "FLOAT_VECTOR", "vector", arrays.get("scale"))
    rot = arrays.get("rotation")
    if rot is not None:
        try:
            put("rotation", "QUATERNION", "value", rot)
        except (TypeError, RuntimeError, AttributeError):  # pragma: no cover - Blender < 4.0
            put("rotation", "FLOAT_COLOR", "color", rot)
    put("score", "FLOAT", "value", arrays.get("score"))
    col = cast(Any, attrs.new("color", "FLOAT_COLOR", "POINT"))
    col.data.foreach_set("color", np.ascontiguousarray(arrays["color"], dtype=np.float32).ravel())
    try:
        attrs.active_color = col
        me.color_attributes.active_color = col
    except (AttributeError, TypeError):
        pass
    me.update()
    _tag(me, prompt, run)
    ob = bpy.data.objects.new(name, me)
    _tag(ob, prompt, run)
    collection.objects.link(ob)
    if display:
        ng = _points_node_group()
        if ng is not None:
            mod = cast(Any, ob.modifiers.new("MaskField points", "NODES"))
            mod.node_group = ng
    return ob


def import_ply_points(path: str, name: str, collection: bpy.types.Collection, prompt: str | None = None,
                      run: str | None = None) -> bpy.types.Object:
    data = read_ply_vertices(path)
    return points_object(name, gaussian_arrays(data), collection, prompt=prompt, run=run)


def import_run(scene: bpy.types.Scene, run_dir: str, ply_name: str = "gaussians.ply",
               labels_dir: str | None = None) -> bpy.types.Object:
    """All Gaussians of a run as one point object in the collection "MaskField: run".

    Each point keeps its Gaussian's index (attribute ``gaussian_index``, so that splitting
    stays right after earlier splits). With a segmentation's labels in ``labels_dir``
    (labels.npz + labels.json, written by every segmentation) the points also get ``label``,
    ``label_score`` and ``label_color`` and are shown in their label's colour."""
    path = os.path.join(run_dir, ply_name)
    if not os.path.isfile(path):
        raise DataError(f"no {ply_name} in {run_dir}: train first, or choose the run folder")
    data = read_ply_vertices(path)
    labels = read_labels(labels_dir, len(data)) if labels_dir else None
    clear_prompt(scene, RUN_KEY)
    coll = prompt_collection(scene, RUN_KEY, run_dir)
    coll.name = RUN_COLLECTION
    ob = points_object("MaskField Gaussians", gaussian_arrays(data), coll, prompt=RUN_KEY, run=run_dir,
                       display=labels is None)
    attr = cast(Any, ob.data.attributes.new("gaussian_index", "INT", "POINT"))
    attr.data.foreach_set("value", np.arange(len(data), dtype=np.int32))
    if labels is not None:
        show_labels(ob, *labels)
    return ob


def read_labels(labels_dir: str, count: int) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(label, label_score, legend) of the last segmentation, or None when there is none for
    ``count`` Gaussians (an older run's labels are not applied to another)."""
    npz, legend_path = os.path.join(labels_dir, LABELS_FILE), os.path.join(labels_dir, LEGEND_FILE)
    if not (os.path.isfile(npz) and os.path.isfile(legend_path)):
        return None
    try:
        with np.load(npz) as data:
            label, score = np.asarray(data["label"], np.int32), np.asarray(data["label_score"], np.float32)
        with open(legend_path, encoding="utf-8") as fh:
            legend = json.load(fh)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read the labels in {labels_dir}: {exc}") from exc
    if len(label) != count:
        return None
    return label, score, legend


def label_colours(label: np.ndarray, legend: dict) -> np.ndarray:
    """(N, 4) linear RGBA: each Gaussian in its label's legend colour, the rest grey."""
    none = legend.get("none", {}).get("colour", [0.5, 0.5, 0.5])
    table = {int(e["label"]): e.get("colour", none) for e in legend.get("labels", [])}
    rgb = np.tile(np.asarray(none, np.float32), (len(label), 1))
    for value, colour in table.items():
        rgb[label == value] = colour
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4).astype(np.float32)
    return np.concatenate([lin, np.ones((len(label), 1), np.float32)], 1)


def show_labels(ob: bpy.types.Object, label: np.ndarray, score: np.ndarray, legend: dict) -> None:
    """Put the labels on a run's point object as attributes and display it in their colours."""
    me = cast(bpy.types.Mesh, ob.data)
    for name in ("label", "label_score", "label_color"):
        old = me.attributes.get(name)
        if old is not None:
            me.attributes.remove(old)
    a = cast(Any, me.attributes.new("label", "INT", "POINT"))
    a.data.foreach_set("value", np.ascontiguousarray(label, dtype=np.int32))
    a = cast(Any, me.attributes.new("label_score", "FLOAT", "POINT"))
    a.data.foreach_set("value", np.ascontiguousarray(score, dtype=np.float32))
    a = cast(Any, me.attributes.new("label_color", "FLOAT_COLOR", "POINT"))
    a.data.foreach_set("color", label_colours(label, legend).ravel())
    try:
        me.color_attributes.active_color = a
    except (AttributeError, TypeError):
        pass
    me["maskfield_legend"] = json.dumps(legend.get("labels", []))
    for mod in list(ob.modifiers):
        if mod.type == "NODES":
            ob.modifiers.remove(mod)
    ng = _points_node_group(LABELS_GROUP, "label_color")
    if ng is not None:
        mod = cast(Any, ob.modifiers.new("MaskField labels", "NODES"))
        mod.node_group = ng
    me.update()


def remove_gaussians(ob: bpy.types.Object, indices: np.ndarray) -> int:
    """Remove the points of Gaussians ``indices`` (by their ``gaussian_index``) from a run's
    point object: Points mode's Split originals. Returns how many were removed."""
    import bmesh

    me = cast(bpy.types.Mesh, ob.data)
    n = len(me.vertices)
    attr = me.attributes.get("gaussian_index")
    index = np.arange(n, dtype=np.int32)
    if attr is not None:
        attr.data.foreach_get("value", index)
    drop = np.isin(index, np.asarray(indices, dtype=np.int64))
    if not drop.any():
        return 0
    bm = bmesh.new()
    try:
        bm.from_mesh(me)
        bm.verts.ensure_lookup_table()
        verts = bm.verts
        bmesh.ops.delete(bm, geom=[verts[int(i)] for i in np.flatnonzero(drop)], context="VERTS")
        bm.to_mesh(me)
    finally:
        bm.free()
    me.update()
    return int(drop.sum())


def mesh_object(name: str, npz_path: str, collection: bpy.types.Collection, prompt: str | None = None,
                run: str | None = None) -> bpy.types.Object:
    """A mesh made by the backend from a segment's Gaussians (vertices, faces, sRGB colours)."""
    try:
        with np.load(npz_path) as data:
            verts = np.asarray(data["vertices"], np.float32)
            faces = np.asarray(data["faces"], np.int32)
            colours = np.asarray(data["colours"], np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read the mesh {npz_path}: {exc}") from exc
    me = bpy.data.meshes.new(name)
    me.vertices.add(len(verts))
    me.vertices.foreach_set("co", verts.ravel())
    me.loops.add(faces.size)
    me.loops.foreach_set("vertex_index", faces.ravel())
    me.polygons.add(len(faces))
    me.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    me.update(calc_edges=True)
    me.validate()
    lin = np.where(colours <= 0.04045, colours / 12.92, ((colours + 0.055) / 1.055) ** 2.4).astype(np.float32)
    col = cast(Any, me.color_attributes.new("color", "FLOAT_COLOR", "POINT"))
    col.data.foreach_set("color", np.concatenate([lin, np.ones((len(lin), 1), np.float32)], 1).ravel())
    try:
        me.color_attributes.active_color = col
    except (AttributeError, TypeError):
        pass
    me.materials.append(_points_material(MESH_MATERIAL, "color"))
    _tag(me, prompt, run)
    ob = bpy.data.objects.new(name, me)
    _tag(ob, prompt, run)
    collection.objects.link(ob)
    return ob


def write_labels_ply(gaussians_ply: str, labels_dir: str, dest: str) -> str:
    """The whole scene as one standard 3DGS .ply with per-Gaussian ``label`` and ``label_score``
    (float properties, as the backend writes them), and its legend next to it (labels.json)."""
    data = read_ply_vertices(gaussians_ply)
    labels = read_labels(labels_dir, len(data))
    if labels is None:
        raise DataError("no labels of this run's Gaussians: segment first")
    label, score, legend = labels
    names = [n for n in (data.dtype.names or ()) if n not in ("label", "label_score")]
    out = np.empty(len(data), dtype=[(n, "<f4") for n in names] + [("label", "<f4"), ("label_score", "<f4")])
    for n in names:
        out[n] = data[n]
    out["label"], out["label_score"] = label, score
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(out)}\n" + \
        "".join(f"property float {n}\n" for n in out.dtype.names) + "end_header\n"
    os.makedirs(dest, exist_ok=True)
    target = os.path.join(dest, "labels.ply")
    tmp = target + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(out.tobytes())
    os.replace(tmp, target)
    legend = dict(legend, ply="labels.ply")
    with open(os.path.join(dest, LEGEND_FILE), "w", encoding="utf-8") as fh:
        json.dump(legend, fh, indent=1, ensure_ascii=False)
    return target


def run_points_object(scene: bpy.types.Scene) -> bpy.types.Object | None:
    coll = find_prompt_collection(scene, RUN_KEY)
    if coll is None:
        return None
    for ob in coll.objects:
        if is_owned(ob) and ob.type == "MESH":
            return ob
    return None


# ----------------------------------------------------------------------------------------
# faces


class FacesMap:
    """The face table written by :func:`scene_render.export_face_centres` (faces.json)."""

    def __init__(self, info: dict):
        self.info = info
        self.objects: list[dict] = list(info.get("objects", []))
        self.total = int(info.get("total", sum(o["count"] for o in self.objects)))

    @classmethod
    def load(cls, path: str) -> "FacesMap":
        try:
            with open(path, encoding="utf-8") as fh:
                return cls(json.load(fh))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the face table {path}: {exc}") from exc

    def check(self) -> list[str]:
        """Problems that keep this table from matching the open file (empty list: fine)."""
        problems = []
        depsgraph = None
        for entry in self.objects:
            ob = self.source_of(entry)
            if ob is None and entry.get("instance"):
                problems.append(f"'{entry['name']}': its collection instance '{entry['instance'].get('instancer')}' "
                                "or the object it shows is not in this file")
            elif ob is None:
                problems.append(f"object '{entry['name']}' is not in this file")
            elif ob.type != "MESH":
                problems.append(f"'{entry['name']}' is no longer a mesh")
            elif entry.get("evaluated"):  # faces as shown, after modifiers
                if depsgraph is None:
                    from .scene_render import scene_depsgraph

                    depsgraph = scene_depsgraph(bpy.context.scene)
                from .scene_render import shown_object

                with shown_object(ob, depsgraph, bool(entry.get("realized"))) as ob_eval:
                    n = len(ob_eval.to_mesh().polygons)
                    ob_eval.to_mesh_clear()
                if n != entry["count"]:
                    problems.append(f"'{entry['name']}' shows {n} faces (with its modifiers), the run has "
                                    f"{entry['count']}")
            elif len(ob.data.polygons) != entry["count"]:
                problems.append(f"'{entry['name']}' has {len(ob.data.polygons)} faces, the run has {entry['count']}")
        return problems

    @staticmethod
    def source_of(entry: dict):
        """The object whose mesh holds an entry's faces: the object of that name, or for a part
        of a collection instance the object the instance shows; None if gone."""
        if entry.get("instance"):
            part = FacesMap.instance_part(entry)
            return part.member if part is not None else None
        return bpy.data.objects.get(entry["name"])

    @staticmethod
    def instance_part(entry: dict):
        """For a part of a collection instance, the part (``scene_render.InstancePart``); else None."""
        if not entry.get("instance"):
            return None
        from .scene_render import find_instance_part

        return find_instance_part(entry["instance"], entry["name"])

    @staticmethod
    def own_faces(entry: dict) -> bool:
        """True when the table's rows for this object are the mesh's own faces, in order (no
        modifier changed their number): then they can be selected or split in the mesh itself."""
        return not entry.get("evaluated") or entry.get("faces") == entry["count"]


def _refuse_changed_meshes(faces: FacesMap) -> None:
    """Labels are per face of the meshes as rendered for training: after an edit (or an
    earlier split in place) they would land on the wrong faces."""
    problems = faces.check()
    if problems:
        raise DataError("the meshes changed since the run was trained (" + "; ".join(problems)
                        + "): train again, or undo the edit")


def _mesh_keep_faces(src: bpy.types.Mesh, keep: np.ndarray, name: str) -> bpy.types.Mesh:
    """A copy of ``src`` with only the faces where ``keep`` is True (UVs, materials kept)."""
    me = src.copy()
    me.name = name
    _delete_faces(me, np.flatnonzero(~keep))
    return me


def _delete_faces(me: bpy.types.Mesh, drop: np.ndarray) -> None:
    """Delete faces ``drop`` of ``me`` (and the edges and vertices only they used)."""
    import bmesh

    if len(drop):
        bm = bmesh.new()
        try:
            bm.from_mesh(me)
            bm.faces.ensure_lookup_table()
            faces = bm.faces
            bmesh.ops.delete(bm, geom=[faces[int(i)] for i in drop], context="FACES")
            bm.to_mesh(me)
        finally:
            bm.free()
    me.update()


def separate_faces(scene: bpy.types.Scene, faces: FacesMap, labels: np.ndarray, prompts: Sequence[str],
                   run: str | None = None, in_place: bool = False) -> dict[str, list[bpy.types.Object]]:
    """New objects with the faces labelled with each prompt, in "MaskField: <prompt>" collections.

    ``labels`` has one int per face of ``faces`` (-1 background, else index into ``prompts``).
    The source objects are left untouched, unless ``in_place``: then the faces that went to
    a prompt are removed from them (the originals are split, as Blender's Separate does).
    """
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != faces.total:
        raise DataError(f"the segmentation has {len(labels)} face labels, the face table {faces.total}; "
                           "segment again")
    _refuse_changed_meshes(faces)
    if in_place:  # everything checked before anything changes
        taken = (labels >= 0) & (labels < len(prompts))
        for entry in faces.objects:
            src = FacesMap.source_of(entry)
            if src is None or not taken[entry["start"]: entry["start"] + entry["count"]].any():
                continue
            if entry.get("instance"):
                raise DataError(f"'{entry['name']}' is shown by a collection instance, whose faces every copy "
                                "shares, and cannot be split; turn off Split originals (new objects are made "
                                "instead), or make the instance real first (Object > Apply > Make Instances Real)")
            if src.library is not None or src.data.library is not None or getattr(src.data, "override_library", None):
                raise DataError(f"'{src.name}' is linked from a library and cannot be split; turn off Split "
                                "originals (new objects are made instead), or make it local first")
            if not FacesMap.own_faces(entry):
                raise DataError(f"'{src.name}' shows {entry['count']} faces through its modifiers but its mesh has "
                                f"{entry.get('faces')}; Split originals cannot split it. Apply the modifiers first, "
                                "or turn off Split originals (new objects are made from what you see)")
    depsgraph = None
    made: dict[str, list[bpy.types.Object]] = {}
    for k, prompt in enumerate(prompts):
        clear_prompt(scene, prompt)
        made[prompt] = []
        if not np.any(labels == k):
            continue
        coll = prompt_collection(scene, prompt, run)
        for entry in faces.objects:
            part = FacesMap.instance_part(entry)
            src = part.member if part is not None else FacesMap.source_of(entry)
            if src is None or src.type != "MESH":
                continue
            lab = labels[entry["start"]: entry["start"] + entry["count"]]
            keep = lab == k
            if not keep.any():
                continue
            name = f"{prompt} ({entry['name'] if part is not None else src.name})"
            shown = entry.get("evaluated")
            if shown:  # the faces as the user sees them: modifiers and shape keys applied
                if depsgraph is None:
                    from .scene_render import scene_depsgraph

                    depsgraph = scene_depsgraph(scene)
                from .scene_render import shown_object

                # geometry-nodes instances realized as the face table made them
                with shown_object(src, depsgraph, bool(entry.get("realized"))) as src_eval:
                    base = bpy.data.meshes.new_from_object(src_eval, preserve_all_data_layers=True,
                                                           depsgraph=depsgraph)
                me = _mesh_keep_faces(base, keep, name)
                bpy.data.meshes.remove(base)
            else:
                me = _mesh_keep_faces(src.data, keep, name)
            _tag(me, prompt, run)
            ob = src.copy()
            ob.data = me
            ob.name = name
            if shown:
                ob.modifiers.clear()  # already applied to the new mesh
            ob.animation_data_clear()
            for key in list(ob.keys()):
                if key.startswith("maskfield_"):
                    del ob[key]
            if part is not None:  # placed where the instance shows it, on its own
                ob.parent = None
                ob.constraints.clear()
                ob.matrix_world = part.matrix_world
            _tag(ob, prompt, run)
            ob["maskfield_source"] = entry["name"] if part is not None else src.name
            coll.objects.link(ob)
            made[prompt].append(ob)
    if in_place:
        taken = (labels >= 0) & (labels < len(prompts))
        for entry in faces.objects:
            src = None if entry.get("instance") else bpy.data.objects.get(entry["name"])
            keep = ~taken[entry["start"]: entry["start"] + entry["count"]]
            if src is None or src.type != "MESH" or keep.all():
                continue
            if src.data.users > 1:  # a linked duplicate's mesh: split only this object's copy
                src.data = src.data.copy()
            _delete_faces(src.data, np.flatnonzero(~keep))
    return made


def select_faces(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer, faces: FacesMap, labels: np.ndarray,
                 prompt_ids: Sequence[int]) -> int:
    """Select the faces labelled with any of ``prompt_ids`` (and their objects); returns the count."""
    labels = np.asarray(labels).reshape(-1)
    _refuse_changed_meshes(faces)
    wanted = np.isin(labels, np.asarray(list(prompt_ids), dtype=labels.dtype))
    total = 0
    chosen: list[bpy.types.Object] = []
    for entry in faces.objects:
        part = FacesMap.instance_part(entry)
        if part is not None:  # an instance's faces are every copy's: the instance is selected
            n = int(wanted[entry["start"]: entry["start"] + entry["count"]].sum())
            total += n
            if n and part.instancer not in chosen:
                chosen.append(part.instancer)
            continue
        ob = bpy.data.objects.get(entry["name"])
        if ob is None or ob.type != "MESH":
            continue
        me = ob.data
        mask = wanted[entry["start"]: entry["start"] + entry["count"]]
        if ob.mode == "EDIT":
            continue  # edit-mode data would overwrite the selection; such objects are skipped
        n = int(mask.sum())
        # faces of a linked mesh cannot be changed, nor faces a modifier made: the object is selected
        if FacesMap.own_faces(entry) and me.library is None:
            _set_face_selection(me, mask)
        total += n
        if n:
            chosen.append(ob)
    names = {ob.name for ob in chosen}
    for ob in view_layer.objects:
        try:
            ob.select_set(ob.name in names)
        except RuntimeError:
            pass
    if chosen:
        view_layer.objects.active = chosen[0]
    return total


def _set_face_selection(me: bpy.types.Mesh, face_mask: np.ndarray) -> None:
    npoly, nloop = len(me.polygons), len(me.loops)
    face_mask = np.asarray(face_mask, dtype=bool)
    me.polygons.foreach_set("select", face_mask)
    loop_total = np.empty(npoly, dtype=np.int32)
    me.polygons.foreach_get("loop_total", loop_total)
    loop_vert = np.empty(nloop, dtype=np.int32)
    me.loops.foreach_get("vertex_index", loop_vert)
    loop_edge = np.empty(nloop, dtype=np.int32)
    me.loops.foreach_get("edge_index", loop_edge)
    loop_sel = np.repeat(face_mask, loop_total)
    vsel = np.zeros(len(me.vertices), dtype=np.bool_)
    vsel[loop_vert[loop_sel]] = True
    esel = np.zeros(len(me.edges), dtype=np.bool_)
    esel[loop_edge[loop_sel]] = True
    me.vertices.foreach_set("select", vsel)
    me.edges.foreach_set("select", esel)
    me.update()


def select_points(ob: bpy.types.Object, indices: np.ndarray) -> int:
    me = ob.data
    mask = np.zeros(len(me.vertices), dtype=np.bool_)
    idx = np.asarray(indices, dtype=np.int64)
    idx = idx[(idx >= 0) & (idx < len(mask))]
    mask[idx] = True
    me.vertices.foreach_set("select", mask)
    me.update()
    return int(mask.sum())


# ----------------------------------------------------------------------------------------
# segments of the backend


def load_segments(out_dir: str) -> dict:
    path = os.path.join(out_dir, "segments.json")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DataError(f"the backend wrote no readable segments.json in {out_dir}: {exc}") from exc
    def absolute(d: dict, *keys: str) -> None:
        for key in keys:
            value = d.get(key)
            if value and not os.path.isabs(value):
                d[key] = os.path.join(out_dir, value)

    for entry in data.get("prompts", []):
        absolute(entry, "npz", "ply", "compressed_ply")
        if isinstance(entry.get("mesh"), dict):
            absolute(entry["mesh"], "npz", "ply")
        for part in entry.get("parts") or []:
            absolute(part, "npz", "ply")
    pl = data.get("point_labels")
    if pl and not os.path.isabs(pl):
        data["point_labels"] = os.path.join(out_dir, pl)
    return data


def export_segments(segments: dict, dest: str) -> list[str]:
    """Copy the backend's per-prompt .ply files into ``dest``; returns the new paths."""
    os.makedirs(dest, exist_ok=True)
    written = []
    for entry in segments.get("prompts", []):
        files = [entry.get("ply"), entry.get("compressed_ply"), (entry.get("mesh") or {}).get("ply")]
        files += [p.get("ply") for p in entry.get("parts") or []]
        for src in files:
            if not src or not os.path.isfile(src):
                continue
            target = os.path.join(dest, os.path.basename(src))
            if os.path.abspath(target) != os.path.abspath(src):
                shutil.copyfile(src, target)
            written.append(target)
    return written


# ----------------------------------------------------------------------------------------
# mesh from Gaussians (Blender's own geometry)

MESH_GROUP = "MaskField Gaussians to Mesh"


def _set_voxel_size(node, voxel: float) -> None:
    """Voxel-size resolution mode: a menu socket in Blender 5.0, a node property before."""
    if "Resolution Mode" in node.inputs:
        cast(Any, node.inputs["Resolution Mode"]).default_value = "Size"
    else:  # pragma: no cover - Blender < 5.0
        cast(Any, node).resolution_mode = "VOXEL_SIZE"
    cast(Any, node.inputs["Voxel Size"]).default_value = voxel


def _gaussians_to_mesh_group(voxel: float) -> bpy.types.NodeTree:
    """Points (radius = the Gaussian's mean scale) -> volume -> mesh at half density, each
    vertex coloured like its nearest Gaussian. benchmarks/bench_mesh.py measured this against
    the backend's marching cubes on the tabletop (Chamfer distance to the true meshes)."""
    ng = bpy.data.node_groups.new(MESH_GROUP, "GeometryNodeTree")
    _tag(ng)
    ng.interface.new_socket(name="Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    ng.interface.new_socket(name="Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = ng.nodes, ng.links
    gin, gout = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    to_points = nodes.new("GeometryNodeMeshToPoints")
    radius = cast(Any, nodes.new("GeometryNodeInputNamedAttribute"))
    radius.data_type = "FLOAT"
    radius.inputs["Name"].default_value = "radius"
    to_volume = cast(Any, nodes.new("GeometryNodePointsToVolume"))
    to_mesh = cast(Any, nodes.new("GeometryNodeVolumeToMesh"))
    _set_voxel_size(to_volume, voxel)
    _set_voxel_size(to_mesh, voxel)
    to_volume.inputs["Density"].default_value = 1.0
    to_mesh.inputs["Threshold"].default_value = 0.5
    point_radius = nodes.new("GeometryNodeInputRadius")
    colour = cast(Any, nodes.new("GeometryNodeInputNamedAttribute"))
    colour.data_type = "FLOAT_COLOR"
    colour.inputs["Name"].default_value = "color"
    nearest = cast(Any, nodes.new("GeometryNodeSampleNearest"))
    nearest.domain = "POINT"
    position = nodes.new("GeometryNodeInputPosition")
    sample = cast(Any, nodes.new("GeometryNodeSampleIndex"))
    sample.data_type, sample.domain = "FLOAT_COLOR", "POINT"
    store = cast(Any, nodes.new("GeometryNodeStoreNamedAttribute"))
    store.data_type, store.domain = "FLOAT_COLOR", "POINT"
    store.inputs["Name"].default_value = "color"
    set_mat = cast(Any, nodes.new("GeometryNodeSetMaterial"))
    set_mat.inputs["Material"].default_value = _points_material(MESH_MATERIAL, "color")
    # Mesh to Points writes the built-in 'radius' from the mesh's own per-vertex 'radius'
    links.new(gin.outputs[0], to_points.inputs["Mesh"])
    links.new(radius.outputs["Attribute"], to_points.inputs["Radius"])
    links.new(to_points.outputs["Points"], to_volume.inputs["Points"])
    links.new(point_radius.outputs["Radius"], to_volume.inputs["Radius"])
    links.new(to_volume.outputs["Volume"], to_mesh.inputs["Volume"])
    links.new(gin.outputs[0], nearest.inputs["Geometry"])
    links.new(position.outputs["Position"], nearest.inputs["Sample Position"])
    links.new(gin.outputs[0], sample.inputs["Geometry"])
    links.new(colour.outputs["Attribute"], sample.inputs["Value"])
    links.new(nearest.outputs["Index"], sample.inputs["Index"])
    links.new(to_mesh.outputs["Mesh"], store.inputs["Geometry"])
    links.new(sample.outputs[0], store.inputs["Value"])
    links.new(store.outputs["Geometry"], set_mat.inputs["Geometry"])
    links.new(set_mat.outputs["Geometry"], gout.inputs[0])
    return ng


def mesh_from_gaussians(points_ob: bpy.types.Object, name: str, collection: bpy.types.Collection,
                        prompt: str | None = None, run: str | None = None, resolution: int = 88) -> bpy.types.Object:
    """A closed, vertex-coloured mesh of a segment's point object (Faces mode for photo
    sources), made with Blender's geometry nodes; the point object is left as it was."""
    me = cast(bpy.types.Mesh, points_ob.data)
    co = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    if len(co) == 0:
        raise DataError(f"'{points_ob.name}' has no points to make a mesh from")
    voxel = float(max(np.ptp(co, axis=0).max(), 1e-3)) / resolution
    ng = _gaussians_to_mesh_group(voxel)
    tmp = bpy.data.objects.new(name + " (points)", me)
    collection.objects.link(tmp)
    try:
        mod = cast(Any, tmp.modifiers.new("to mesh", "NODES"))
        mod.node_group = ng
        depsgraph = bpy.context.evaluated_depsgraph_get()
        result = bpy.data.meshes.new_from_object(tmp.evaluated_get(depsgraph), depsgraph=depsgraph)
    finally:
        bpy.data.objects.remove(tmp, do_unlink=True)
        bpy.data.node_groups.remove(ng)
    result.name = name
    if not result.materials:
        result.materials.append(_points_material(MESH_MATERIAL, "color"))
    col = result.color_attributes.get("color")
    if col is not None:
        try:
            result.color_attributes.active_color = col
        except (AttributeError, TypeError):
            pass
    _tag(result, prompt, run)
    ob = bpy.data.objects.new(name, result)
    _tag(ob, prompt, run)
    collection.objects.link(ob)
    return ob
