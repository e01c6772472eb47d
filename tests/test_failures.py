"""Every failure is a message, nothing is lost (issue 11): the backend under bad input, faults
and concurrency. Each case asserts the message, the exit code or event, and that no file was
lost or half-written."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, look_at_c2w_gl, write_png

PY = sys.executable


def make_scene(folder: Path, n=8, w=40, h=30, same_position=False, scale=None, labels=True) -> Path:
    """Random photos around the origin, instance labels (two objects) and transforms.json."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        a = 2 * np.pi * i / n
        if same_position:  # every camera at one place, looking around
            c2w = look_at_c2w_gl([3, 0, 1], target=(3 + np.cos(a), np.sin(a), 1))
        else:
            c2w = look_at_c2w_gl([3 * np.cos(a), 3 * np.sin(a), 1.0])
        if scale is not None and i in scale:
            c2w[:3, :3] = c2w[:3, :3] @ np.diag(scale[i])
        write_png(folder / "images" / f"{i:03d}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        if labels:
            lab = np.zeros((h, w), np.uint8)
            lab[5:15, 5:20] = 1
            lab[15:28, 20:38] = 2
            write_png(folder / "labels" / f"{i:03d}.png", lab)
        frames.append({"file_path": f"images/{i:03d}.png", "transform_matrix": c2w.tolist()})
    if labels:
        (folder / "labels" / "objects.json").write_text(json.dumps({"1": "red mug", "2": "blue box"}))
    (folder / "transforms.json").write_text(json.dumps({"fl_x": 35, "fl_y": 35, "cx": w / 2, "cy": h / 2, "w": w,
                                                        "h": h, "frames": frames}))
    return folder


def cli(*args, stdin: str | None = None, capsys=None):
    """maskfield.cli.main in this process (no interpreter start-up); returns (code, stdout, stderr)."""
    from maskfield import cli as mf_cli

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    old_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        try:
            code = mf_cli.main([str(a) for a in args])
        except SystemExit as exc:  # argparse
            code = exc.code
    finally:
        sys.stdin = old_stdin
        for s, h in saved.items():
            signal.signal(s, h)
    out = capsys.readouterr() if capsys is not None else None
    return code, (out.out if out else ""), (out.err if out else "")


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def tree(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes' hash: what 'nothing was lost' compares."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene") / "scène")


@pytest.fixture(scope="module")
def trained(scene, tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    code, _, _ = cli("train", scene, "--out", run, "--iterations", "10", "--init-points", "300", "--from-labels",
                     "--field-iterations", "10", "--field-resolution", "32", "--events", "none")
    assert code == 0
    return run


# --- 1. no uncaught exception ---------------------------------------------------------------

@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's read-only /proc")
def test_unwritable_out_gets_one_error_event(scene, capsys):
    code, out, err = cli("fit", scene, "--out", "/proc/maskfield-run", "--iterations", "2", "--events", "jsonl",
                         capsys=capsys)
    assert code == 2
    evs = events(out)
    assert [e["event"] for e in evs] == ["error"] and evs[0]["kind"] == "io"
    assert "/proc/maskfield-run" in evs[0]["message"] and "Choose a folder you can write to" in evs[0]["message"]
    assert "Traceback" not in out + err


def test_out_that_is_a_file_is_refused_and_left_alone(scene, trained, tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("my notes")
    for args in (("priors", scene, "--out", afile, "--from-labels"),
                 ("segment", trained, "--prompt", "red mug", "--out", afile),
                 ("fit", scene, "--out", afile, "--iterations", "2")):
        code, out, err = cli(*args, "--events", "none", capsys=capsys)
        assert code == 2, args
        assert f"--out {afile} is a file, not a folder" in err and "Traceback" not in err, err
        assert afile.read_text() == "my notes"


def test_internal_error_names_its_log_in_the_run_folder(trained, capsys, monkeypatch):
    from maskfield import cli as mf_cli

    def broken(args, reporter):
        return {}["no such key"]  # a bug

    monkeypatch.setitem(mf_cli.COMMANDS, "train-field", broken)
    before = tree(trained)
    code, out, err = cli("train-field", trained, "--events", "jsonl", capsys=capsys)
    assert code == 1
    (event,) = events(out)
    assert event["event"] == "error" and event["kind"] == "internal"
    assert "internal error (KeyError" in event["message"] and "bug" in event["message"]
    log = Path(event["message"].split("report is in ")[1].split(", please")[0])
    assert log.parent == trained / "logs" and "Traceback" in log.read_text() and "no such key" in log.read_text()
    assert "\n" not in event["message"]
    after = tree(trained)
    assert {k: v for k, v in after.items() if not k.startswith("logs")} == before
    code, out, err = cli("train-field", trained, "--events", "none", capsys=capsys)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: internal error")


def test_usage_errors_are_events_in_jsonl_mode(scene, tmp_path, capsys):
    code, out, err = cli("fit", scene, "--out", tmp_path / "r", "--iterations", "-3", "--events", "jsonl",
                         capsys=capsys)
    assert code == 2
    (event,) = events(out)
    assert event["kind"] == "usage" and "--iterations: -3 is out of range; allowed: at least 1" in event["message"]
    assert not (tmp_path / "r").exists()


def test_a_500_character_prompt_gets_a_short_file_name(trained, tmp_path, capsys):
    prompt = "red mug " * 63
    code, out, err = cli("segment", trained, "--prompt", prompt, "--prompt", prompt + "x", "--out", tmp_path / "seg",
                         "--events", "none", capsys=capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "seg" / "segments.json").read_text())
    slugs = [p["slug"] for p in summary["prompts"]]
    assert len(set(slugs)) == 2 and all(len(s.encode()) <= 80 for s in slugs)
    assert summary["prompts"][0]["prompt"] == prompt.strip()
    for p in summary["prompts"]:
        assert p["npz"] is None or (tmp_path / "seg" / p["npz"]).is_file()


def test_full_disk_names_the_file_and_keeps_the_last_checkpoint(scene, tmp_path):
    """A real write failure (a file-size limit stands in for a full disk: the same OSError path
    through torch.save), in a subprocess so the limit applies to it alone."""
    import resource

    run = tmp_path / "run"
    args = [PY, "-m", "maskfield.cli", "fit", str(scene), "--out", str(run), "--iterations", "3",
            "--init-points", "3000", "--events", "jsonl"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = (run / "fit_checkpoint.pt").read_bytes()
    assert len(before) > 300_000

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = subprocess.run(args + ["--no-resume"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [e for e in events(proc.stdout) if e["event"] == "error"][0]
    assert f"cannot write {run / 'fit_checkpoint.pt'}: File too large" in err["message"]
    assert "the previous fit_checkpoint.pt is kept as it was" in err["message"]
    assert "unexpected pos" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert (run / "fit_checkpoint.pt").read_bytes() == before  # the last good checkpoint is kept
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# --- 2. serve never dies on a request ---------------------------------------------------------

def test_serve_answers_every_bad_request_and_keeps_serving(trained, tmp_path, capsys):
    long_prompt = "red mug " * 63
    lines = ["[1,2]", '{"cmd":"segment","prompts":[42]}', '{"cmd":"segment","prompts":"red ball"}',
             "not json", '{"cmd":"dance"}', '{"cmd":"segment","prompts":[]}',
             '{"cmd":"segment","prompts":["x"],"out":7}',
             json.dumps({"cmd": "segment", "prompts": [long_prompt], "out": str(tmp_path / "long"), "id": "L"}),
             json.dumps({"cmd": "segment", "prompts": ["red mug"], "points": str(tmp_path / "none.npy"),
                         "out": str(tmp_path / "p"), "id": "P"}),
             json.dumps({"cmd": "segment", "prompts": ["red mug"], "out": str(tmp_path / "ok"), "id": 9}),
             '{"cmd":"quit"}']
    code, out, err = cli("serve", trained, stdin="\n".join(lines) + "\n", capsys=capsys)
    assert code == 0
    evs = [e for e in events(out) if e["event"] in ("ready", "result", "error")]
    assert evs[0]["event"] == "ready"
    answers = evs[1:]
    assert [e["event"] for e in answers] == ["error"] * 7 + ["result", "error", "result"], answers
    msgs = [e.get("message", "") for e in answers]
    assert "must be a JSON object, got list" in msgs[0]
    assert "every prompt must be a string; got 42" in msgs[1]
    assert "'prompts' must be a list of strings, got the string 'red ball'" in msgs[2] and '["red ball"]' in msgs[2]
    assert "not a JSON request" in msgs[3] and "unknown request 'dance'" in msgs[4]
    assert "non-empty list" in msgs[5] and "'out' must be a path" in msgs[6]
    assert answers[7]["id"] == "L" and answers[8]["id"] == "P" and "cannot read --points" in msgs[8]
    assert answers[9]["id"] == 9 and (tmp_path / "ok" / "red-mug.npz").is_file()
    assert not (tmp_path / "p").exists()  # the bad points file was refused before anything was written


# --- 3. degenerate geometry -----------------------------------------------------------------

def test_cameras_at_one_position_are_refused_before_fitting(tmp_path, capsys):
    scene = make_scene(tmp_path / "same", same_position=True, labels=False)
    code, out, err = cli("fit", scene, "--out", tmp_path / "run", "--iterations", "5", "--init-points", "300",
                         "--events", "none", capsys=capsys)
    assert code == 2
    assert "all 7 training cameras are at one position" in err and "no baseline" in err
    assert not (tmp_path / "run" / "gaussians.ply").exists()


def _fit_in_process(scene_dir, run_dir, **settings):
    from maskfield.run import RunFolder
    from maskfield.scene import load_scene
    from maskfield.splats.fit import FitSettings, fit

    scene = load_scene(scene_dir)
    run = RunFolder(run_dir)
    run.claim(scene, scene_dir)
    return fit(scene, run, FitSettings(init_points=300, **settings), device="cpu"), run


def test_non_finite_gaussians_stop_the_fit_and_keep_the_last_checkpoint(scene, tmp_path, monkeypatch):
    import torch

    from maskfield.events import MaskFieldError

    from maskfield.adam import Adam

    real_step = Adam.step
    calls = {"n": 0}

    def poisoned_step(self, *a, **k):  # a fault: positions become NaN at the 8th step
        out = real_step(self, *a, **k)
        group = self.param_groups[0]
        if group.get("name") == "means":
            calls["n"] += 1
            if calls["n"] == 8:
                with torch.no_grad():
                    group["params"][0][:5] = float("nan")
        return out

    monkeypatch.setattr(Adam, "step", poisoned_step)
    with pytest.raises(MaskFieldError) as err:
        _fit_in_process(scene, tmp_path / "run", iterations=12, checkpoint_every=5)
    msg = str(err.value)
    assert "the colour fit broke at step 8" in msg and "5 Gaussians have NaN or infinite 'means'" in msg
    assert "The last good state is kept in fit_checkpoint.pt" in msg
    ckpt = torch.load(tmp_path / "run" / "fit_checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 5 and torch.isfinite(ckpt["gaussians"]["params"]["means"]).all()
    assert not (tmp_path / "run" / "gaussians.ply").exists()


def test_pruning_to_nothing_stops_with_a_reason(scene, tmp_path, monkeypatch):
    import functools

    import gsplat.strategy

    from maskfield.events import MaskFieldError

    # gsplat's own pruning, told to prune every Gaussian (opacity below 2) at its first refinement
    monkeypatch.setattr(gsplat.strategy, "DefaultStrategy",
                        functools.partial(gsplat.strategy.DefaultStrategy, prune_opa=2.0))
    with pytest.raises(MaskFieldError, match=r"every Gaussian was pruned away at step \d+: .*No checkpoint"):
        _fit_in_process(scene, tmp_path / "run", iterations=10, refine_start=2, refine_every=2)
    assert not (tmp_path / "run" / "gaussians.ply").exists()


def test_empty_seed_and_empty_ply_are_refused(scene, tmp_path, capsys):
    code, out, err = cli("fit", scene, "--out", tmp_path / "a", "--init-points", "0", "--events", "none",
                         capsys=capsys)
    assert code == 2 and "--init-points: 0 is out of range; allowed: at least 1" in err
    empty = tmp_path / "empty.ply"
    names = "x y z f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3".split()
    empty.write_text("ply\nformat binary_little_endian 1.0\nelement vertex 0\n"
                     + "".join(f"property float {k}\n" for k in names) + "end_header\n")
    code, out, err = cli("train", scene, "--out", tmp_path / "b", "--ply", empty, "--from-labels", "--events", "none",
                         capsys=capsys)
    assert code == 2 and f"{empty} holds 0 Gaussians" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- 4. images as cameras see them ------------------------------------------------------------

def _portrait_jpeg(path: Path, stored_w=40, stored_h=30) -> np.ndarray:
    """A phone's portrait photo: stored landscape, EXIF orientation 6 (turn 90 degrees clockwise)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = np.zeros((stored_h, stored_w, 3), np.uint8)
    pixels[:, : stored_w // 2] = (250, 10, 10)  # left half red as stored -> top half red when shown
    pixels[:, stored_w // 2:] = (10, 10, 250)
    pixels[0, 0] = rng.integers(0, 255, 3)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, exif=exif, quality=95)
    return pixels


def test_exif_orientation_is_honoured(tmp_path):
    from maskfield.scene.images import image_size, read_image

    _portrait_jpeg(tmp_path / "p.jpg")
    shown = read_image(tmp_path / "p.jpg")
    assert shown.shape == (40, 30, 3) and image_size(tmp_path / "p.jpg") == (30, 40)
    assert shown[:15, :, 0].mean() > 0.9 and shown[25:, :, 2].mean() > 0.9  # red on top, blue below


def test_poses_made_on_unrotated_pixels_are_named(tmp_path):
    from maskfield.events import MaskFieldError
    from maskfield.scene import load_scene

    folder = tmp_path / "phone"
    frames = []
    for i in range(3):
        _portrait_jpeg(folder / "images" / f"{i}.jpg")
        frames.append({"file_path": f"images/{i}.jpg", "transform_matrix": look_at_c2w_gl([3, i, 1]).tolist()})
    meta = {"fl_x": 30, "fl_y": 30, "frames": frames}
    (folder / "transforms.json").write_text(json.dumps({**meta, "w": 30, "h": 40}))
    scene = load_scene(folder)  # the camera file agrees with the upright photo
    assert (scene.cameras[0].width, scene.cameras[0].height) == (30, 40)
    assert scene.load_image(0).shape == (40, 30, 3)
    (folder / "transforms.json").write_text(json.dumps({**meta, "w": 40, "h": 30}))  # poses of stored pixels
    with pytest.raises(MaskFieldError) as err:
        load_scene(folder)
    msg = str(err.value)
    assert "frame 0" in msg and "says 40x30" in msg and "EXIF orientation" in msg and "-Orientation=" in msg


def test_uniform_camera_scale_is_removed_and_said(tmp_path, capsys):
    from maskfield.events import MaskFieldError
    from maskfield.scene import load_scene

    folder = make_scene(tmp_path / "scaled", scale={2: (2.0, 2.0, 2.0), 5: (2.0, 2.0, 2.0)}, labels=False)
    scene = load_scene(folder)
    r = scene.cameras[2].camtoworld[:3, :3]
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(scene.cameras[2].center, look_at_c2w_gl([3 * np.cos(np.pi / 2), 3, 1.0])[:3, 3],
                               atol=1e-9)
    assert scene.notes and "2 camera matrix(es)" in scene.notes[0] and "images/002.png" in scene.notes[0]
    code, out, err = cli("fit", folder, "--out", tmp_path / "run", "--iterations", "2", "--init-points", "300",
                         "--events", "jsonl", capsys=capsys)
    assert code == 0 and any(e["event"] == "log" and "uniform scale" in e["message"] for e in events(out))
    bad = make_scene(tmp_path / "squashed", scale={4: (1.0, 1.0, 3.0)}, labels=False)
    with pytest.raises(MaskFieldError) as err:
        load_scene(bad)
    assert "frame 4 (images/004.png)" in str(err.value) and "non-uniform scale" in str(err.value)


# --- 5. one writer per run folder -----------------------------------------------------------

def test_a_second_writer_is_refused_and_a_dead_holders_lock_taken_over(scene, tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])
    try:
        run.mkdir()
        (run / ".maskfield.lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                         "command": "maskfield fit", "started": "earlier"}))
        code, out, err = cli("fit", scene, "--out", run, "--iterations", "2", "--init-points", "300",
                             "--events", "none", capsys=capsys)
        assert code == 2 and f"in use by process {holder.pid} (maskfield fit" in err
        assert sorted(p.name for p in run.iterdir()) == [".maskfield.lock"]
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone now: its lock is taken over, and released at the end
    code, out, err = cli("fit", scene, "--out", run, "--iterations", "2", "--init-points", "300", "--events", "none",
                         capsys=capsys)
    assert code == 0, err
    assert f"took over the lock of {run} left by process {holder.pid}" in err
    assert (run / "gaussians.ply").exists() and not (run / ".maskfield.lock").exists()


def test_concurrent_writers_of_one_file_never_share_a_temp_name(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from maskfield.run import temp_path, write_json_atomic

    assert temp_path(tmp_path / "a.json") != temp_path(tmp_path / "a.json")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: write_json_atomic(tmp_path / "run.json", {"writer": i, "pad": "x" * 10000}),
                      range(64)))
    assert json.loads((tmp_path / "run.json").read_text())["writer"] in range(64)
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


# --- 6. never delete what the user brought --------------------------------------------------

def test_a_damaged_weight_in_the_users_folder_is_left_alone(scene, tmp_path, capsys):
    mine = tmp_path / "my weights"
    mine.mkdir()
    (mine / "sam_vit_b_01ec64.pth").write_bytes(b"\0" * 100_000)  # a truncated download of their own
    before = tree(mine)
    code, out, err = cli("priors", scene, "--out", tmp_path / "run", "--weights-dir", mine, "--offline",
                         "--events", "none", capsys=capsys)
    assert code == 2
    assert "sam_vit_b_01ec64.pth: wrong size: 100000 bytes" in err and "left as it is" in err
    assert "The CLIP weights are missing too" in err and f"put at:  {mine / 'ViT-B-16.pt'}" in err
    assert tree(mine) == before


def test_a_damaged_weight_is_reported_even_online(tmp_path):
    from maskfield.events import MaskFieldError
    from maskfield.priors.weights import resolve_checkpoint

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "ViT-B-16.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MaskFieldError) as err:
        resolve_checkpoint("clip_vit_b16_openai", weights_dir=mine, allow_download=True)
    assert "in your weights folder is damaged" in str(err.value) and "left as it is" in str(err.value)
    assert (mine / "ViT-B-16.pt").read_bytes() == b"not a checkpoint"


def test_a_damaged_file_in_our_cache_is_moved_aside(tmp_path, monkeypatch):
    from maskfield.events import MaskFieldError
    from maskfield.priors.weights import resolve_checkpoint

    monkeypatch.setenv("MASKFIELD_WEIGHTS_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "ViT-B-16.pt").write_bytes(b"half a download")
    with pytest.raises(MaskFieldError, match="ViT-B-16.pt"):
        resolve_checkpoint("clip_vit_b16_openai", allow_download=False)
    assert not (tmp_path / "cache" / "ViT-B-16.pt").exists()
    assert (tmp_path / "cache" / "ViT-B-16.pt.damaged").read_bytes() == b"half a download"


# --- 7. arguments checked at the door --------------------------------------------------------

@pytest.mark.parametrize("option, value, needle", [
    ("--max-gaussians", "0", "--max-gaussians: 0 is out of range; allowed: at least 1"),
    ("--max-gaussians", "-5", "--max-gaussians: -5 is out of range; allowed: at least 1"),
    ("--max-gaussians", "1", "--max-gaussians 1 is below the 300 Gaussians the fit starts from"),
    ("--iterations", "-3", "--iterations: -3 is out of range; allowed: at least 1"),
    ("--iterations", "lots", "--iterations: 'lots' is not a whole number"),
    ("--downscale", "1000", "--downscale 1000 makes the 40x30 images 1x1 pixels; allowed here: more than 0 and at "
                            "most 3.75"),
    ("--downscale", "0", "--downscale: 0 is out of range; allowed: more than 0"),
    ("--holdout-every", "-1", "--holdout-every: -1 is out of range; allowed: at least 0"),
])
def test_impossible_values_are_refused_with_the_range(scene, tmp_path, capsys, option, value, needle):
    code, out, err = cli("fit", scene, "--out", tmp_path / "run", "--init-points", "300", "--iterations", "2",
                         option, value, "--events", "none", capsys=capsys)
    assert code == 2 and needle in err, err
    assert not (tmp_path / "run").exists()


def test_field_and_segment_ranges(trained, capsys):
    for args, needle in ((("train-field", trained, "--field-iterations", "0"), "--field-iterations: 0 is out of range"),
                         (("train-field", trained, "--field-resolution", "2"), "allowed: from 8 to 8192"),
                         (("segment", trained, "--prompt", "mug", "--threshold", "1.5"), "allowed: more than 0 and at "
                                                                                         "most 1")):
        code, out, err = cli(*args, capsys=capsys)
        assert code == 2 and needle in err, err


# --- 8. all-or-nothing outputs --------------------------------------------------------------

def test_a_bad_points_file_writes_nothing(trained, tmp_path, capsys):
    np.save(tmp_path / "flat.npy", np.zeros((10, 2), np.float32))
    (tmp_path / "text.npy").write_text("not an array")
    np.save(tmp_path / "nan.npy", np.full((4, 3), np.nan))
    for name, needle in (("flat.npy", "must be an N x 3 array of positions, got shape (10, 2)"),
                         ("text.npy", "cannot read --points"), ("nan.npy", "NaN or infinite")):
        out_dir = tmp_path / f"seg-{name}"
        code, out, err = cli("segment", trained, "--prompt", "red mug", "--prompt", "blue box", "--points",
                             tmp_path / name, "--out", out_dir, "--events", "none", capsys=capsys)
        assert code == 2 and needle in err, err
        assert not out_dir.exists()


def test_priors_of_another_aspect_ratio_are_refused(trained, tmp_path, capsys):
    import dataclasses
    import shutil

    from maskfield.priors.store import load_priors, save_priors

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    victim = sorted((run / "priors").glob("*.npz"))[1]
    p = load_priors(victim)
    masks = np.ascontiguousarray(p.masks[:, :, :20])  # half the width
    save_priors(victim, dataclasses.replace(p, masks=masks, image_size=masks.shape[1:]))
    before = tree(run)
    code, out, err = cli("train-field", run, "--field-iterations", "5", "--field-resolution", "32", "--events", "none",
                         capsys=capsys)
    assert code == 2 and f"({victim.stem}.npz is 20x30, the image 40x30)" in err and "stretched" in err
    assert tree(run) == before


def test_a_damaged_field_is_named_with_what_to_do_and_a_damaged_checkpoint_starts_over(scene, trained, tmp_path,
                                                                                       capsys):
    # our own writes are atomic: a damaged file was cut short outside (a copy that stopped, a sync
    # tool). torch's own message names no file ("Invalid argument")
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    whole = (run / "field.pt").read_bytes()
    (run / "field.pt").write_bytes(whole[: len(whole) // 3])
    before = tree(run)
    code, out, err = cli("segment", run, "--prompt", "red mug", "--events", "none", capsys=capsys)
    assert code == 2 and "field.pt is damaged" in err and "maskfield train-field" in err
    assert "Invalid argument" not in err.split("(")[0]
    assert tree(run) == before  # nothing written, no segments half made
    # an unfinished training's saved state, damaged, is not a reason to stop: it starts over
    progress = run / "field_checkpoint.pt"
    progress.write_bytes(whole[:1000])
    code, out, err = cli("train-field", run, "--field-iterations", "5", "--field-resolution", "32", "--events",
                         "none", capsys=capsys)
    assert code == 0 and "field_checkpoint.pt is damaged" in err and "starts over" in err
    from maskfield.run import load_torch_file

    assert load_torch_file(run / "field.pt")["features"].shape[1] == 16  # a whole field again
    fit_state = tmp_path / "fit"
    shutil.copytree(trained, fit_state)
    (fit_state / "gaussians.ply").unlink()
    (fit_state / "fit_checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    code, out, err = cli("fit", scene, "--out", fit_state, "--iterations", "5", "--init-points", "300", "--events",
                         "none", capsys=capsys)
    assert code == 0 and "fit_checkpoint.pt is damaged" in err and "The fit starts over" in err
    assert (fit_state / "gaussians.ply").exists()


# --- 9. a run whose scene folder moved ------------------------------------------------------

def test_a_moved_scene_is_named_and_can_be_pointed_to(trained, scene, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    moved_from = tmp_path / "old place"
    info = json.loads((run / "run.json").read_text())
    info["scene"] = str(moved_from)
    (run / "run.json").write_text(json.dumps(info))
    code, out, err = cli("train-field", run, "--field-iterations", "5", "--field-resolution", "32", "--events", "none",
                         capsys=capsys)
    assert code == 2 and f"the scene folder of this run, {moved_from}, no longer exists" in err
    assert f"maskfield train-field {run} --scene NEW_FOLDER" in err
    other = make_scene(tmp_path / "another", n=5, labels=False)
    code, out, err = cli("train-field", run, "--scene", other, "--field-iterations", "5", "--events", "none",
                         capsys=capsys)
    assert code == 2 and "is not the scene this run was trained on" in err
    assert json.loads((run / "run.json").read_text())["scene"] == str(moved_from)
    code, out, err = cli("train-field", run, "--scene", scene, "--field-iterations", "5", "--field-resolution", "32",
                         "--events", "none", capsys=capsys)
    assert code == 0, err
    assert json.loads((run / "run.json").read_text())["scene"] == str(scene.resolve())
    assert "now points to the scene" in err


# --- found by trying inputs as a new user would ---------------------------------------------

def test_camera_files_with_text_where_numbers_belong_are_named(tmp_path):
    from maskfield.events import MaskFieldError
    from maskfield.scene import load_scene

    folder = make_scene(tmp_path / "typos", n=4, labels=False)
    meta = json.loads((folder / "transforms.json").read_text())
    good = json.loads(json.dumps(meta))
    meta["frames"][2]["transform_matrix"] = "identity"
    (folder / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(MaskFieldError, match=r"frame 2 \(images/002.png\): transform_matrix must be a 4x4 list"):
        load_scene(folder)
    meta = json.loads(json.dumps(good))
    meta["frames"][1]["file_path"] = 7
    (folder / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(MaskFieldError, match="frame 1: 'file_path' must be the image's path"):
        load_scene(folder)
    meta = json.loads(json.dumps(good))
    meta.update(fl_x=None, camera_angle_x="wide")
    (folder / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(MaskFieldError, match="frame 0: the intrinsics .* must be numbers in transforms.json"):
        load_scene(folder)
    (folder / "transforms.json").write_text("[1, 2]")
    with pytest.raises(MaskFieldError, match="must hold a JSON object with 'frames'"):
        load_scene(folder)
    good["frames"][3]["transform_matrix"] = good["frames"][3]["transform_matrix"][:3]  # 3x4 is accepted
    (folder / "transforms.json").write_text(json.dumps(good))
    assert load_scene(folder).cameras[3].camtoworld.shape == (4, 4)


def _with_points(folder: Path, pose=lambda c2w: c2w) -> Path:
    """The scene of ``make_scene`` with seed points around its centre and each matrix as ``pose`` writes it."""
    from plyfile import PlyData, PlyElement

    meta = json.loads((folder / "transforms.json").read_text())
    for frame in meta["frames"]:
        frame["transform_matrix"] = pose(np.asarray(frame["transform_matrix"])).tolist()
    pts = np.random.default_rng(1).uniform(-0.5, 0.5, (500, 3))
    vertex = np.array([tuple(p) + (128, 128, 128) for p in pts],
                      dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(folder / "points.ply"))
    meta["ply_file_path"] = "points.ply"
    (folder / "transforms.json").write_text(json.dumps(meta))
    return folder


def test_poses_in_opencv_axes_or_as_view_matrices_are_named_before_fitting(tmp_path, capsys):
    from maskfield.checks import check_cameras_face_points
    from maskfield.scene import load_scene
    from maskfield.scene.cameras import GL_TO_CV

    good = load_scene(_with_points(make_scene(tmp_path / "good", labels=False)))
    assert check_cameras_face_points(good, good.train_indices) is None
    slips = {"opencv": (lambda c2w: c2w @ GL_TO_CV, "OpenCV's camera axes"),
             "view": (lambda c2w: np.linalg.inv(c2w), "world-to-camera"),
             "view-opencv": (lambda c2w: np.linalg.inv(c2w @ GL_TO_CV), "world-to-camera")}
    for name, (pose, says) in slips.items():
        folder = _with_points(make_scene(tmp_path / name, labels=False), pose)
        code, out, err = cli("fit", folder, "--out", tmp_path / f"run-{name}", "--iterations", "5",
                             "--events", "none", capsys=capsys)
        assert code == 2 and says in err and "face away from the seed points" in err, (name, err)
        assert not (tmp_path / f"run-{name}" / "gaussians.ply").exists()
    # points in another frame that no slip explains: a warning, and the fit goes on
    def moved(c2w):
        c2w = c2w.copy()
        c2w[0, 3] += 40.0  # the cameras 40 units aside of the points
        return c2w

    far = load_scene(_with_points(make_scene(tmp_path / "elsewhere", labels=False), moved))
    warning = check_cameras_face_points(far, far.train_indices)
    assert warning is not None and "see little of the seed points" in warning


def test_seedless_cameras_in_opencv_axes_are_named_where_they_surround_a_place(tmp_path, capsys):
    from conftest import FOX
    from maskfield.checks import check_cameras_face_points
    from maskfield.events import MaskFieldError
    from maskfield.scene import load_scene
    from maskfield.scene.cameras import GL_TO_CV

    ring = load_scene(make_scene(tmp_path / "ring", labels=False))
    assert ring.points is None and check_cameras_face_points(ring, ring.train_indices) is None
    fox = load_scene(FOX)  # real photos on an arc around a fox, no seed points
    assert check_cameras_face_points(fox, fox.train_indices) is None
    for cam in fox.cameras:  # the same poses read in the wrong axes
        cam.camtoworld = cam.camtoworld @ GL_TO_CV
    with pytest.raises(MaskFieldError, match="meet behind"):
        check_cameras_face_points(fox, fox.train_indices)
    folder = make_scene(tmp_path / "flipped", labels=False)
    meta = json.loads((folder / "transforms.json").read_text())
    for frame in meta["frames"]:
        frame["transform_matrix"] = (np.asarray(frame["transform_matrix"]) @ GL_TO_CV).tolist()
    (folder / "transforms.json").write_text(json.dumps(meta))
    code, out, err = cli("fit", folder, "--out", tmp_path / "run", "--iterations", "5", "--init-points", "300",
                         "--events", "none", capsys=capsys)
    assert code == 2 and "meet behind" in err and "OpenCV's camera axes" in err, err
    assert "seed points" in err  # what to do if the cameras really look outward
    # the same poses where the add-on says it rendered them from inside the objects (INSIDE):
    # cameras looking outward from among the scene, which the poses alone cannot tell apart
    meta["blender"] = {"settings": {"layout": "INSIDE"}}
    (folder / "transforms.json").write_text(json.dumps(meta))
    inside = load_scene(folder)
    assert inside.rendered_inside and check_cameras_face_points(inside, inside.train_indices) is None
    # a forward-facing pan whose axes spread a little meets behind itself too, and is no slip
    pan = make_scene(tmp_path / "pan", labels=False)
    meta = json.loads((pan / "transforms.json").read_text())
    for i, frame in enumerate(meta["frames"]):
        x = i - 3.5
        frame["transform_matrix"] = look_at_c2w_gl([x, -3.0, 1.0], target=(1.3 * x, 0.0, 1.0)).tolist()
    (pan / "transforms.json").write_text(json.dumps(meta))
    pan_scene = load_scene(pan)
    assert check_cameras_face_points(pan_scene, pan_scene.train_indices) is None
