"""A constructed scene for the selection tests (tests/test_select.py, tests/test_addon_select.py):
a chair of two parts beside a table, with queries of known granularity, as a Segmenter in
memory or as a run folder (gaussians.ply + field.pt) that the real backend loads."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from maskfield.priors.text import encode_texts
from maskfield.segment import Segmenter
from maskfield.splats.model import Gaussians

ENCODER = "names:hash-512"
SEAT, BACK, TABLE = range(3)  # feature components; the last one is a constant 1
CHAIR, SEAT_IDS, BACK_IDS, TABLE_IDS = list(range(8)), list(range(4)), list(range(4, 8)), list(range(8, 12))
CENTRES = np.array([[0, 0, 0], [0.5, 0, 0.5], [3, 0, 0], [6, 0, 0]], np.float32)  # seat, back, table, background


def names(texts):
    return encode_texts(list(texts), ENCODER)


def chair_field(with_stats=True):
    """A chair (seat: Gaussians 0-3 at x~0, back: 4-7 at x~0.5) beside a table (8-11 at x~3),
    and 4 background Gaussians (x~6). Queries: 0 the seat and 1 the back (part masks, meaning
    "chair"), 2 the whole chair (object), 3 the table (object), 4 chair + table (group),
    5-6 idle. Parts were matched less often than the whole, as in real captures.
    Returns (gaussians, features, m, c, match stats, object names)."""
    f = np.full((16, 4), -1.0, np.float32)
    f[:, 3] = 1.0
    f[0:4, SEAT] = 1.0
    f[4:8, BACK] = 1.0
    f[8:12, TABLE] = 1.0
    m = torch.zeros(7, 4)
    m[0, SEAT] = 8.0
    m[1, BACK] = 8.0
    m[2, [SEAT, BACK]] = 8.0
    m[2, 3] = 8.0
    m[3, TABLE] = 8.0
    m[4, [SEAT, BACK, TABLE]] = 8.0
    m[4, 3] = 16.0
    m[5:, 3] = -8.0
    chair, table = names(["chair", "table"])
    both = (chair + table) / np.linalg.norm(chair + table)
    idle = names(["idle 1", "idle 2"])
    c = torch.as_tensor(np.stack([chair, chair, chair, table, both, *idle]))
    stats = {"granularity_counts": np.array([[3, 0, 0], [3, 0, 0], [0, 10, 0], [0, 9, 0], [0, 0, 4],
                                             [0, 0, 0], [0, 0, 0]]),
             "mask_area": np.array([0.02, 0.02, 0.05, 0.08, 0.13, 0, 0], np.float32)}
    rng = np.random.default_rng(0)
    centres = np.repeat(CENTRES, 4, axis=0)
    means = centres + rng.normal(0, 0.05, centres.shape).astype(np.float32)
    gaussians = Gaussians.from_points(means, colors=np.full((16, 3), 128, np.uint8), init_opacity=0.9)
    return gaussians, torch.as_tensor(f), m, c, (stats if with_stats else None), ["chair", "table"]


def chair_scene(with_stats=True) -> Segmenter:
    gaussians, f, m, c, stats, object_names = chair_field(with_stats)
    return Segmenter.from_field(gaussians, f, lambda: (m, c), embedding_model=ENCODER, text_encoder=names,
                                match_stats=stats, object_names=object_names)


def exact_queries(m: torch.Tensor, c: torch.Tensor):
    """Query networks whose outputs are exactly ``m`` and ``c``: the first two layers pass the
    fixed codes through (split into positive and negative halves for the ReLUs), the last one
    is solved by least squares."""
    from maskfield.field.queries import QueryNetworks

    q = QueryNetworks(m.shape[0], m.shape[1], c.shape[1])
    with torch.no_grad():
        d = q.codes.shape[1]
        for mlp, target in ((q.mask_mlp, m), (q.embed_mlp, c)):
            first, second, last = mlp[0], mlp[2], mlp[4]
            first.weight.zero_()
            first.bias.zero_()
            first.weight[:d] = torch.eye(d)
            first.weight[d:2 * d] = -torch.eye(d)
            second.weight.zero_()
            second.bias.zero_()
            second.weight[:2 * d, :2 * d] = torch.eye(2 * d)
            hidden = torch.relu(second(torch.relu(first(q.codes))))
            last.weight.copy_(torch.linalg.lstsq(hidden.double(), target.double()).solution.T.float())
            last.bias.zero_()
        got_m, got_c = q()
    assert torch.allclose(got_m, m, atol=1e-3) and torch.allclose(got_c, c, atol=1e-3)
    return q


def write_chair_run(folder, blob_scale: float = 0.12) -> Path:
    """The chair scene as a run folder the backend loads (gaussians.ply, field.pt, run.json),
    its Gaussians made big enough to mesh."""
    from maskfield.splats.ply import write_ply

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gaussians, f, m, c, stats, object_names = chair_field()
    gaussians.params["scales"] = torch.full((len(gaussians), 3), float(np.log(blob_scale)))
    write_ply(folder / "gaussians.ply", gaussians)
    q = exact_queries(m, c)
    torch.save({"features": f, "queries": q.state_dict(), "query_config": q.config(), "settings": {},
                "embedding_model": ENCODER, "object_names": object_names, "match_stats": stats,
                "num_gaussians": len(gaussians)}, folder / "field.pt")
    (folder / "run.json").write_text(json.dumps({"stages": {"fit": {}, "priors": {}, "field": {}}}))
    return folder
