"""Selecting like an artist, on constructed fields whose answer is known: granularity (part /
object / group), pointing at a 3D position, the rest of a capture, labels that travel in a
.ply, meshes from Gaussians, and SuperSplat's compressed export."""
from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest
import torch

from maskfield.events import MaskFieldError
from maskfield.meshing import MeshSettings, chamfer_distance, gaussians_to_mesh, is_closed, read_mesh_ply
from maskfield.segment import SegmentRequest, write_segments
from maskfield.splats.model import Gaussians
from maskfield.splats.ply import read_ply, read_ply_extra

from conftest import SPLAT_TRANSFORM

from select_scene import BACK_IDS, CHAIR, SEAT_IDS, TABLE_IDS, chair_scene, write_chair_run  # noqa: E402


def selected(label, j=0):
    return np.nonzero(label == j)[0].tolist()


def test_granularity_is_recorded_per_query_during_training(tmp_path):
    from maskfield.field.data import FieldView
    from maskfield.field.train import MatchStats, field_loss, MaskField, FieldSettings

    # one view, two masks: a part (granularity 0, 1 of 4 pixels) and an object (1, all 4)
    targets = torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 1, 1]])
    view = FieldView("v", torch.eye(4).to_sparse_csr(), torch.ones(4), targets,
                     torch.nn.functional.normalize(torch.randn(2, 8), dim=-1), torch.ones(4, dtype=torch.bool), 2, 2,
                     granularity=torch.tensor([0, 1], dtype=torch.int8), mask_area=targets.mean(1))
    field = MaskField(4, 8, FieldSettings(num_queries=5, feature_dim=4))
    stats = MatchStats(5)
    for _ in range(3):
        field_loss(field, view, 1.0, 0.0, stats)
    summary = stats.summary()
    assert summary["granularity_counts"].sum() == 6  # two masks matched per step
    assert summary["granularity_counts"][:, 0].sum() == 3 and summary["granularity_counts"][:, 1].sum() == 3
    part_query = int(summary["granularity_counts"][:, 0].argmax())
    assert summary["mask_area"][part_query] == pytest.approx(0.25)
    # the image share per granularity: 3 part masks of 1/4, 3 object masks of the whole view
    np.testing.assert_allclose(summary["granularity_area"].sum(0), [0.75, 3.0, 0.0])
    back = MatchStats.from_state(stats.state(), 5)
    np.testing.assert_array_equal(back.counts, stats.counts)


def test_prompt_defaults_to_what_its_queries_mostly_matched_and_parts_come_apart():
    seg = chair_scene()
    assert seg.query_granularity.tolist() == [0, 0, 1, 1, 2, -1, -1]
    (chair,), label, _, _ = seg.segment(["chair"])
    assert chair.granularity == "object" and chair.queries.tolist() == [2]
    assert selected(label) == CHAIR
    (parts,), label, _, _ = seg.segment(["chair"], granularity="part")
    assert parts.granularity == "part" and sorted(parts.queries.tolist()) == [0, 1]
    assert selected(label) == CHAIR
    split = seg.split_parts(parts, np.array(CHAIR))
    assert sorted(sorted(idx.tolist()) for _, idx in split) == [SEAT_IDS, BACK_IDS]
    (group,), label, _, _ = seg.segment(["chair"], granularity="group")
    assert group.queries.tolist() == [4] and selected(label) == CHAIR + TABLE_IDS
    (anything,), label, _, _ = seg.segment(["chair"], granularity="any")
    assert sorted(anything.queries.tolist()) == [0, 1, 2] and selected(label) == CHAIR
    with pytest.raises(MaskFieldError, match="unknown granularity"):
        seg.segment(["chair"], granularity="huge")
    # "mostly" is by image area: parts matched far more often, but small, leave the object
    seg.granularity_counts[:2, 0] = 40
    seg.granularity_area[:2, 0] = 40 * 0.02
    seg.granularity_area[2, 1] = 10 * 0.25
    (chair,), _, _, _ = seg.segment(["chair"])
    assert chair.granularity == "object"
    seg.granularity_area[:2, 0] = 40 * 0.2  # big "parts" do take over
    (chair,), _, _, _ = seg.segment(["chair"])
    assert chair.granularity == "part"
    # a run trained before granularity was recorded: every query counts, as before
    old = chair_scene(with_stats=False)
    (chair,), label, _, _ = old.segment(["chair"])
    assert chair.granularity == "any" and sorted(chair.queries.tolist()) == [0, 1, 2]


