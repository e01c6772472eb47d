"""Prompts -> Gaussians: text queries answered directly in 3D on the trained mask field.

For a prompt with text embedding t, each query's relevancy is LERF's pairwise test
against canonical negatives, min_j softmax(tau [c.t, c.n_j])[0] = sigmoid(tau (c.t - max_j c.n_j)).
The negatives are the phrases "object", "things", "stuff", "texture" through the run's text
encoder. Priors from a model this package cannot run on text (``user:...``) take prompts as
vectors; their negatives are vectors given beside them (``Segmenter.negative_vectors``), or
else the scene's mean query embedding: relevancy then says how much more a query resembles
the prompt than it resembles this scene's average query.
The queries within ``query_margin`` (cosine) of the prompt's best query, and relevant
enough, make up its mask; Gaussian g belongs to it with score max_i sigmoid(m_i . f_g).
Several prompts compete: each Gaussian takes the prompt with the highest score, or the
background when no score passes ``mask_threshold``. A Gaussian the masks never taught (its
weight mostly on unsupervised pixels), a faint one far from every solid Gaussian of its
segment (haze), and a solid one far from every other (a floater), is in no segment.

Granularity: training records which SAM granularity (small / medium / large: part / object /
group) each query's masks had. A prompt keeps the queries of one granularity: the one asked
for, or by default the one its closest queries mostly matched. A 3D position selects without
text (``select_at``): the queries that light the Gaussians near it, at one granularity.
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
# SAM's small / medium / large masks, as a user names them
GRANULARITIES = {"part": 0, "object": 1, "group": 2}
GRANULARITY_CHOICES = ("auto", "part", "object", "group", "any")
POINT_NEIGHBOURS = 16  # Gaussians that stand for a pointed-at position
SOLID_OPACITY = 0.1  # Gaussians at least this opaque make surfaces; fainter ones are haze


@dataclass
class SegmentSettings:
    mask_threshold: float = 0.5
    relevancy_threshold: float = 0.6
    query_margin: float = 0.1
    # "auto" granularity is voted (by the image area of their masks) among the queries this
    # close (cosine) to the prompt's best, not among all within query_margin: a group query
    # (an object merged with its neighbour; its embedding a mix of the two) is less like the
    # prompt than the object's own queries, yet its masks are twice as large and outvoted them
    # (seeded bookshelf benchmark, one field: "blue book" answered by blue+green and blue+red
    # group queries at cosine 0.91-0.93 against its object queries' 0.999). Parts carry their
    # object's meaning, so parts and objects still tie and the area decides between them
    granularity_margin: float = 0.05
    temperature: float = 10.0
    point_neighbours: int = 8
    # a Gaussian more strongly lit by a query of another meaning, of the prompt's granularity,
    # is not the prompt's (see Segmenter._yield_to_competitors); on the demo tabletop this
    # removes ~1,000 table Gaussians that a box+table query gave to "blue box"
    exclusive: bool = True
    # the best query must be at least this similar to the prompt, or the prompt matches
    # nothing; None picks by encoder: CLIP text-image cosines are low (about 0.2-0.3 for a
    # good match), hashed-name cosines of a match are near 1 and of a non-match near 0
    min_similarity: float | None = None
    # a Gaussian whose blending weight in the training views falls mostly on pixels no mask
    # supervised (a faint veil over the backdrop) learned no meaning, and is in no segment
    # (see field.data.supervised_share); 0 keeps every solid Gaussian (faint ones have their
    # own bound, below; both 0 keep every Gaussian). Gaussians no training view shows keep
    # their label
    min_supervised_share: float = 0.5
    # the same for faint Gaussians (opacity under SOLID_OPACITY), which must be surer (never
    # less sure than min_supervised_share asks of solid ones): one that paints the world past
    # an object's silhouette in a third of its weight is a veil there, and adds next to nothing
    # to the object's look. Seedless benchmark bookshelf fitted with
    # --surface-alpha 0.05 (field seed 0): backdrop Gaussians in a segment 7 -> 0 of 62, for
    # 71 of 2,679 faint object Gaussians (0.03% of the objects' held-out blending weight);
    # seedless room 6 -> 3 of 102, 46 faint object Gaussians (0.04%). With the default fit
    # (inset 1) 0 on eight fits of the four benchmark scenes (docs/measurements.md)
    faint_min_supervised_share: float = 0.7
    # a faint Gaussian stays in a segment only within this many of its own and its
    # neighbour's largest scales of one of the segment's solid Gaussians: haze the fit left in
    # the air (far from every surface of the object it was labelled with) is not the object.
    # On the seedless benchmark room it takes 85 -> 28 backdrop Gaussians out of segments and
    # object accuracy 0.910 -> 0.906 (2: 24 and 0.899; 4: 33 and 0.908); 0 keeps them all
    attach_scales: float = 3.0
    # a solid Gaussian with no other solid one of its segment within that reach is a floater
    # the prompt caught (or a never-seen random start whose untrained features it lit), not
    # part of the object; segments with fewer solid Gaussians than this keep theirs (0 never
    # drops solid ones). Seedless benchmark room: backdrop Gaussians in a segment 7 -> 0 of
    # 84, object accuracy 90.85% -> 90.84%
    min_solid_for_outliers: int = 20

    def similarity_floor(self, encoder: str) -> float:
        if self.min_similarity is not None:
            return self.min_similarity
        if encoder.startswith("names:"):
            return 0.5
        # CLIP's text-image cosines; of another model's we know only that a match points the same way
        return 0.15 if encoder.startswith("open_clip:") else 0.0


@dataclass
class PromptMatch:
    prompt: str
    queries: np.ndarray  # indices of the queries that answer it
    relevancy: np.ndarray  # their relevancy
    best_similarity: float
    # active queries that mean something else (relevancy below the threshold): a Gaussian
    # they light more strongly than the prompt's queries do is not the prompt's
    competitors: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    granularity: str = "any"  # the granularity its queries were kept at (or "any")
    at: list | None = None  # the 3D position it was pointed at (select_at), or None
    nearest_distance: float | None = None  # from that position to the nearest solid Gaussian

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
        # The field stays on the CPU whatever the device: a prompt's work over the Gaussians is
        # milliseconds of numpy; the device serves the text encoder.
        features, queries, ckpt = load_field(self.run.field_checkpoint, "cpu")
        if features.shape[0] != len(self.gaussians):
            raise MaskFieldError(f"{self.run.field_checkpoint.name} was trained on {features.shape[0]:,} Gaussians but "
                                 f"{self.run.gaussians_ply.name} has {len(self.gaussians):,}; retrain the mask field.",
                                 kind="run_mismatch")
        self._setup(self.gaussians, features, queries, ckpt.get("embedding_model", ""),
                    ckpt.get("object_names") or _prior_object_names(self.run), text_encoder, weights_dir,
                    allow_download, ckpt.get("match_stats"), ckpt.get("query_offset"))
        share = ckpt.get("supervised_share")  # absent in fields trained before it was kept
        self.supervised_share = share.float() if share is not None and len(share) == len(self.gaussians) else None

    @classmethod
    def from_field(cls, gaussians, features: torch.Tensor, queries, embedding_model: str = "",
                   settings: SegmentSettings | None = None, text_encoder=None, device: str = "cpu",
                   match_stats: dict | None = None, object_names: list[str] | None = None,
                   query_offset: torch.Tensor | None = None) -> "Segmenter":
        """A segmenter over a field held in memory (no run folder): for benchmarks and tests."""
        seg = cls.__new__(cls)
        seg.run, seg.device, seg.settings = None, device, settings or SegmentSettings()
        seg._setup(gaussians, features, queries, embedding_model, object_names or [], text_encoder, None, False,
                   match_stats, query_offset)
        seg.supervised_share = None
        return seg

    def _setup(self, gaussians, features, queries, embedding_model, object_names, text_encoder,
               weights_dir, allow_download, match_stats=None, query_offset=None) -> None:
        self.gaussians = gaussians
        self.features = features.detach().float().cpu()
        with torch.no_grad():
            m, c = queries()
        self.mask_embed = m.float().cpu()
        # each query's calibrated logit offset (field/calibration.py); fields trained without
        # it (or before it was kept) add nothing
        self.query_offset = torch.zeros(m.shape[0]) if query_offset is None else \
            torch.as_tensor(query_offset, dtype=torch.float32).reshape(-1).cpu()
        if len(self.query_offset) != m.shape[0]:
            raise MaskFieldError(f"the field has {m.shape[0]} queries but {len(self.query_offset)} query offsets; "
                                 "retrain the mask field.", kind="run_mismatch")
        self.query_embed = torch.nn.functional.normalize(c.float().cpu(), dim=-1)
        self.embedding_model = embedding_model
        self.object_names = object_names
        self._text_encoder = text_encoder
        self._weights_dir = weights_dir
        self._allow_download = allow_download
        self._text_cache: dict[str, np.ndarray] = {}
        self.negative_vectors: np.ndarray | None = None  # (N, D) relevancy negatives given as vectors
        # One pass over the Gaussians for two things. Queries that never light up any Gaussian
        # were unmatched in training: their embeddings carry no meaning, so they may not answer
        # prompts (self.active). And each Gaussian's strongest queries (TOP_QUERIES) are kept:
        # whether a query of another meaning beats a prompt's is then a lookup.
        k = min(TOP_QUERIES, m.shape[0])
        peak = torch.full((m.shape[0],), -torch.inf)
        top_logits, top_queries = [], []
        with torch.no_grad():
            for chunk in torch.split(self.features, 262_144):
                logits = self.query_logits(chunk)
                peak = torch.maximum(peak, logits.max(0).values)
                values, index = logits.topk(k, dim=1)
                top_logits.append(values)
                top_queries.append(index.to(torch.int16 if m.shape[0] < 32768 else torch.int32))
        self.active = torch.sigmoid(peak) >= self.settings.mask_threshold
        self._top_logits = torch.cat(top_logits) if top_logits else torch.zeros(0, k)
        self._top_queries = torch.cat(top_queries) if top_queries else torch.zeros(0, k, dtype=torch.int16)
        self._set_granularity(match_stats, m.shape[0])
        self._point_tree = None
        self._shape = None

    def _set_granularity(self, match_stats: dict | None, num_queries: int) -> None:
        """Per query: the granularity counts of the masks it was matched to in training, its
        dominant granularity (-1: never matched, or a run trained before this was recorded)
        and the mean image share of its masks."""
        counts = np.zeros((num_queries, 3), np.int64)
        area = np.zeros(num_queries, np.float32)
        if match_stats is not None and len(match_stats.get("granularity_counts", ())) == num_queries:
            counts = np.asarray(match_stats["granularity_counts"], np.int64).reshape(num_queries, 3)
            area = np.asarray(match_stats.get("mask_area", area), np.float32).reshape(num_queries)
        # the image share of each query's matched masks per granularity (counts where unrecorded)
        recorded = np.asarray(match_stats.get("granularity_area", counts) if match_stats else counts, np.float64)
        self.granularity_area = recorded.reshape(num_queries, 3) if recorded.sum() > 0 else counts.astype(np.float64)
        self.granularity_counts = counts
        self.query_area = area
        self.query_granularity = np.where(counts.sum(1) > 0, counts.argmax(1), -1).astype(np.int64)
        # a run trained before granularity was recorded (or on priors that do not say): every
        # query counts at every granularity
        self.has_granularity = bool(counts.sum() > 0)

    def granularity_mask(self, granularity: str) -> torch.Tensor:
        """(K,) bool: the queries of ``granularity`` ("any", or a run without the record: all).
        Queries never matched late in training carry no granularity and no meaning: left out."""
        if granularity not in GRANULARITIES or not self.has_granularity:
            return torch.ones(len(self.query_granularity), dtype=torch.bool)
        return torch.as_tensor(self.query_granularity == GRANULARITIES[granularity])

    def dominant_granularity(self, queries: np.ndarray) -> str:
        """The granularity that ``queries``' matched masks mostly had, by image area ("any" when
        unrecorded). By area, not by number: an object split into parts in many views yields
        more part masks than object masks, yet is mostly seen whole."""
        counts = self.granularity_area[np.asarray(queries, np.int64)].sum(0) if len(queries) else np.zeros(3)
        if counts.sum() == 0:
            return "any"
        return {v: k for k, v in GRANULARITIES.items()}[int(np.argmax(counts))]

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

    def negatives(self) -> torch.Tensor:
        """The relevancy negatives (N, D): given vectors, the canonical phrases through the run's
        text encoder, or, for a model that cannot encode text, the scene's mean query."""
        if self.negative_vectors is not None:
            vectors = torch.as_tensor(np.asarray(self.negative_vectors, dtype=np.float32)).reshape(-1, self.query_embed.shape[1])
            return torch.nn.functional.normalize(vectors, dim=-1)
        if self._text_encoder is not None or self._encodes_text():
            return torch.as_tensor(self.encode(list(CANONICAL_NEGATIVES)))
        pool = self.query_embed[self.active] if bool(self.active.any()) else self.query_embed
        return torch.nn.functional.normalize(pool.mean(0, keepdim=True), dim=-1)

    def _encodes_text(self) -> bool:
        from .priors.text import can_encode_text

        return bool(self.embedding_model) and can_encode_text(self.embedding_model)

    # --- matching -----------------------------------------------------------------------
    def match(self, prompts: list[str], text: np.ndarray | None = None,
              granularity: str | list[str | None] | None = None) -> list[PromptMatch]:
        """The queries of each prompt. ``granularity``: one for all prompts or one per prompt,
        each of GRANULARITY_CHOICES (None = "auto": what the prompt's best queries mostly matched)."""
        s = self.settings
        grans = _per_prompt(granularity, len(prompts))
        text = self.encode(prompts) if text is None else text
        negatives = self.negatives()
        t = torch.as_tensor(text, dtype=torch.float32)
        t = torch.nn.functional.normalize(t, dim=-1)
        sim = self.query_embed @ t.T  # (K, P)
        neg = (self.query_embed @ negatives.T).max(1).values  # (K,)
        relevancy = torch.sigmoid(s.temperature * (sim - neg[:, None]))
        matches = []
        for j, prompt in enumerate(prompts):
            asked = grans[j] or "auto"
            # an explicit granularity picks among its own queries (a part may be less like the
            # prompt than the whole); "auto" first finds the best queries of any granularity
            eligible = self.active & (self.granularity_mask(asked) if asked in GRANULARITIES else True)
            sj = sim[:, j].masked_fill(~eligible, -2.0)
            best = float(sj.max())
            ok = (sj >= best - s.query_margin) & (relevancy[:, j] >= s.relevancy_threshold) & eligible
            if best < s.similarity_floor(self.embedding_model):
                ok[:] = False
            kept = asked
            if asked == "auto":
                closest = ok & (sj >= best - s.granularity_margin)
                kept = self.dominant_granularity(torch.nonzero(closest).squeeze(1).numpy())
                ok &= self.granularity_mask(kept)
            idx = torch.nonzero(ok).squeeze(1)
            # competitors are weighed at the prompt's own granularity: a rarely matched part
            # query of the shelf behind a teapot, or a teapot+shelf group query, can light the
            # teapot more strongly than its object queries without meaning it is not the teapot
            # (bookshelf benchmark: teapot IoU 0.66 -> 0.85, held-out mIoU 0.857 -> 0.894)
            # (granularity_mask keeps every query for "any" and for runs without the record)
            rival = self.active & (relevancy[:, j] < s.relevancy_threshold) & self.granularity_mask(kept)
            others = torch.nonzero(rival).squeeze(1)
            matches.append(PromptMatch(prompt, idx.numpy(), relevancy[idx, j].numpy(), best, others.numpy(),
                                       granularity=kept))
        return matches

    # --- pointing ---------------------------------------------------------------------------
    def _solid_tree(self):
        """A k-d tree over the Gaussians that are opaque enough to be pointed at (built once)."""
        if self._point_tree is None:
            from scipy.spatial import cKDTree

            opacity, means, _ = self._shape_arrays()
            solid = np.nonzero(opacity >= SOLID_OPACITY)[0]
            if len(solid) == 0:
                solid = np.arange(len(means))
            self._point_tree = (cKDTree(means[solid]), solid)
        return self._point_tree

    def select_at(self, positions, granularity: str | list[str | None] | None = "object",
                  names: list[str] | None = None, keep: float = 0.8) -> list[PromptMatch]:
        """What is at each 3D position, with no text: the Gaussians nearest to it, the queries
        (of one granularity) that light them most, and so every Gaussian those queries light.

        Each match is named after the nearest of ``names`` (and the run's object names) when
        its queries' meaning is close enough to one, else "object <query>"."""
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        if not np.isfinite(positions).all():
            raise MaskFieldError("--at needs three finite numbers X Y Z (a position in the scene's coordinates).")
        grans = _per_prompt(granularity, len(positions))
        tree, solid = self._solid_tree()
        opacity = self._shape_arrays()[0]
        k = min(POINT_NEIGHBOURS, len(solid))
        matches = []
        for p, position in enumerate(positions):
            asked = grans[p] or "object"
            if asked == "auto":
                asked = "object"
            dist, nn = tree.query(position, k=k)
            near = solid[np.atleast_1d(nn)]
            dist = np.atleast_1d(dist)
            weight = torch.as_tensor(opacity[near] / (dist + 1e-3), dtype=torch.float32)
            weight = weight / weight.sum()
            with torch.no_grad():
                lit = torch.sigmoid(self.query_logits(self.features[torch.as_tensor(near)]))  # (k, K)
            score = weight @ lit  # how much each query lights the neighbourhood
            eligible = self.active & self.granularity_mask(asked)
            score = score.masked_fill(~eligible, -1.0)
            best = int(score.argmax())
            best_score = float(score[best])
            if best_score < 0.5 * self.settings.mask_threshold:
                chosen = np.zeros(0, np.int64)  # nothing there lights up at that granularity
            else:
                # duplicates of the same thing light the spot about as much as the best one
                chosen = torch.nonzero(score >= keep * best_score).squeeze(1).numpy()
            others = torch.nonzero(eligible).squeeze(1).numpy()
            others = np.setdiff1d(others, chosen)
            name = self._name_for(chosen, names) if len(chosen) else None
            label = name or (f"object {best}" if len(chosen) else f"nothing at {_fmt_position(position)}")
            matches.append(PromptMatch(label, chosen, score[torch.as_tensor(chosen, dtype=torch.long)].numpy(),
                                       best_score, others, granularity=asked,
                                       at=[float(v) for v in position]))
            matches[-1].nearest_distance = float(dist.min())
        return matches

    def _name_for(self, queries: np.ndarray, names: list[str] | None) -> str | None:
        """The candidate name whose meaning is nearest the queries', if near enough; None when
        there is none, or the text encoder is unavailable (pointing never needs it)."""
        candidates = list(dict.fromkeys([n.strip() for n in (names or []) if n and n.strip()] + list(self.object_names)))
        if not candidates:
            return None
        try:
            text = torch.as_tensor(self.encode(candidates))
        except MaskFieldError:
            return None
        meaning = torch.nn.functional.normalize(self.query_embed[torch.as_tensor(queries)].mean(0), dim=0)
        sim = text @ meaning
        best = int(sim.argmax())
        return candidates[best] if float(sim[best]) >= self.settings.similarity_floor(self.embedding_model) else None

    def split_parts(self, match: PromptMatch, indices: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """A part-granularity match split into its parts: queries that light mostly the same
        Gaussians are one part; each Gaussian goes to the part of its strongest query.
        Returns [(queries, Gaussian indices)], largest first."""
        if len(match.queries) < 2 or len(indices) == 0:
            return [(np.asarray(match.queries), np.asarray(indices))]
        with torch.no_grad():
            logits = self.query_logits(self.features[torch.as_tensor(indices)], match.queries)
        lit = (torch.sigmoid(logits) >= self.settings.mask_threshold).numpy()  # (n, q)
        q = lit.shape[1]
        inter = lit.T.astype(np.float64) @ lit
        size = lit.sum(0).astype(np.float64)
        iou = inter / np.maximum(size[:, None] + size[None, :] - inter, 1.0)
        group = np.arange(q)
        for a in range(q):  # union of queries that light the same Gaussians (IoU > 0.5)
            for b in range(a + 1, q):
                if iou[a, b] > 0.5:
                    group[group == group[b]] = group[a]
        strongest = group[logits.argmax(1).numpy()]
        parts = []
        for g in np.unique(group):
            members = np.asarray(match.queries)[group == g]
            idx = np.asarray(indices)[strongest == g]
            if len(idx):
                parts.append((members, idx))
        return sorted(parts, key=lambda part: -len(part[1]))

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
        flat = torch.as_tensor(columns.reshape(-1))
        weights = self.mask_embed[flat].T.contiguous()
        offset = self.query_offset[flat]
        logits = torch.empty(n, count)  # (N, P)
        for start in range(0, n, 65_536):  # chunks small enough to stay in cache: 2x faster
            torch.amax(torch.add(features[start:start + 65_536] @ weights, offset).view(-1, count, width), 2,
                       out=logits[start:start + 65_536])
        for j, m in enumerate(matches):
            if not m.found:
                logits[:, j] = -torch.inf
            elif self.settings.exclusive and len(m.competitors):
                self._yield_to_competitors(features, logits, j, m.competitors)
        scores = torch.sigmoid(logits)
        best_score, label = scores.max(1)
        keep = best_score >= self.settings.mask_threshold
        if features is self.features and self.supervised_share is not None:  # the run's own Gaussians
            keep &= ~self._unsupervised()
        label = torch.where(keep, label, torch.full_like(label, -1)).numpy().astype(np.int32)
        if features is self.features and self.gaussians is not None and self.settings.attach_scales > 0:
            self._detach_haze(label)
        return label, best_score.numpy(), scores.numpy()

    def query_logits(self, features: torch.Tensor, queries=None) -> torch.Tensor:
        """Mask logits (n, queries) of features (n, C), every query's or those given, each with
        its calibrated offset."""
        if queries is None:
            return features @ self.mask_embed.T + self.query_offset
        index = torch.as_tensor(np.asarray(queries), dtype=torch.long)
        return features @ self.mask_embed[index].T + self.query_offset[index]

    def _unsupervised(self) -> torch.Tensor:
        """Gaussians whose supervised share is under the least their opacity asks for (N,) bool;
        those no training view shows (share -1) are not judged."""
        share = self.supervised_share
        least = torch.full_like(share, self.settings.min_supervised_share)
        if self.gaussians is not None:
            faint = torch.as_tensor(self._shape_arrays()[0] < SOLID_OPACITY)
            least[faint] = max(self.settings.faint_min_supervised_share, self.settings.min_supervised_share)
        return (share >= 0) & (share < least)

    def _detach_haze(self, label: np.ndarray) -> None:
        """Faint Gaussians away from every solid Gaussian of their segment, and solid ones away
        from every other, leave it (-1, in place).

        Near: centre distance within ``attach_scales`` x (own + neighbour's largest scale), so a
        large blob reaching an object's surface stays while a speck a metre off does not. A
        segment with no solid Gaussian at all keeps its faint ones (nothing to judge them by);
        one with fewer than ``min_solid_for_outliers`` solid ones keeps those (a small object
        may be a few Gaussians apart)."""
        from scipy.spatial import cKDTree

        opacity, means, size = self._shape_arrays()
        solid = opacity >= SOLID_OPACITY
        min_solid = self.settings.min_solid_for_outliers
        for j in np.unique(label[label >= 0]):
            anchors = np.nonzero(solid & (label == j))[0]
            if min_solid > 0 and len(anchors) >= max(2, min_solid):
                # the nearest other solid Gaussian is the second hit (the first is itself); no
                # reach exceeds the bound, so farther ones need not be found (a miss: inf, alone)
                bound = self.settings.attach_scales * 2 * float(size[anchors].max())
                distance, nearest = cKDTree(means[anchors]).query(means[anchors], k=2, distance_upper_bound=bound,
                                                                  workers=-1)
                found = np.minimum(nearest[:, 1], len(anchors) - 1)  # a miss is index len(anchors)
                reach = self.settings.attach_scales * (size[anchors] + size[anchors[found]])
                alone = distance[:, 1] > reach
                label[anchors[alone]] = -1
                anchors = anchors[~alone]
            faint = np.nonzero(~solid & (label == j))[0]
            if len(anchors) == 0 or len(faint) == 0:
                continue
            distance, nearest = cKDTree(means[anchors]).query(means[faint], workers=-1)
            reach = self.settings.attach_scales * (size[faint] + size[anchors[nearest]])
            label[faint[distance > reach]] = -1

    def _shape_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per Gaussian: opacity, centre and largest scale (numpy, computed once)."""
        if self._shape is None:
            p = self.gaussians.params
            self._shape = (torch.sigmoid(p["opacities"].detach()).reshape(-1).cpu().numpy(),
                           p["means"].detach().cpu().numpy(),
                           torch.exp(p["scales"].detach()).amax(1).cpu().numpy())
        return self._shape

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
            chosen = torch.nonzero(competitor).squeeze(1)
            other = torch.cat([self.query_logits(features[chunk], chosen).amax(1) for chunk in torch.split(rows, 262_144)])
        beaten = other > own[rows]
        logits[rows[beaten], j] = -torch.inf

    def segment(self, prompts: list[str], text: np.ndarray | None = None,
                granularity: str | list[str | None] | None = None):
        prompts = [p.strip() for p in prompts]
        if not prompts or any(not p for p in prompts):
            raise MaskFieldError("empty prompt: give at least one non-empty --prompt, e.g. --prompt chair.")
        matches = self.match(prompts, text, granularity)
        label, score, all_scores = self.label_gaussians(matches)
        return matches, label, score, all_scores

    # --- points (mesh faces) and views ----------------------------------------------------------
    def label_points(self, points: np.ndarray, label: np.ndarray, all_scores: np.ndarray):
        """A prompt per point (e.g. mesh face centres), from the nearest Gaussians' scores."""
        from scipy.spatial import cKDTree

        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise MaskFieldError(f"--points must be an N x 3 array of positions, got shape {points.shape}.")
        opacity, means, _ = self._shape_arrays()
        solid = opacity >= SOLID_OPACITY  # faint floaters should not vote
        if not solid.any():
            solid = np.ones_like(solid)
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


def _prior_object_names(run: RunFolder) -> list[str]:
    """The object names that priors made from labels carry (for naming what --at finds)."""
    import json

    for path in sorted(Path(run.priors_dir).glob("*.npz"))[:1] if run.priors_dir.exists() else []:
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError):
            return []
        names = (meta.get("settings") or {}).get("names") or {}
        return sorted({str(n) for n in names.values()}) if isinstance(names, dict) else []
    return []


