"""Prompts -> Gaussians: text queries answered directly in 3D on the trained mask field.

For a prompt with text embedding t, each query's relevancy is LERF's pairwise test
against canonical negatives, min_j softmax(tau [c.t, c.n_j])[0] = sigmoid(tau (c.t - max_j c.n_j)).
The queries within ``query_margin`` (cosine) of the prompt's best query, and relevant
enough, make up its mask; Gaussian g belongs to it with score max_i sigmoid(m_i . f_g).
Several prompts compete: each Gaussian takes the prompt with the highest score, or the
background when no score passes ``mask_threshold``.
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .events import MaskFieldError, Reporter
from .run import RunFolder, atomic_file, write_json_atomic

CANONICAL_NEGATIVES = ("object", "things", "stuff", "texture")
TOP_QUERIES = 3  # strongest queries kept per Gaussian for the competitor test


@dataclass
class SegmentSettings:
    mask_threshold: float = 0.5
    relevancy_threshold: float = 0.6
    query_margin: float = 0.1
    temperature: float = 10.0
    point_neighbours: int = 8
    # a Gaussian more strongly lit by a query of another meaning is not the prompt's (see
    # Segmenter._yield_to_competitors); on the demo tabletop this removes ~1,000 table
    # Gaussians that a box+table query gave to "blue box"
    exclusive: bool = True
    # the best query must be at least this similar to the prompt, or the prompt matches
    # nothing; None picks by encoder: CLIP text-image cosines are low (about 0.2-0.3 for a
    # good match), hashed-name cosines of a match are near 1 and of a non-match near 0
    min_similarity: float | None = None

    def similarity_floor(self, encoder: str) -> float:
        if self.min_similarity is not None:
            return self.min_similarity
        return 0.5 if encoder.startswith("names:") else 0.15


@dataclass
class PromptMatch:
    prompt: str
    queries: np.ndarray  # indices of the queries that answer it
    relevancy: np.ndarray  # their relevancy
    best_similarity: float
    # active queries that mean something else (relevancy below the threshold): a Gaussian
    # they light more strongly than the prompt's queries do is not the prompt's
    competitors: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def found(self) -> bool:
        return len(self.queries) > 0


MAX_SLUG_BYTES = 80  # file names stay far below every file system's limit (255 bytes)


def slugify(text: str) -> str:
    slug = re.sub(r"[^\w]+", "-", text.strip().lower(), flags=re.UNICODE).strip("-") or "prompt"
    if len(slug.encode("utf-8")) > MAX_SLUG_BYTES:  # a long prompt: a shortened name, unique by a hash
        import hashlib

        digest = hashlib.sha256(slug.encode("utf-8")).hexdigest()[:8]
        short = slug.encode("utf-8")[:MAX_SLUG_BYTES - 9].decode("utf-8", "ignore").rstrip("-")
        slug = f"{short}-{digest}"
    return slug


class Segmenter:
    """Loads a trained run once and answers prompts (what `maskfield serve` keeps alive)."""

    def __init__(self, run: RunFolder | str | Path, device: str = "cpu", settings: SegmentSettings | None = None,
                 text_encoder=None, weights_dir=None, allow_download: bool = True):
        from .field.train import load_field
        from .splats.ply import read_ply

        self.run = run if isinstance(run, RunFolder) else RunFolder(run)
        self.run.require("gaussians")
        self.run.require("field")
        self.device = device
        self.settings = settings or SegmentSettings()
        self.gaussians = read_ply(self.run.gaussians_ply)
        features, queries, ckpt = load_field(self.run.field_checkpoint, device)
        if features.shape[0] != len(self.gaussians):
            raise MaskFieldError(f"{self.run.field_checkpoint.name} was trained on {features.shape[0]:,} Gaussians but "
                                 f"{self.run.gaussians_ply.name} has {len(self.gaussians):,}; retrain the mask field.",
                                 kind="run_mismatch")
        self._setup(self.gaussians, features, queries, ckpt.get("embedding_model", ""),
                    ckpt.get("object_names") or [], text_encoder, weights_dir, allow_download)

    @classmethod
    def from_field(cls, gaussians, features: torch.Tensor, queries, embedding_model: str = "",
                   settings: SegmentSettings | None = None, text_encoder=None, device: str = "cpu") -> "Segmenter":
        """A segmenter over a field held in memory (no run folder): for benchmarks and tests."""
        seg = cls.__new__(cls)
        seg.run, seg.device, seg.settings = None, device, settings or SegmentSettings()
        seg._setup(gaussians, features, queries, embedding_model, [], text_encoder, None, False)
        return seg

    def _setup(self, gaussians, features, queries, embedding_model, object_names, text_encoder,
               weights_dir, allow_download) -> None:
        self.gaussians = gaussians
        self.features = features.float()
        with torch.no_grad():
            m, c = queries()
        self.mask_embed = m.float()
        self.query_embed = torch.nn.functional.normalize(c.float(), dim=-1)
        self.embedding_model = embedding_model
        self.object_names = object_names
        self._text_encoder = text_encoder
        self._weights_dir = weights_dir
        self._allow_download = allow_download
        self._text_cache: dict[str, np.ndarray] = {}
        # One pass over the Gaussians for two things. Queries that never light up any Gaussian
        # were unmatched in training: their embeddings carry no meaning, so they may not answer
        # prompts (self.active). And each Gaussian's strongest queries (TOP_QUERIES) are kept:
        # whether a query of another meaning beats a prompt's is then a lookup.
        k = min(TOP_QUERIES, m.shape[0])
        peak = torch.full((m.shape[0],), -torch.inf)
        top_logits, top_queries = [], []
        with torch.no_grad():
            for chunk in torch.split(self.features, 262_144):
                logits = chunk @ self.mask_embed.T
                peak = torch.maximum(peak, logits.max(0).values)
                values, index = logits.topk(k, dim=1)
                top_logits.append(values)
                top_queries.append(index.to(torch.int16 if m.shape[0] < 32768 else torch.int32))
        self.active = torch.sigmoid(peak) >= self.settings.mask_threshold
        self._top_logits = torch.cat(top_logits) if top_logits else torch.zeros(0, k)
        self._top_queries = torch.cat(top_queries) if top_queries else torch.zeros(0, k, dtype=torch.int16)

    # --- text ---------------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> np.ndarray:
        todo = [p for p in dict.fromkeys(prompts + list(CANONICAL_NEGATIVES)) if p not in self._text_cache]
        if todo:
            if self._text_encoder is not None:
                vecs = np.asarray(self._text_encoder(todo), dtype=np.float32)
            else:
                from .priors.text import encode_texts

                vecs = encode_texts(todo, self.embedding_model, device=self.device,
                                    weights_dir=self._weights_dir, allow_download=self._allow_download)
            for p, v in zip(todo, vecs):
                self._text_cache[p] = v / max(np.linalg.norm(v), 1e-12)
        return np.stack([self._text_cache[p] for p in prompts])

    # --- matching -----------------------------------------------------------------------
    def match(self, prompts: list[str], text: np.ndarray | None = None) -> list[PromptMatch]:
        s = self.settings
        text = self.encode(prompts) if text is None else text
        negatives = torch.as_tensor(self.encode(list(CANONICAL_NEGATIVES)))
        t = torch.as_tensor(text, dtype=torch.float32)
        t = torch.nn.functional.normalize(t, dim=-1)
        sim = self.query_embed @ t.T  # (K, P)
        neg = (self.query_embed @ negatives.T).max(1).values  # (K,)
        relevancy = torch.sigmoid(s.temperature * (sim - neg[:, None]))
        matches = []
        for j, prompt in enumerate(prompts):
            sj = sim[:, j].masked_fill(~self.active, -2.0)
            best = float(sj.max())
            ok = (sj >= best - s.query_margin) & (relevancy[:, j] >= s.relevancy_threshold) & self.active
            if best < s.similarity_floor(self.embedding_model):
                ok[:] = False
            idx = torch.nonzero(ok).squeeze(1)
            others = torch.nonzero(self.active & (relevancy[:, j] < s.relevancy_threshold)).squeeze(1)
            matches.append(PromptMatch(prompt, idx.numpy(), relevancy[idx, j].numpy(), best, others.numpy()))
        return matches

    def label_gaussians(self, matches: list[PromptMatch], features: torch.Tensor | None = None):
        """Per Gaussian (or per pixel, given features): best prompt index (-1 none), its score,
        and every prompt's score (N, P)."""
        features = self.features if features is None else features
        n, count = features.shape[0], len(matches)
        if count == 0:
            return np.full(n, -1, np.int32), np.zeros(n, np.float32), np.zeros((n, 0), np.float32)
        width = max([len(m.queries) for m in matches] + [1])
        # each prompt's queries padded to one width by repeating its first (a max ignores
        # repeats), so a single product and one reduction give every prompt's best logit
        columns = np.zeros((count, width), dtype=np.int64)
        for j, m in enumerate(matches):
            if m.found:
                columns[j] = np.resize(m.queries, width)
        weights = self.mask_embed[torch.as_tensor(columns.reshape(-1))].T.contiguous()
        logits = torch.empty(n, count)  # (N, P)
        for start in range(0, n, 65_536):  # chunks small enough to stay in cache: 2x faster
            torch.amax((features[start:start + 65_536] @ weights).view(-1, count, width), 2,
                       out=logits[start:start + 65_536])
        for j, m in enumerate(matches):
            if not m.found:
                logits[:, j] = -torch.inf
            elif self.settings.exclusive and len(m.competitors):
                self._yield_to_competitors(features, logits, j, m.competitors)
        scores = torch.sigmoid(logits)
        best_score, label = scores.max(1)
        label = torch.where(best_score >= self.settings.mask_threshold, label, torch.full_like(label, -1))
        return label.numpy().astype(np.int32), best_score.numpy(), scores.numpy()

    def _yield_to_competitors(self, features: torch.Tensor, logits: torch.Tensor, j: int,
                              competitors: np.ndarray) -> None:
        """Drop prompt ``j`` where a query of another meaning is more sure (in logits).

        A query trained on inconsistent masks (an object merged with its neighbour in some
        views) can light the neighbour too; the neighbour's own queries light it more
        strongly, so such Gaussians are left out. Only candidates are tested. For the
        Gaussians themselves their strongest queries were kept at load time; for other
        features (rendered pixels) the competitors' logits are computed.
        """
        threshold = float(torch.logit(torch.tensor(self.settings.mask_threshold, dtype=torch.float64)))
        own = logits[:, j]
        rows = torch.nonzero(own >= threshold).squeeze(1)
        if len(rows) == 0:
            return
        competitor = torch.zeros(self.mask_embed.shape[0], dtype=torch.bool)
        competitor[torch.as_tensor(competitors)] = True
        if features is self.features:
            top = self._top_logits[rows]
            other = torch.where(competitor[self._top_queries[rows].long()], top,
                                torch.full_like(top, -torch.inf)).amax(1)
        else:
            embed_t = self.mask_embed[competitor].T.contiguous()
            other = torch.cat([(features[chunk] @ embed_t).amax(1) for chunk in torch.split(rows, 262_144)])
        beaten = other > own[rows]
        logits[rows[beaten], j] = -torch.inf

    def segment(self, prompts: list[str], text: np.ndarray | None = None):
        prompts = [p.strip() for p in prompts]
        if not prompts or any(not p for p in prompts):
            raise MaskFieldError("empty prompt: give at least one non-empty --prompt, e.g. --prompt chair.")
        matches = self.match(prompts, text)
        label, score, all_scores = self.label_gaussians(matches)
        return matches, label, score, all_scores

    # --- points (mesh faces) and views ----------------------------------------------------------
    def label_points(self, points: np.ndarray, label: np.ndarray, all_scores: np.ndarray):
        """A prompt per point (e.g. mesh face centres), from the nearest Gaussians' scores."""
        from scipy.spatial import cKDTree

        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise MaskFieldError(f"--points must be an N x 3 array of positions, got shape {points.shape}.")
        means = self.gaussians.means.detach().numpy()
        opacity = torch.sigmoid(self.gaussians.params["opacities"].detach()).numpy()
        solid = opacity > 0.1  # faint floaters should not vote
        if not solid.any():
            solid[:] = True
        index = np.nonzero(solid)[0]
        k = min(self.settings.point_neighbours, len(index))
        dist, nn = cKDTree(means[index]).query(points, k=k)
        dist = dist.reshape(len(points), k)
        nn = index[nn.reshape(len(points), k)]
        w = opacity[nn] / (dist + 1e-6)
        w = w / w.sum(1, keepdims=True)
        point_scores = np.einsum("nk,nkp->np", w, all_scores[nn]) if all_scores.shape[1] else np.zeros((len(points), 0))
        if point_scores.shape[1] == 0:
            return np.full(len(points), -1, np.int32), np.zeros(len(points), np.float32)
        best = point_scores.argmax(1)
        best_score = point_scores[np.arange(len(points)), best]
        labels = np.where(best_score >= self.settings.mask_threshold, best, -1).astype(np.int32)
        return labels, best_score.astype(np.float32)

    def render_labels(self, camera, matches: list[PromptMatch], min_alpha: float = 0.5):
        """A 2D label map (H, W) of the prompts for any camera (-1 background), and alpha."""
        from .splats.render import RenderCamera, render

        with torch.no_grad():
            out = render(self.gaussians.activated(), RenderCamera.from_camera(camera), colors=torch.zeros(len(self.gaussians), 3),
                         features=self.features, backend="auto")
            feats = out["features"].reshape(-1, self.features.shape[1])
            alpha = out["alpha"].reshape(-1)
            # composited features are alpha-weighted sums; divide to compare with per-Gaussian ones
            feats = feats / alpha.clamp_min(1e-6)[:, None]
            label, score, _ = self.label_gaussians(matches, feats)
        label = np.where(alpha.numpy() >= min_alpha, label, -1)
        return label.reshape(camera.height, camera.width), out["alpha"].numpy()