def test_pointing_selects_the_thing_there_at_the_asked_granularity():
    seg = chair_scene()
    seat_point = seg.gaussians.means[SEAT_IDS].mean(0).detach().numpy()
    table_point = seg.gaussians.means[TABLE_IDS].mean(0).detach().numpy()
    chair, table = seg.select_at([seat_point, table_point])
    label, _, _ = seg.label_gaussians([chair, table])
    assert chair.prompt == "chair" and table.prompt == "table"
    assert selected(label, 0) == CHAIR and selected(label, 1) == TABLE_IDS
    (seat,) = seg.select_at([seat_point], "part")
    label, _, _ = seg.label_gaussians([seat])
    assert seat.queries.tolist() == [0] and selected(label) == SEAT_IDS
    (group,) = seg.select_at([table_point], "group")
    assert selected(seg.label_gaussians([group])[0]) == CHAIR + TABLE_IDS
    # nothing lights the background: nothing is selected, and the message says where
    (nothing,) = seg.select_at([[6.0, 0.0, 0.0]])
    assert not nothing.found and nothing.prompt.startswith("nothing at")
    # unnamed things are numbered by their query
    seg.object_names = []
    (unnamed,) = seg.select_at([table_point], names=["spaceship"])
    assert unnamed.prompt == "object 3"
    with pytest.raises(MaskFieldError, match="finite"):
        seg.select_at([[np.nan, 0, 0]])


def test_rest_and_segments_make_the_whole_run_and_labels_travel_in_the_ply(tmp_path):
    seg = chair_scene()
    table_point = seg.gaussians.means[TABLE_IDS].mean(0).detach().numpy().tolist()
    req = SegmentRequest(at=[table_point], rest=True, labels_ply=True)
    summary = write_segments(seg, ["chair"], tmp_path, request=req)
    chair, table = summary["prompts"]
    assert chair["found"] and table["found"] and table["prompt"] == "table" and table["at"] == table_point
    # rest + segments = the whole run, each Gaussian exactly once
    parts = [read_ply(tmp_path / e["ply"]) for e in (chair, table)] + [read_ply(tmp_path / "rest.ply")]
    assert summary["rest"]["count"] == 4 and sum(len(p) for p in parts) == len(seg.gaussians)
    joined = np.concatenate([p.means.detach().numpy() for p in parts])
    whole = seg.gaussians.means.detach().numpy()
    np.testing.assert_array_equal(np.unique(joined, axis=0), np.unique(whole, axis=0))
    # labels: the .ply carries label and label_score per Gaussian, the legend names them
    extra = read_ply_extra(tmp_path / "labels.ply", ("label", "label_score"))
    assert np.array_equal(extra["label"], np.round(extra["label"]))  # whole numbers, stored as float
    np.testing.assert_array_equal(extra["label"], [0] * 8 + [1] * 4 + [-1] * 4)
    assert (extra["label_score"][:12] > 0.99).all() and (extra["label_score"][12:] == 0).all()
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npz")["label"], extra["label"])
    legend = json.loads((tmp_path / "labels.json").read_text())
    assert [(e["label"], e["prompt"]) for e in legend["labels"]] == [(0, "chair"), (1, "table")]
    assert legend["none"]["label"] == -1 and len(legend["labels"][0]["colour"]) == 3
    assert legend["labels"][0]["colour"] != legend["labels"][1]["colour"]
    # the Gaussians themselves read back unchanged from the labelled file
    back = read_ply(tmp_path / "labels.ply")
    np.testing.assert_array_equal(back.means.detach().numpy(), whole)
    with pytest.raises(MaskFieldError, match="nothing to segment"):
        write_segments(seg, [], tmp_path)