def _per_prompt(granularity, count: int) -> list[str | None]:
    """One granularity for all, or one per prompt; each must be a known choice."""
    grans = list(granularity) if isinstance(granularity, (list, tuple)) else [granularity] * count
    if len(grans) != count:
        raise MaskFieldError(f"{len(grans)} granularities for {count} prompts; give one for all, or one per prompt.")
    for g in grans:
        if g is not None and g not in GRANULARITY_CHOICES:
            raise MaskFieldError(f"unknown granularity {g!r}: use one of {', '.join(GRANULARITY_CHOICES)}.")
    return grans


def _fmt_position(position) -> str:
    return "(" + ", ".join(f"{float(v):.3g}" for v in position) + ")"


# label colours of the legend (and Blender's display): distinct, readable on grey
LABEL_COLOURS = [(0.90, 0.10, 0.29), (0.24, 0.71, 0.29), (0.26, 0.39, 0.85), (1.00, 0.88, 0.10),
                 (0.96, 0.51, 0.19), (0.57, 0.12, 0.71), (0.27, 0.94, 0.94), (0.94, 0.20, 0.90),
                 (0.74, 0.96, 0.05), (0.98, 0.75, 0.83), (0.00, 0.50, 0.50), (0.60, 0.39, 0.16)]
UNLABELLED_COLOUR = (0.5, 0.5, 0.5)