def write_segments(seg: Segmenter, prompts: list[str], out_dir: Path, points_file: Path | None = None,
                   reporter: Reporter | None = None, text: np.ndarray | None = None) -> dict:
    from .splats.ply import write_ply

    from .run import prepare_folder

    reporter = reporter or Reporter("none")
    points = load_points(points_file) if points_file is not None else None  # checked before anything is written
    t0 = time.perf_counter()
    matches, label, score, all_scores = seg.segment(prompts, text)
    seconds = time.perf_counter() - t0
    out_dir = prepare_folder(out_dir)
    entries = []
    used_slugs: set[str] = set()
    for j, m in enumerate(matches):
        slug = slugify(m.prompt)
        while slug in used_slugs:
            slug += "-2"
        used_slugs.add(slug)
        idx = np.nonzero(label == j)[0]
        entry = {"prompt": m.prompt, "slug": slug, "found": bool(m.found and len(idx) > 0), "count": int(len(idx)),
                 "queries": [int(q) for q in m.queries], "best_similarity": round(m.best_similarity, 4),
                 "npz": None, "ply": None}
        # write nothing misleading: an unmatched prompt leaves no (stale) files behind
        for stale in (out_dir / f"{slug}.npz", out_dir / f"{slug}.ply"):
            stale.unlink(missing_ok=True)
        if entry["found"]:
            with atomic_file(out_dir / f"{slug}.npz") as tmp, open(tmp, "wb") as fh:
                np.savez(fh, indices=idx.astype(np.int64), scores=score[idx].astype(np.float32))
            write_ply(out_dir / f"{slug}.ply", seg.gaussians.subset(torch.as_tensor(idx)),
                      extra={"segment_score": score[idx]})
            entry["npz"], entry["ply"] = f"{slug}.npz", f"{slug}.ply"
        else:
            reporter.log(f"the prompt {m.prompt!r} matches nothing in this scene (best query similarity "
                         f"{m.best_similarity:.2f}); nothing was written for it.", level="warning")
        entries.append(entry)
    summary = {"prompts": entries, "point_labels": None, "text_encoder": seg.embedding_model,
               "gaussians": len(seg.gaussians), "seconds": round(seconds, 4), "settings": asdict(seg.settings)}
    if points is not None:
        plabels, pscores = seg.label_points(points, label, all_scores)
        for name, arr in (("point_labels", plabels), ("point_scores", pscores)):
            with atomic_file(out_dir / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr)
        summary["point_labels"] = "point_labels.npy"
        summary["point_counts"] = [int((plabels == j).sum()) for j in range(len(matches))]
    write_json_atomic(out_dir / "segments.json", summary)
    return summary


def load_points(points_file: Path) -> np.ndarray:
    """An N x 3 array of finite positions from a .npy file, or a MaskFieldError saying what is wrong."""
    try:
        points = np.load(points_file, allow_pickle=False)
    except Exception as exc:
        raise MaskFieldError(f"cannot read --points {points_file}: {exc}; give an N x 3 .npy array.") from None
    if not isinstance(points, np.ndarray) or points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise MaskFieldError(f"--points {points_file} must be an N x 3 array of positions, got shape "
                             f"{getattr(points, 'shape', None)}.")
    if not np.issubdtype(points.dtype, np.number) or not np.isfinite(points).all():
        raise MaskFieldError(f"--points {points_file} holds non-numeric, NaN or infinite values; give finite "
                             "positions.")
    return points