def test_part_prompts_write_each_part(tmp_path):
    seg = chair_scene()
    summary = write_segments(seg, ["chair"], tmp_path, request=SegmentRequest(granularity="part"))
    parts = summary["prompts"][0]["parts"]
    got = sorted(sorted(np.load(tmp_path / p["npz"])["indices"].tolist()) for p in parts)
    assert got == [SEAT_IDS, BACK_IDS] and all((tmp_path / p["ply"]).exists() for p in parts)


def flat_sphere(n=1500, radius=0.2, centre=(0.3, 0.0, 0.2), colour=(0.8, 0.2, 0.1), seed=0):
    """Flat splats tangent to a sphere (as a colour fit leaves them on a surface)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(z, d)
    s = np.linalg.norm(axis, axis=1)
    angle = np.arctan2(s, d @ z)
    axis /= np.maximum(s, 1e-9)[:, None]
    quats = np.concatenate([np.cos(angle / 2)[:, None], axis * np.sin(angle / 2)[:, None]], 1)
    scales = np.tile([radius * 0.08, radius * 0.08, radius * 0.004], (n, 1))
    sh0 = (np.asarray(colour) - 0.5) / 0.28209479177387814
    return Gaussians({"means": torch.tensor(d * radius + centre, dtype=torch.float32),
                      "scales": torch.tensor(np.log(scales), dtype=torch.float32),
                      "quats": torch.tensor(quats, dtype=torch.float32),
                      "opacities": torch.full((n,), 2.0),
                      "sh0": torch.tensor(np.tile(sh0, (n, 1, 1)), dtype=torch.float32),
                      "shN": torch.zeros(n, 0, 3)}, sh_degree=0)


def test_mesh_from_gaussians_is_closed_coloured_and_on_the_surface():
    g = flat_sphere()
    mesh = gaussians_to_mesh(g, MeshSettings(resolution=48))
    assert len(mesh.faces) > 500 and is_closed(mesh.faces)
    r = np.linalg.norm(mesh.vertices - np.array([0.3, 0.0, 0.2]), axis=1)
    # the level set (accumulated opacity 0.2) lies within ~1.5 voxels outside the splats
    assert abs(r.mean() - 0.2) < 2 * mesh.voxel and r.max() - r.min() < 3 * mesh.voxel
    np.testing.assert_allclose(mesh.colours.mean(0), [0.8, 0.2, 0.1], atol=0.02)
    # a solid: the hollow shell of splats gives one outer surface, not two
    truth = np.random.default_rng(1).normal(size=(4000, 3))
    truth = truth / np.linalg.norm(truth, axis=1, keepdims=True) * 0.2 + [0.3, 0.0, 0.2]
    assert chamfer_distance(mesh.vertices, truth) < 2 * mesh.voxel
    faint = flat_sphere(n=50)
    faint.params["opacities"] = torch.full((50,), -5.0)
    assert len(gaussians_to_mesh(faint).faces) == 0


def test_segment_writes_meshes(tmp_path):
    seg = chair_scene()
    seg.gaussians.params["scales"] = torch.full((16, 3), float(np.log(0.2)))  # blobs big enough to close up
    summary = write_segments(seg, ["table"], tmp_path, request=SegmentRequest(mesh=True))
    entry = summary["prompts"][0]
    assert entry["mesh"]["faces"] > 0
    mesh = read_mesh_ply(tmp_path / entry["mesh"]["ply"])
    arrays = np.load(tmp_path / entry["mesh"]["npz"])
    assert len(mesh.faces) == entry["mesh"]["faces"] == len(arrays["faces"]) and is_closed(mesh.faces)
    np.testing.assert_allclose(mesh.vertices, arrays["vertices"], atol=1e-6)
    assert np.allclose(mesh.colours, 0.5, atol=0.01)


def splat_transform(*args):
    assert SPLAT_TRANSFORM.exists(), f"{SPLAT_TRANSFORM} is missing: run `bash scripts/ensure_env.sh`"
    proc = subprocess.run([str(SPLAT_TRANSFORM), "-w", *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_supersplat_reads_the_labels_ply_and_its_compressed_form_drops_them(tmp_path, monkeypatch):
    seg = chair_scene()
    monkeypatch.setenv("MASKFIELD_SPLAT_TRANSFORM", str(SPLAT_TRANSFORM))
    summary = write_segments(seg, ["chair"], tmp_path, request=SegmentRequest(labels_ply=True, supersplat=True))
    assert summary["supersplat"]["written"] and "label" in summary["supersplat"]["drops"]
    compressed = tmp_path / summary["prompts"][0]["compressed_ply"]
    assert compressed.exists() and compressed.stat().st_size > 0
    # the reference .ply: SuperSplat's reader keeps label and label_score
    splat_transform(tmp_path / "labels.ply", tmp_path / "labels.csv")
    with open(tmp_path / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(float(r["label"])) for r in rows] == [0] * 8 + [-1] * 8
    # the compressed one keeps the Gaussians but not the extra properties (as SUPERSPLAT_DROPS says)
    splat_transform(compressed, tmp_path / "chair.csv")
    with open(tmp_path / "chair.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and "segment_score" not in rows[0] and "x" in rows[0]


def test_cli_segment_at_a_position_and_serve_it(tmp_path):
    """`maskfield segment RUN --at X Y Z` and the same through `maskfield serve`, on a run folder
    of the constructed chair (a real field.pt): no text, no CLIP."""
    import sys

    from select_scene import CENTRES

    run = write_chair_run(tmp_path / "run")
    seat, table = CENTRES[0], CENTRES[2]
    proc = subprocess.run([sys.executable, "-m", "maskfield.cli", "segment", str(run), "--at", *map(str, seat),
                           "--at", *map(str, table), "--rest", "--out", str(tmp_path / "out"), "--events", "jsonl"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "segments.json").read_text())
    chair, tbl = summary["prompts"]
    assert (chair["prompt"], tbl["prompt"]) == ("chair", "table") and chair["at"] == [float(v) for v in seat]
    assert sorted(np.load(tmp_path / "out" / "chair.npz")["indices"].tolist()) == CHAIR
    assert sorted(np.load(tmp_path / "out" / "table.npz")["indices"].tolist()) == TABLE_IDS
    assert summary["rest"]["count"] == 4 and len(read_ply(tmp_path / "out" / "rest.ply")) == 4
    requests = "\n".join(json.dumps(r) for r in [
        {"cmd": "segment", "id": 1, "at": [seat.tolist()], "at_granularity": "part", "out": str(tmp_path / "s1")},
        {"cmd": "segment", "id": 2, "at": [[1, 2]], "out": str(tmp_path / "s2")},
        {"cmd": "segment", "id": 3, "prompts": ["chair"], "granularity": ["part"], "out": str(tmp_path / "s3")},
        {"cmd": "quit"}]) + "\n"
    proc = subprocess.run([sys.executable, "-m", "maskfield.cli", "serve", str(run)], input=requests,
                          capture_output=True, text=True, timeout=300)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    results = {e["id"]: e for e in events if e["event"] == "result"}
    errors = [e for e in events if e["event"] == "error"]
    assert sorted(results) == [1, 3] and errors and "[x, y, z]" in errors[0]["message"]
    assert results[1]["prompts"][0]["prompt"] == "chair" and results[1]["prompts"][0]["granularity"] == "part"
    assert sorted(np.load(tmp_path / "s1" / "chair.npz")["indices"].tolist()) == SEAT_IDS
    assert len(results[3]["prompts"][0]["parts"]) == 2