@dataclass
class SegmentRequest:
    """What one `segment` call (CLI or server request) asks for."""
    prompts: list[str] = field(default_factory=list)
    text: np.ndarray | None = None  # prompt vectors instead of text
    granularity: str | list[str | None] | None = None  # for the prompts (None: auto)
    at: list = field(default_factory=list)  # 3D positions to select by pointing
    at_granularity: str | list[str | None] | None = None  # for the positions (None: object)
    names: list[str] = field(default_factory=list)  # names for pointed-at things (e.g. the panel's prompts)
    points_file: Path | None = None  # positions (mesh face centres) to label
    rest: bool = False  # also write what no segment took, as rest.ply
    labels_ply: bool = False  # also the whole scene with per-Gaussian label / label_score
    mesh: bool = False  # also a closed, vertex-coloured mesh per segment
    supersplat: bool = False  # also SuperSplat's compressed .ply per segment (needs Node)


def write_segments(seg: Segmenter, prompts: list[str], out_dir: Path, points_file: Path | None = None,
                   reporter: Reporter | None = None, text: np.ndarray | None = None,
                   request: SegmentRequest | None = None) -> dict:
    """Segment and write: per prompt (or pointed-at position) <slug>.npz (indices, scores) and
    <slug>.ply; labels.npz + labels.json (legend) for the whole scene; on request the rest,
    labels.ply, meshes, SuperSplat files and face labels. Returns the summary (segments.json)."""
    from .run import prepare_folder
    from .splats.ply import write_ply

    reporter = reporter or Reporter("none")
    req = request or SegmentRequest()
    req.prompts = list(prompts) if prompts else list(req.prompts)
    req.text = text if text is not None else req.text
    req.points_file = points_file if points_file is not None else req.points_file
    if not req.prompts and not req.at:
        raise MaskFieldError("nothing to segment: give a --prompt, or a position with --at X Y Z.")
    # positions to label are checked before anything is written
    points = load_points(req.points_file) if req.points_file is not None else None
    t0 = time.perf_counter()
    matches = []
    if req.prompts:
        cleaned = [p.strip() for p in req.prompts]
        if any(not p for p in cleaned):
            raise MaskFieldError("empty prompt: give at least one non-empty --prompt, e.g. --prompt chair.")
        matches += seg.match(cleaned, req.text, req.granularity)
    if req.at:
        matches += seg.select_at(req.at, req.at_granularity, names=req.names or req.prompts)
    label, score, all_scores = seg.label_gaussians(matches)
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
                 "granularity": m.granularity, "label": j, "colour": list(LABEL_COLOURS[j % len(LABEL_COLOURS)]),
                 "npz": None, "ply": None, "parts": []}
        if m.at is not None:
            entry["at"] = m.at
            entry["nearest_gaussian_distance"] = m.nearest_distance
        # write nothing misleading: an unmatched prompt leaves no (stale) files behind
        for stale in [out_dir / f"{slug}.npz", out_dir / f"{slug}.ply", out_dir / f"{slug}.mesh.ply",
                      out_dir / f"{slug}.mesh.npz", out_dir / f"{slug}.compressed.ply",
                      *out_dir.glob(f"{glob_escape(slug)}.part-*")]:
            stale.unlink(missing_ok=True)
        if entry["found"]:
            _save_npz(out_dir / f"{slug}.npz", indices=idx.astype(np.int64), scores=score[idx].astype(np.float32))
            write_ply(out_dir / f"{slug}.ply", seg.gaussians.subset(torch.as_tensor(idx)),
                      extra={"segment_score": score[idx]})
            entry["npz"], entry["ply"] = f"{slug}.npz", f"{slug}.ply"
            if m.granularity == "part":
                entry["parts"] = _write_parts(seg, m, idx, score, out_dir, slug)
        elif m.at is not None:
            reporter.log(f"nothing lights up at {_fmt_position(m.at)} at the {m.granularity} granularity (the "
                         f"nearest Gaussian is {m.nearest_distance:.3g} away); nothing was written for it.",
                         level="warning")
        else:
            reporter.log(f"the prompt {m.prompt!r} matches nothing in this scene (best query similarity "
                         f"{m.best_similarity:.2f}); nothing was written for it.", level="warning")
        entries.append(entry)
    summary = {"prompts": entries, "point_labels": None, "text_encoder": seg.embedding_model,
               "gaussians": len(seg.gaussians), "seconds": round(seconds, 4), "settings": asdict(seg.settings)}
    summary.update(write_labels(seg, entries, label, score, out_dir, ply=req.labels_ply))
    if req.rest:
        rest = np.nonzero(label < 0)[0]
        write_ply(out_dir / "rest.ply", seg.gaussians.subset(torch.as_tensor(rest)))
        summary["rest"] = {"ply": "rest.ply", "count": int(len(rest))}
    if req.mesh:
        _write_meshes(seg, entries, out_dir, reporter)
    if req.supersplat:
        summary["supersplat"] = _write_supersplat(entries, out_dir, reporter)
    if points is not None:
        plabels, pscores = seg.label_points(points, label, all_scores)
        for name, arr in (("point_labels", plabels), ("point_scores", pscores)):
            with atomic_file(out_dir / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr)
        summary["point_labels"] = "point_labels.npy"
        summary["point_counts"] = [int((plabels == j).sum()) for j in range(len(matches))]
    write_json_atomic(out_dir / "segments.json", summary)
    return summary


def glob_escape(text: str) -> str:
    import glob

    return glob.escape(text)


def _save_npz(path: Path, **arrays) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _write_parts(seg: Segmenter, m: PromptMatch, idx: np.ndarray, score: np.ndarray, out_dir: Path,
                 slug: str) -> list[dict]:
    """Each part of a part-granularity prompt as its own .npz / .ply."""
    from .splats.ply import write_ply

    parts = []
    for k, (queries, part_idx) in enumerate(seg.split_parts(m, idx), start=1):
        name = f"{slug}.part-{k}"
        _save_npz(out_dir / f"{name}.npz", indices=part_idx.astype(np.int64), scores=score[part_idx].astype(np.float32))
        write_ply(out_dir / f"{name}.ply", seg.gaussians.subset(torch.as_tensor(part_idx)),
                  extra={"segment_score": score[part_idx]})
        parts.append({"part": k, "queries": [int(q) for q in queries], "count": int(len(part_idx)),
                      "npz": f"{name}.npz", "ply": f"{name}.ply"})
    return parts


def write_labels(seg: Segmenter, entries: list[dict], label: np.ndarray, score: np.ndarray, out_dir: Path,
                 ply: bool = False) -> dict:
    """The whole scene's labels: labels.npz (label, label_score per Gaussian, -1 = none), the
    legend labels.json (label -> prompt, queries, granularity, colour) and, with ``ply``,
    labels.ply: every Gaussian with ``label`` (a whole number stored as float: SuperSplat reads
    int properties as unsigned) and ``label_score`` properties."""
    from .splats.ply import write_ply

    label = np.asarray(label, np.int32)
    label_score = np.where(label >= 0, score, 0.0).astype(np.float32)
    _save_npz(out_dir / "labels.npz", label=label, label_score=label_score)
    legend = {"gaussians": int(len(label)), "none": {"label": -1, "colour": list(UNLABELLED_COLOUR)},
              "labels": [{"label": e["label"], "prompt": e["prompt"], "queries": e["queries"],
                          "granularity": e["granularity"], "colour": e["colour"], "count": e["count"],
                          **({"at": e["at"]} if "at" in e else {})} for e in entries],
              "ply": "labels.ply" if ply else None}
    if ply:
        write_ply(out_dir / "labels.ply", seg.gaussians, extra={"label": label.astype(np.float32),
                                                                "label_score": label_score})
    else:
        (out_dir / "labels.ply").unlink(missing_ok=True)  # an older one would not match this legend
    write_json_atomic(out_dir / "labels.json", legend)
    return {"labels": "labels.npz", "legend": "labels.json", "labels_ply": legend["ply"]}


def _write_meshes(seg: Segmenter, entries: list[dict], out_dir: Path, reporter: Reporter) -> None:
    from .meshing import MeshSettings, gaussians_to_mesh, write_mesh_npz, write_mesh_ply

    for entry in reporter.track([e for e in entries if e["found"]], "mesh", desc="meshing segments"):
        idx = np.load(out_dir / entry["npz"])["indices"]
        mesh = gaussians_to_mesh(seg.gaussians.subset(torch.as_tensor(idx)), MeshSettings())
        if mesh.faces.shape[0] == 0:
            reporter.log(f"{entry['prompt']!r}: too few solid Gaussians for a mesh", level="warning")
            continue
        write_mesh_ply(out_dir / f"{entry['slug']}.mesh.ply", mesh)
        write_mesh_npz(out_dir / f"{entry['slug']}.mesh.npz", mesh)
        entry["mesh"] = {"ply": f"{entry['slug']}.mesh.ply", "npz": f"{entry['slug']}.mesh.npz",
                         "vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
                         "seconds": round(mesh.seconds, 3)}


def _write_supersplat(entries: list[dict], out_dir: Path, reporter: Reporter) -> dict:
    """SuperSplat's compressed .ply of each segment, through @playcanvas/splat-transform."""
    from .splats.supersplat import SUPERSPLAT_DROPS, compress, find_splat_transform

    tool = find_splat_transform()
    if tool is None:
        reporter.log("SuperSplat's converter (splat-transform, Node.js) was not found; only the standard .ply "
                     "files were written. Install it with `npm install @playcanvas/splat-transform` or set "
                     "MASKFIELD_SPLAT_TRANSFORM to its path.", level="warning")
        return {"written": False, "reason": "splat-transform not found"}
    for entry in entries:
        if entry["found"]:
            target = out_dir / f"{entry['slug']}.compressed.ply"
            compress(tool, out_dir / entry["ply"], target)
            entry["compressed_ply"] = target.name
    return {"written": True, "drops": SUPERSPLAT_DROPS}


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
