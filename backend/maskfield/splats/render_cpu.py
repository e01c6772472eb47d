"""The compiled CPU rasteriser: 3DGS's tile-based alpha blending in numba, forward and backward,
with the projection and spherical harmonics compiled too (hand-written backward passes).

1. each Gaussian lists the 16x16 tiles its alpha >= 1/255 ellipse touches; the Gaussians are
   visited front to back, so every tile's list comes out depth-sorted without a sort per tile;
2. forward, tile by tile, the tiles dealt to the threads by their work (``_share_tiles``):
   each pixel blends its tile's list front to back
   and stops once transmittance would fall below 1e-4 (3DGS's early termination); every pair
   it blends (tile-local pixel, Gaussian falloff) is kept, entry by entry;
3. backward, tile by tile again: the kept pairs are read back to front, each
   transmittance recovered by division (alpha <= 0.99 keeps it stable), and the gradients of a
   (tile, Gaussian) entry go into that entry's own row, so no two threads ever write the same
   memory; the rows are then summed per Gaussian. Results do not depend on the thread count
   (a tile is one thread's, whichever);
4. the mask field's frozen blending weights replay the same kept pairs (``weights``).

The kernels compile on first use and are cached on disk (``cache=True``), so only the first
run on a machine pays the compile time (see ``warm_up``).
"""
from __future__ import annotations

import math
import time

import numba
import numpy as np
import torch
from numba import njit, prange

from ..scene.cameras import DEFAULT_NEAR
from .render import ALPHA_MAX, ALPHA_MIN, T_MIN

TILE = 16
# contract (fused multiply-add) and approximate functions; no NaN or sign assumptions
FAST = {"contract", "afn", "arcp"}
# float32 constants: a float64 literal would turn each pixel's arithmetic (and its exp) into float64
F0, F05, F1 = np.float32(0.0), np.float32(0.5), np.float32(1.0)
A_MIN32, A_MAX32, T_MIN32 = np.float32(ALPHA_MIN), np.float32(ALPHA_MAX), np.float32(T_MIN)
S_PAD = np.float32(1e-3)


# --- kernels (float32 arrays, C-contiguous) -----------------------------------------------

@njit(cache=True, parallel=True)
def _boxes(means2d, conics, opacities, valid, width, height):
    """Each Gaussian's pixel box (N,4): the pixel centres inside its alpha >= 1/255 ellipse
    (x0, x1, y0, y1, inclusive; empty where x1 < x0)."""
    n = means2d.shape[0]
    box = np.empty((n, 4), dtype=np.int32)
    for g in prange(n):
        box[g, 0], box[g, 1], box[g, 2], box[g, 3] = 0, -1, 0, -1
        o = opacities[g]
        if o < ALPHA_MIN or not valid[g]:
            continue
        s_max = math.log(o / ALPHA_MIN)  # alpha >= 1/255  <=>  sigma <= s_max
        a, b, c = conics[g, 0], conics[g, 1], conics[g, 2]
        det = max(a * c - b * b, 1e-12)
        rx = math.sqrt(2.0 * s_max * c / det)
        ry = math.sqrt(2.0 * s_max * a / det)
        # pixel centres x + 0.5 inside [mx - rx, mx + rx]
        x0 = max(math.ceil(means2d[g, 0] - rx - 0.5), 0)
        x1 = min(math.floor(means2d[g, 0] + rx - 0.5), width - 1)
        y0 = max(math.ceil(means2d[g, 1] - ry - 0.5), 0)
        y1 = min(math.floor(means2d[g, 1] + ry - 0.5), height - 1)
        if x1 >= x0 and y1 >= y0:
            box[g, 0], box[g, 1], box[g, 2], box[g, 3] = x0, x1, y0, y1
    return box


@njit(cache=True)
def _depth_order(ids, depth_bits):
    """``ids`` sorted by depth, front to back, ties kept in ``ids`` order: a stable LSD radix
    sort (3 passes of 11 bits) of ``depth_bits``, the float32 depths viewed as uint32.
    Positive floats order as their bit patterns do; every depth here is past the near plane."""
    n = ids.shape[0]
    keys = np.empty(n, dtype=np.uint32)
    for i in range(n):
        keys[i] = depth_bits[ids[i]]
    src, dst = ids.copy(), np.empty(n, dtype=ids.dtype)
    src_k, dst_k = keys, np.empty(n, dtype=np.uint32)
    for shift in (0, 11, 22):
        counts = np.zeros(2049, dtype=np.int64)
        for i in range(n):
            counts[((src_k[i] >> shift) & 2047) + 1] += 1
        for b in range(2048):
            counts[b + 1] += counts[b]
        for i in range(n):
            b = (src_k[i] >> shift) & 2047
            dst[counts[b]] = src[i]
            dst_k[counts[b]] = src_k[i]
            counts[b] += 1
        src, dst = dst, src
        src_k, dst_k = dst_k, src_k
    return src


@njit(cache=True, parallel=True)
def _bin_tiles(box, order, width, height, n_workers):
    """Each tile's touching Gaussians, front to back: (tile offsets, entries), and where each
    Gaussian's entries went (``slots[start[g]:start[g + 1]]``, for summing its gradients).

    ``order`` lists the Gaussians to bin, front to back, so every tile's list comes out in
    depth order without a sort per tile. Each worker bins one run of ``order``; in a tile,
    worker 0's entries come first, then worker 1's, ...: the same lists as one worker makes.
    """
    tiles_x = (width + TILE - 1) // TILE
    n_tiles = tiles_x * ((height + TILE - 1) // TILE)
    n = box.shape[0]
    run = (order.shape[0] + n_workers - 1) // n_workers
    counts = np.zeros((n_workers, n_tiles), dtype=np.int64)
    per_gaussian = np.zeros(n + 1, dtype=np.int64)
    for w in prange(n_workers):
        for q in range(w * run, min(order.shape[0], (w + 1) * run)):
            g = order[q]
            if box[g, 1] < box[g, 0]:  # empty box: alpha below 1/255 everywhere
                continue
            for ty in range(box[g, 2] // TILE, box[g, 3] // TILE + 1):
                for tx in range(box[g, 0] // TILE, box[g, 1] // TILE + 1):
                    counts[w, ty * tiles_x + tx] += 1
            per_gaussian[g + 1] = (box[g, 3] // TILE - box[g, 2] // TILE + 1) * \
                (box[g, 1] // TILE - box[g, 0] // TILE + 1)
    offsets = np.zeros(n_tiles + 1, dtype=np.int64)
    cursor = np.empty((n_workers, n_tiles), dtype=np.int64)
    for t in range(n_tiles):
        at = offsets[t]
        for w in range(n_workers):
            cursor[w, t] = at
            at += counts[w, t]
        offsets[t + 1] = at
    start = np.cumsum(per_gaussian)
    entries = np.empty(offsets[-1], dtype=np.int32)
    slots = np.empty(offsets[-1], dtype=np.int64)
    for w in prange(n_workers):
        for q in range(w * run, min(order.shape[0], (w + 1) * run)):
            g = order[q]
            if box[g, 1] < box[g, 0]:
                continue
            j = start[g]
            for ty in range(box[g, 2] // TILE, box[g, 3] // TILE + 1):
                for tx in range(box[g, 0] // TILE, box[g, 1] // TILE + 1):
                    t = ty * tiles_x + tx
                    entries[cursor[w, t]] = g
                    slots[j] = cursor[w, t]
                    cursor[w, t] += 1
                    j += 1
    return offsets, entries, slots, start


@njit(cache=True, fastmath=FAST)
def _row_span(y, mx, my, ca, cb, cc, s_cut, x_lo, x_hi):
    """The pixels of row y (within x_lo..x_hi) whose centres lie inside sigma <= s_cut."""
    dy = y + 0.5 - my
    # 0.5 ca dx^2 + cb dy dx + 0.5 cc dy^2 - s_cut <= 0
    disc = cb * cb * dy * dy - ca * (cc * dy * dy - 2.0 * s_cut)
    if disc < 0.0 or ca <= 0.0:
        return 1, 0
    root = math.sqrt(disc)
    x0 = max(math.ceil(mx + (-cb * dy - root) / ca - 0.5), x_lo)
    x1 = min(math.floor(mx + (-cb * dy + root) / ca - 0.5), x_hi)
    return x0, x1


@njit(cache=True, fastmath=FAST)
def _row_falloff(x0, y, mx, my, ca, cb, cc):
    """exp(-sigma) at pixel (x0, y), and what multiplies it to step to x0 + 1: sigma is
    quadratic along a row, so falloff(x + 1) = falloff(x) r(x) and r(x + 1) = r(x) exp(-ca)
    (exp(-ca) is the Gaussian's, taken once); a row costs two exps rather than one per pixel
    (float32, at most 16 steps: ~1e-6 relative)."""
    dx = np.float32(x0) + F05 - mx
    dy = np.float32(y) + F05 - my
    sigma = F05 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
    step = ca * dx + F05 * ca + cb * dy  # sigma(x0 + 1) - sigma(x0)
    return math.exp(-sigma), math.exp(-step)


# Each tile runs Gaussian by Gaussian, front to back, over the pixels of the Gaussian's box
# inside the tile, with every pixel's running state in small per-tile arrays (as a CUDA block
# does with its threads); a pixel that terminated is skipped and the tile stops when all have.
# Tile-local pixel i is (y - y_lo) * TILE + (x - x_lo). The forward keeps every pair it blends
# (the pixel and its Gaussian falloff), entry by entry, so the backward reads them back instead
# of finding and evaluating them again.

@njit(cache=True, parallel=True)
def _pair_capacity(offsets, entries, box, width, height):
    """Where each tile's blended pairs start in the pair arrays (T + 1): room for every pixel
    of each entry's box inside the tile."""
    tiles_x = (width + TILE - 1) // TILE
    n_tiles = offsets.shape[0] - 1
    room = np.zeros(n_tiles + 1, dtype=np.int64)
    for t in prange(n_tiles):
        x_lo, y_lo = (t % tiles_x) * TILE, (t // tiles_x) * TILE
        x_hi, y_hi = min(x_lo + TILE, width) - 1, min(y_lo + TILE, height) - 1
        total = 0
        for k in range(offsets[t], offsets[t + 1]):
            g = entries[k]
            nx = min(box[g, 1], x_hi) - max(box[g, 0], x_lo) + 1
            ny = min(box[g, 3], y_hi) - max(box[g, 2], y_lo) + 1
            total += nx * ny
        room[t + 1] = total
    return np.cumsum(room)


@njit(cache=True)
def _share_tiles(cost, n_workers):
    """Deal the tiles to ``n_workers`` threads so each gets about the same work: the dearest
    tile first, each to the least loaded worker. Returns (worker offsets (W + 1), tiles);
    worker w runs ``tiles[offsets[w]:offsets[w + 1]]``. A plain ``prange`` over tiles hands
    each thread one contiguous run of them, and in a photo the object's tiles sit together
    (the tabletop demo's second thread had 85% of the pairs)."""
    n = cost.shape[0]
    load = np.zeros(n_workers, dtype=np.int64)
    owner = np.empty(n, dtype=np.int64)
    for t in np.argsort(-cost, kind="mergesort"):
        w = np.argmin(load)
        owner[t] = w
        load[w] += cost[t] + 1  # + 1: empty tiles still cost their pixels' write-out
    counts = np.zeros(n_workers + 1, dtype=np.int64)
    for t in range(n):
        counts[owner[t] + 1] += 1
    offsets = np.cumsum(counts)
    cursor = offsets[:-1].copy()
    tiles = np.empty(n, dtype=np.int64)
    for t in range(n):
        tiles[cursor[owner[t]]] = t
        cursor[owner[t]] += 1
    return offsets, tiles


@njit(cache=True, fastmath=FAST)
def _forward_tile(t, means2d, conics, opacities, values, background, offsets, entries, box, width, height,
                  first_pair, out, t_final, pair_pixel, pair_falloff, pair_start, pair_end):
    """Blend one tile's pixels (see ``_forward``), writing its pairs from ``first_pair`` on."""
    tiles_x = (width + TILE - 1) // TILE
    n_ch = values.shape[1]
    x_lo, y_lo = (t % tiles_x) * TILE, (t // tiles_x) * TILE
    x_hi, y_hi = min(x_lo + TILE, width) - 1, min(y_lo + TILE, height) - 1
    n_live = (x_hi - x_lo + 1) * (y_hi - y_lo + 1)
    row_live = np.full(TILE, x_hi - x_lo + 1, dtype=np.int64)  # a row whose pixels all stopped is skipped
    T = np.ones(TILE * TILE, dtype=np.float32)
    acc = np.zeros((TILE * TILE, n_ch), dtype=np.float32)
    done = np.zeros(TILE * TILE, dtype=np.bool_)
    j = first_pair
    for k in range(offsets[t], offsets[t + 1]):
        if n_live == 0:
            break
        pair_start[k] = j
        g = entries[k]
        mx, my, o = means2d[g, 0], means2d[g, 1], opacities[g]
        ca, cb, cc = conics[g, 0], conics[g, 1], conics[g, 2]
        s_cut = math.log(o / A_MIN32) + S_PAD
        q = math.exp(-ca)
        if n_ch == 4:  # the colour fit's channels (colour, depth), held in registers
            v0, v1, v2, v3 = values[g, 0], values[g, 1], values[g, 2], values[g, 3]
        else:
            v0 = v1 = v2 = v3 = F0
        for y in range(max(box[g, 2], y_lo), min(box[g, 3], y_hi) + 1):
            if row_live[y - y_lo] == 0:
                continue
            x0, x1 = _row_span(y, mx, my, ca, cb, cc, s_cut, max(box[g, 0], x_lo), min(box[g, 1], x_hi))
            if x1 < x0:
                continue
            f_next, r = _row_falloff(x0, y, mx, my, ca, cb, cc)
            for x in range(x0, x1 + 1):
                falloff = f_next
                f_next *= r
                r *= q
                i = (y - y_lo) * TILE + (x - x_lo)
                if done[i]:
                    continue
                a_raw = o * falloff
                if a_raw < A_MIN32:
                    continue
                a = min(a_raw, A_MAX32)
                next_t = T[i] * (F1 - a)
                if next_t < T_MIN32:
                    done[i] = True
                    n_live -= 1
                    row_live[y - y_lo] -= 1
                    continue
                w = a * T[i]
                if n_ch == 4:
                    acc[i, 0] += w * v0
                    acc[i, 1] += w * v1
                    acc[i, 2] += w * v2
                    acc[i, 3] += w * v3
                else:
                    for c in range(n_ch):
                        acc[i, c] += w * values[g, c]
                T[i] = next_t
                pair_pixel[j] = i
                pair_falloff[j] = falloff
                j += 1
        pair_end[k] = j
    for y in range(y_lo, y_hi + 1):
        for x in range(x_lo, x_hi + 1):
            i = (y - y_lo) * TILE + (x - x_lo)
            pix = y * width + x
            for c in range(n_ch):
                out[pix, c] = acc[i, c] + T[i] * background[c]
            t_final[pix] = T[i]


@njit(cache=True, parallel=True, fastmath=FAST)
def _forward(means2d, conics, opacities, values, background, offsets, entries, box, width, height, tile_room,
             plan_offsets, plan_tiles):
    """Blend every pixel: (out (P,C) with the background, final transmittance (P,), and the
    blended pairs: entry k's are ``pair_pixel/pair_falloff[pair_start[k]:pair_end[k]]``).
    Tile t's pairs go from ``tile_room[t]`` on (``_pair_capacity``); the threads run the tiles
    of ``_share_tiles``'s plan."""
    n_ch = values.shape[1]
    out = np.empty((width * height, n_ch), dtype=np.float32)
    t_final = np.empty(width * height, dtype=np.float32)
    pair_pixel = np.empty(tile_room[-1], dtype=np.uint8)  # tile-local: 16 x 16 pixels
    pair_falloff = np.empty(tile_room[-1], dtype=np.float32)
    pair_start = np.zeros(entries.shape[0], dtype=np.int64)
    pair_end = np.zeros(entries.shape[0], dtype=np.int64)
    for w in prange(plan_offsets.shape[0] - 1):
        for q in range(plan_offsets[w], plan_offsets[w + 1]):
            t = plan_tiles[q]
            _forward_tile(t, means2d, conics, opacities, values, background, offsets, entries, box, width, height,
                          tile_room[t], out, t_final, pair_pixel, pair_falloff, pair_start, pair_end)
    return out, t_final, pair_pixel, pair_falloff, pair_start, pair_end


@njit(cache=True, fastmath=FAST)
def _backward_tile(t, means2d, conics, opacities, values, background, offsets, entries, t_final, pair_pixel,
                   pair_falloff, pair_start, pair_end, grad_out, grad_acc, width, height, grads):
    """One tile's entry gradients (see ``_backward``)."""
    tiles_x = (width + TILE - 1) // TILE
    n_ch = values.shape[1]
    x_lo, y_lo = (t % tiles_x) * TILE, (t // tiles_x) * TILE
    x_hi, y_hi = min(x_lo + TILE, width) - 1, min(y_lo + TILE, height) - 1
    T = np.empty(TILE * TILE, dtype=np.float32)
    tail = np.empty(TILE * TILE, dtype=np.float32)  # the background's share behind every pair
    later = np.zeros(TILE * TILE, dtype=np.float32)  # sum over later pairs of T alpha (v . G)
    G = np.empty((TILE * TILE, n_ch), dtype=np.float32)
    g_acc = np.empty(TILE * TILE, dtype=np.float32)
    for y in range(y_lo, y_hi + 1):
        for x in range(x_lo, x_hi + 1):
            i = (y - y_lo) * TILE + (x - x_lo)
            pix = y * width + x
            T[i] = t_final[pix]
            bg_dot = F0
            for c in range(n_ch):
                G[i, c] = grad_out[pix, c]
                bg_dot += grad_out[pix, c] * background[c]
            tail[i] = t_final[pix] * bg_dot
            g_acc[i] = grad_acc[pix]  # the accumulated alpha: a channel of value 1, background 0
    gv = np.empty(n_ch, dtype=np.float32)
    for k in range(offsets[t + 1] - 1, offsets[t] - 1, -1):
        if pair_end[k] == pair_start[k]:
            continue
        g = entries[k]
        mx, my, o = means2d[g, 0], means2d[g, 1], opacities[g]
        ca, cb, cc = conics[g, 0], conics[g, 1], conics[g, 2]
        g_o = g_a = g_b = g_c = g_x = g_y = F0
        gv[:] = F0
        if n_ch == 4:  # as in the forward: the colour fit's four channels in registers
            v0, v1, v2, v3 = values[g, 0], values[g, 1], values[g, 2], values[g, 3]
        else:
            v0 = v1 = v2 = v3 = F0
        e0 = e1 = e2 = e3 = F0
        for j in range(pair_start[k], pair_end[k]):
            i = np.int64(pair_pixel[j])
            falloff = pair_falloff[j]
            dx = np.float32(x_lo + (i % TILE)) + F05 - mx
            dy = np.float32(y_lo + (i // TILE)) + F05 - my
            a_raw = o * falloff
            a = min(a_raw, A_MAX32)
            inv = F1 / (F1 - a)
            T[i] = T[i] * inv  # transmittance in front of this pair
            w = a * T[i]
            dot = g_acc[i]
            if n_ch == 4:
                G0, G1, G2, G3 = G[i, 0], G[i, 1], G[i, 2], G[i, 3]
                dot += v0 * G0 + v1 * G1 + v2 * G2 + v3 * G3
                e0 += w * G0
                e1 += w * G1
                e2 += w * G2
                e3 += w * G3
            else:
                for c in range(n_ch):
                    dot += values[g, c] * G[i, c]
                    gv[c] += w * G[i, c]
            grad_alpha = T[i] * dot - (later[i] + tail[i]) * inv
            later[i] += w * dot
            if a_raw >= A_MAX32:  # clamped: no gradient through alpha
                continue
            grad_sigma = -grad_alpha * a_raw
            g_o += grad_alpha * falloff
            g_a += F05 * dx * dx * grad_sigma
            g_b += dx * dy * grad_sigma
            g_c += F05 * dy * dy * grad_sigma
            g_x -= (ca * dx + cb * dy) * grad_sigma
            g_y -= (cb * dx + cc * dy) * grad_sigma
        grads[k, 0], grads[k, 1], grads[k, 2], grads[k, 3], grads[k, 4], grads[k, 5] = g_o, g_a, g_b, g_c, g_x, g_y
        if n_ch == 4:
            grads[k, 6], grads[k, 7], grads[k, 8], grads[k, 9] = e0, e1, e2, e3
        else:
            for c in range(n_ch):
                grads[k, 6 + c] = gv[c]


@njit(cache=True, parallel=True, fastmath=FAST)
def _backward(means2d, conics, opacities, values, background, offsets, entries, t_final, pair_pixel, pair_falloff,
              pair_start, pair_end, grad_out, grad_acc, width, height, plan_offsets, plan_tiles):
    """Per-entry gradients (E, 6 + C): [opacity, conic a b c, mean x y, values]."""
    grads = np.zeros((entries.shape[0], 6 + values.shape[1]), dtype=np.float32)
    for w in prange(plan_offsets.shape[0] - 1):
        for q in range(plan_offsets[w], plan_offsets[w + 1]):
            _backward_tile(plan_tiles[q], means2d, conics, opacities, values, background, offsets, entries, t_final,
                           pair_pixel, pair_falloff, pair_start, pair_end, grad_out, grad_acc, width, height, grads)
    return grads


@njit(cache=True, parallel=True)
def _sum_per_gaussian(entry_grads, slots, start, n):
    """Sum the entry rows of each Gaussian (one thread per Gaussian: no races, a fixed order)."""
    out = np.zeros((n, entry_grads.shape[1]), dtype=np.float32)
    for g in prange(n):
        for j in range(start[g], start[g + 1]):
            row = slots[j]
            for c in range(entry_grads.shape[1]):
                out[g, c] += entry_grads[row, c]
    return out


@njit(cache=True, parallel=True)
def _replay_weights(opacities, offsets, entries, pair_pixel, pair_falloff, pair_start, pair_end, width, height,
                    plan_offsets, plan_tiles):
    """The blending weights of the pairs ``_forward`` kept, as (pixel, Gaussian, weight), by
    pixel then front to back: the forward's own pairs and arithmetic, so they reproduce its
    render exactly. A pixel lies in one tile, so the per-tile loops never share a pixel."""
    tiles_x = (width + TILE - 1) // TILE
    n_tiles = offsets.shape[0] - 1
    counts = np.zeros(width * height + 1, dtype=np.int64)
    for t in prange(n_tiles):  # first count the pairs of each pixel ...
        x_lo, y_lo = (t % tiles_x) * TILE, (t // tiles_x) * TILE
        for k in range(offsets[t], offsets[t + 1]):
            for j in range(pair_start[k], pair_end[k]):
                i = np.int64(pair_pixel[j])
                counts[(y_lo + i // TILE) * width + x_lo + i % TILE + 1] += 1
    first = np.cumsum(counts)
    gauss = np.empty(first[-1], dtype=np.int64)
    weight = np.empty(first[-1], dtype=np.float32)
    for w in prange(plan_offsets.shape[0] - 1):  # ... then replay the blending, front to back
        for q in range(plan_offsets[w], plan_offsets[w + 1]):
            t = plan_tiles[q]
            x_lo, y_lo = (t % tiles_x) * TILE, (t // tiles_x) * TILE
            T = np.ones(TILE * TILE, dtype=np.float32)
            m = np.zeros(TILE * TILE, dtype=np.int64)
            for k in range(offsets[t], offsets[t + 1]):
                g = entries[k]
                o = opacities[g]
                for j in range(pair_start[k], pair_end[k]):
                    i = np.int64(pair_pixel[j])
                    a = min(o * pair_falloff[j], A_MAX32)
                    slot = first[(y_lo + i // TILE) * width + x_lo + i % TILE] + m[i]
                    gauss[slot] = g
                    weight[slot] = a * T[i]
                    m[i] += 1
                    T[i] = T[i] * (F1 - a)
    pixel = np.empty(first[-1], dtype=np.int64)
    for p in prange(width * height):
        pixel[first[p]:first[p + 1]] = p
    return pixel, gauss, weight


# --- torch side ------------------------------------------------------------------------------

def _np32(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to(torch.float32).numpy())


class Tiles:
    """Each tile's Gaussians, front to back (indices into the visible list)."""

    def __init__(self, means2d, conics, opacities, depths, valid, width, height):
        valid = valid.numpy()
        self.box = _boxes(_np32(means2d), _np32(conics), _np32(opacities), valid, width, height)
        ids = np.flatnonzero(valid)  # only these need sorting
        depths = _np32(depths)
        if bool(np.all(depths[ids] > 0.0)):  # past the near plane, as projection leaves them
            order = _depth_order(ids, depths.view(np.uint32))
        else:
            order = ids[np.argsort(depths[ids], kind="stable")]
        workers = numba.get_num_threads()
        self.offsets, self.entries, self.slots, self.start = _bin_tiles(self.box, order, width, height, workers)
        self.width, self.height = width, height
        # where each tile's pairs go, and which thread runs which tiles (by that room, a cost proxy)
        self.room = _pair_capacity(self.offsets, self.entries, self.box, width, height)
        self.plan = _share_tiles(np.diff(self.room), workers)


class _Composite(torch.autograd.Function):
    """Front-to-back blending with the closed-form backward of ``render._Rasterize``, compiled."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, values, background, tiles: Tiles):
        arrays = (_np32(means2d), _np32(conics), _np32(opacities), _np32(values), _np32(background))
        out, t_final, *pairs = _forward(*arrays, tiles.offsets, tiles.entries, tiles.box, tiles.width, tiles.height,
                                        tiles.room, *tiles.plan)
        ctx.tiles = tiles
        ctx.arrays = arrays
        ctx.state = (t_final, *pairs)
        ctx.dtype = values.dtype
        out_t = torch.from_numpy(out).to(values.dtype)
        acc = torch.from_numpy(1.0 - t_final).to(values.dtype)
        return out_t, acc

    @staticmethod
    def backward(ctx, grad_out, grad_acc):
        tiles = ctx.tiles
        entry_grads = _backward(*ctx.arrays, tiles.offsets, tiles.entries, *ctx.state,
                                _np32(grad_out), _np32(grad_acc), tiles.width, tiles.height, *tiles.plan)
        grads = torch.from_numpy(_sum_per_gaussian(entry_grads, tiles.slots, tiles.start, ctx.arrays[0].shape[0]))
        grads = grads.to(ctx.dtype)
        return grads[:, 4:6], grads[:, 1:4], grads[:, 0], grads[:, 6:], None, None


def composite(means2d, conics, opacities, depths, valid, values, background, width: int, height: int):
    """Blend ``values`` (N,C) of the ``valid`` Gaussians: (out (H*W, C) with background, alpha (H*W,),
    the number of tile-Gaussian entries)."""
    tiles = Tiles(means2d, conics, opacities, depths, valid, width, height)
    out, acc = _Composite.apply(means2d, conics, opacities, values, background, tiles)
    return out, acc, int(tiles.entries.shape[0])


@torch.no_grad()
def weights(means2d, conics, opacities, depths, valid, width: int, height: int):
    """(pixel, Gaussian, weight) of every pair that blends, as torch tensors."""
    tiles = Tiles(means2d, conics, opacities, depths, valid, width, height)
    opacities = _np32(opacities)
    no_values = np.zeros((opacities.shape[0], 0), dtype=np.float32)  # the pairs are all that is wanted
    _, _, *pairs = _forward(_np32(means2d), _np32(conics), opacities, no_values, np.zeros(0, dtype=np.float32),
                            tiles.offsets, tiles.entries, tiles.box, width, height, tiles.room, *tiles.plan)
    pixel, gauss, weight = _replay_weights(opacities, tiles.offsets, tiles.entries, *pairs, width, height, *tiles.plan)
    return torch.from_numpy(pixel), torch.from_numpy(gauss), torch.from_numpy(weight)


def warm_up() -> float:
    """Compile (or load from the cache) every kernel on a tiny scene, and the fit's compiled
    SSIM (``ssim_cpu``); returns the seconds it took."""
    t0 = time.perf_counter()
    m = torch.tensor([[3.0, 3.0], [5.0, 4.0]])
    c = torch.tensor([[0.5, 0.0, 0.5], [0.3, 0.1, 0.4]])
    o = torch.tensor([0.8, 0.6])
    d = torch.tensor([1.0, 2.0])
    v = torch.rand(2, 4, requires_grad=True)
    valid = torch.ones(2, dtype=torch.bool)
    out, acc, _ = composite(m.requires_grad_(), c, o, d, valid, v, torch.zeros(4), 8, 8)
    (out.sum() + acc.sum()).backward()
    weights(m, c, o, d, valid, 8, 8)
    g = {"means": torch.tensor([[0.0, 0.0, 3.0]], requires_grad=True), "quats": torch.tensor([[1.0, 0, 0, 0]]),
         "scales": torch.full((1, 3), 0.1), "sh0": torch.zeros(1, 1, 3, requires_grad=True),
         "shN": torch.zeros(1, 15, 3, requires_grad=True)}
    viewmat, K = torch.eye(4), torch.tensor([[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]])
    _, means2d, depths, conics = project(g, viewmat, K, 8, 8)
    rgb = sh_colors(g["means"], g["sh0"], g["shN"], viewmat, 3)
    (means2d.sum() + depths.sum() + conics.sum() + rgb.sum()).backward()
    from .losses import ssim  # the colour fit's SSIM term is compiled too

    image = torch.rand(12, 12, 3, requires_grad=True)
    ssim(image, torch.rand(12, 12, 3), compiled=True).backward()
    return time.perf_counter() - t0


# --- projection and spherical harmonics, compiled ---------------------------------------------
# The same maths as gsplat's PyTorch reference (``_fully_fused_projection`` with a pinhole
# camera, eps2d 0.3, near plane 0.01; ``_spherical_harmonics``), with hand-written backward
# passes: autograd over ~30 small tensor ops per Gaussian cost more than the compositing.

EPS2D = 0.3
FAR_PLANE = 1e10


CHUNK = 1024  # Gaussians per parallel work item (SH scratch buffers are per chunk)


# Written out in scalars: 3x3 products through small arrays and views cost numba several
# times the arithmetic. With W = Rv Rq (camera from Gaussian axes), Mc = W diag(scale) and
# the Jacobian J, the 2D covariance J Rv Rq S S Rq^T Rv^T J^T is A A^T with A = J Mc (2x3).

@njit(cache=True)
def _unit_quat(quats, g):
    q0, q1, q2, q3 = float(quats[g, 0]), float(quats[g, 1]), float(quats[g, 2]), float(quats[g, 3])
    qn = max(math.sqrt(q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3), 1e-12)
    return q0 / qn, q1 / qn, q2 / qn, q3 / qn, qn


@njit(cache=True)
def _quat_to_rotmat(w, x, y, z, R):
    R[0, 0], R[0, 1], R[0, 2] = 1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)
    R[1, 0], R[1, 1], R[1, 2] = 2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)
    R[2, 0], R[2, 1], R[2, 2] = 2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)


@njit(cache=True)
def _gaussian_in_camera(means, quats, scales, g, Rv, tv, Rq, Mc):
    """Fills Rq (the Gaussian's rotation) and Mc (Rv Rq diag(scale)); returns the camera-space
    centre and the unit quaternion with its norm."""
    px = Rv[0, 0] * means[g, 0] + Rv[0, 1] * means[g, 1] + Rv[0, 2] * means[g, 2] + tv[0]
    py = Rv[1, 0] * means[g, 0] + Rv[1, 1] * means[g, 1] + Rv[1, 2] * means[g, 2] + tv[1]
    pz = Rv[2, 0] * means[g, 0] + Rv[2, 1] * means[g, 1] + Rv[2, 2] * means[g, 2] + tv[2]
    w, x, y, z, qn = _unit_quat(quats, g)
    _quat_to_rotmat(w, x, y, z, Rq)
    for i in range(3):
        for j in range(3):
            Mc[i, j] = (Rv[i, 0] * Rq[0, j] + Rv[i, 1] * Rq[1, j] + Rv[i, 2] * Rq[2, j]) * scales[g, j]
    return px, py, pz, w, x, y, z, qn


@njit(cache=True)
def _jacobian(px, py, pz, fx, fy, cx, cy, width, height):
    """gsplat's perspective Jacobian, x/z and y/z clamped to 1.3x the field of view: its entries
    (j00, j02, j11, j12; j01 = j10 = 0), the clamped tx, ty and whether each was left free."""
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    rx, ry = px / pz, py / pz
    x_free = -lim_x_neg <= rx <= lim_x_pos
    y_free = -lim_y_neg <= ry <= lim_y_pos
    tx = pz * min(max(rx, -lim_x_neg), lim_x_pos)
    ty = pz * min(max(ry, -lim_y_neg), lim_y_pos)
    return fx / pz, -fx * tx / (pz * pz), fy / pz, -fy * ty / (pz * pz), tx, ty, x_free, y_free


@njit(cache=True)
def _screen_covariance(j00, j02, j11, j12, Mc, A):
    """Fills A = J Mc (2x3); returns the 2D covariance (c00, c01, c11) with eps2d added."""
    for j in range(3):
        A[0, j] = j00 * Mc[0, j] + j02 * Mc[2, j]
        A[1, j] = j11 * Mc[1, j] + j12 * Mc[2, j]
    c00 = A[0, 0] * A[0, 0] + A[0, 1] * A[0, 1] + A[0, 2] * A[0, 2] + EPS2D
    c01 = A[0, 0] * A[1, 0] + A[0, 1] * A[1, 1] + A[0, 2] * A[1, 2]
    c11 = A[1, 0] * A[1, 0] + A[1, 1] * A[1, 1] + A[1, 2] * A[1, 2] + EPS2D
    return c00, c01, c11


@njit(cache=True, parallel=True)
def _project_forward(means, quats, scales, viewmat, K, width, height, near):
    """(means2d (N,2), conics (N,3), depths (N,), radii (N,2) int32), as gsplat's reference;
    Gaussians nearer than ``near`` (the camera's near plane) get radius 0."""
    n = means.shape[0]
    Rv = viewmat[:3, :3].astype(np.float64)
    tv = viewmat[:3, 3].astype(np.float64)
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    k01, k10 = float(K[0, 1]), float(K[1, 0])
    means2d = np.zeros((n, 2), dtype=np.float32)
    conics = np.zeros((n, 3), dtype=np.float32)
    depths = np.zeros(n, dtype=np.float32)
    radii = np.zeros((n, 2), dtype=np.int32)
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        Rq = np.empty((3, 3))
        Mc = np.empty((3, 3))
        A = np.empty((2, 3))
        for g in range(chunk * CHUNK, min(n, (chunk + 1) * CHUNK)):
            px, py, pz, _, _, _, _, _ = _gaussian_in_camera(means, quats, scales, g, Rv, tv, Rq, Mc)
            j00, j02, j11, j12, _, _, _, _ = _jacobian(px, py, pz, fx, fy, cx, cy, width, height)
            c00, c01, c11 = _screen_covariance(j00, j02, j11, j12, Mc, A)
            det = max(c00 * c11 - c01 * c01, 1e-10)
            u = (fx * px + k01 * py) / pz + cx
            v = (k10 * px + fy * py) / pz + cy
            means2d[g, 0], means2d[g, 1] = u, v
            conics[g, 0], conics[g, 1], conics[g, 2] = c11 / det, -c01 / det, c00 / det
            depths[g] = pz
            if not (pz > near and pz < FAR_PLANE):
                continue
            r_x = math.ceil(3.33 * math.sqrt(c00))
            r_y = math.ceil(3.33 * math.sqrt(c11))
            if u + r_x > 0 and u - r_x < width and v + r_y > 0 and v - r_y < height:
                radii[g, 0], radii[g, 1] = r_x, r_y
    return means2d, conics, depths, radii


@njit(cache=True, parallel=True)
def _project_backward(means, quats, scales, viewmat, K, width, height, g_means2d, g_conics, g_depths):
    """Gradients of the means (N,3), raw quaternions (N,4) and scales (N,3)."""
    n = means.shape[0]
    Rv = viewmat[:3, :3].astype(np.float64)
    tv = viewmat[:3, 3].astype(np.float64)
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    k01, k10 = float(K[0, 1]), float(K[1, 0])
    d_means = np.zeros((n, 3), dtype=np.float32)
    d_quats = np.zeros((n, 4), dtype=np.float32)
    d_scales = np.zeros((n, 3), dtype=np.float32)
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        Rq = np.empty((3, 3))
        Mc = np.empty((3, 3))
        A = np.empty((2, 3))
        dA = np.empty((2, 3))
        dMc = np.empty((3, 3))
        dR = np.empty((3, 3))
        for g in range(chunk * CHUNK, min(n, (chunk + 1) * CHUNK)):
            gu, gv = g_means2d[g, 0], g_means2d[g, 1]
            ga, gb, gc = g_conics[g, 0], g_conics[g, 1], g_conics[g, 2]
            if gu == 0 and gv == 0 and ga == 0 and gb == 0 and gc == 0 and g_depths[g] == 0:
                continue
            px, py, pz, w, x, y, z, qn = _gaussian_in_camera(means, quats, scales, g, Rv, tv, Rq, Mc)
            j00, j02, j11, j12, tx, ty, x_free, y_free = _jacobian(px, py, pz, fx, fy, cx, cy, width, height)
            c00, c01, c11 = _screen_covariance(j00, j02, j11, j12, Mc, A)
            det_raw = c00 * c11 - c01 * c01
            det = max(det_raw, 1e-10)
            # conic (c11, -c01, c00) / det  ->  the 2D covariance (G symmetric, G01 = G10)
            g_det = -(ga * c11 - gb * c01 + gc * c00) / (det * det) if det_raw > 1e-10 else 0.0
            G00 = gc / det + g_det * c11
            G11 = ga / det + g_det * c00
            G01 = 0.5 * (-gb / det - 2.0 * g_det * c01)
            # C = A A^T  ->  dA = 2 G A
            for j in range(3):
                dA[0, j] = 2.0 * (G00 * A[0, j] + G01 * A[1, j])
                dA[1, j] = 2.0 * (G01 * A[0, j] + G11 * A[1, j])
            # A = J Mc  ->  J (dA Mc^T, its four free entries) and Mc (J^T dA)
            g_j00 = dA[0, 0] * Mc[0, 0] + dA[0, 1] * Mc[0, 1] + dA[0, 2] * Mc[0, 2]
            g_j02 = dA[0, 0] * Mc[2, 0] + dA[0, 1] * Mc[2, 1] + dA[0, 2] * Mc[2, 2]
            g_j11 = dA[1, 0] * Mc[1, 0] + dA[1, 1] * Mc[1, 1] + dA[1, 2] * Mc[1, 2]
            g_j12 = dA[1, 0] * Mc[2, 0] + dA[1, 1] * Mc[2, 1] + dA[1, 2] * Mc[2, 2]
            for j in range(3):
                dMc[0, j] = j00 * dA[0, j]
                dMc[1, j] = j11 * dA[1, j]
                dMc[2, j] = j02 * dA[0, j] + j12 * dA[1, j]
            # J -> camera-space position
            iz2 = 1.0 / (pz * pz)
            d_pz = -(g_j00 * fx + g_j11 * fy) * iz2 + 2.0 * (g_j02 * fx * tx + g_j12 * fy * ty) * iz2 / pz
            d_tx = -g_j02 * fx * iz2
            d_ty = -g_j12 * fy * iz2
            d_px, d_py = 0.0, 0.0
            if x_free:
                d_px += d_tx
            else:
                d_pz += d_tx * tx / pz
            if y_free:
                d_py += d_ty
            else:
                d_pz += d_ty * ty / pz
            # projected mean and depth
            d_px += (gu * fx + gv * k10) / pz
            d_py += (gu * k01 + gv * fy) / pz
            d_pz += -(gu * (fx * px + k01 * py) + gv * (k10 * px + fy * py)) * iz2 + g_depths[g]
            for j in range(3):  # Rv^T d_pc
                d_means[g, j] = Rv[0, j] * d_px + Rv[1, j] * d_py + Rv[2, j] * d_pz
            # Mc = Rv Rq diag(scale)  ->  scale, and Rq (through Rv^T dMc)
            for j in range(3):
                sj = scales[g, j]
                acc = 0.0
                for i in range(3):
                    dRs = Rv[0, i] * dMc[0, j] + Rv[1, i] * dMc[1, j] + Rv[2, i] * dMc[2, j]  # (Rv^T dMc)_ij
                    acc += dRs * Rq[i, j]
                    dR[i, j] = dRs * sj
                d_scales[g, j] = acc
            dw = 2 * (-z * dR[0, 1] + y * dR[0, 2] + z * dR[1, 0] - x * dR[1, 2] - y * dR[2, 0] + x * dR[2, 1])
            dx = 2 * (y * dR[0, 1] + z * dR[0, 2] + y * dR[1, 0] - 2 * x * dR[1, 1] - w * dR[1, 2]
                      + z * dR[2, 0] + w * dR[2, 1] - 2 * x * dR[2, 2])
            dy = 2 * (-2 * y * dR[0, 0] + x * dR[0, 1] + w * dR[0, 2] + x * dR[1, 0] + z * dR[1, 2]
                      - w * dR[2, 0] + z * dR[2, 1] - 2 * y * dR[2, 2])
            dz = 2 * (-2 * z * dR[0, 0] - w * dR[0, 1] + x * dR[0, 2] + w * dR[1, 0] - 2 * z * dR[1, 1]
                      + y * dR[1, 2] + x * dR[2, 0] + y * dR[2, 1])
            # through the normalisation q / |q|
            dot = dw * w + dx * x + dy * y + dz * z
            d_quats[g, 0] = (dw - w * dot) / qn
            d_quats[g, 1] = (dx - x * dot) / qn
            d_quats[g, 2] = (dy - y * dot) / qn
            d_quats[g, 3] = (dz - z * dot) / qn
    return d_means, d_quats, d_scales


@njit(cache=True)
def _sh_basis(n_bases, x, y, z, B, dB):
    """Real SH basis at the unit direction (gsplat's ordering and constants), and its partials."""
    B[0] = 0.2820947917738781
    dB[0, :] = 0.0
    if n_bases <= 1:
        return
    A1 = -0.48860251190292
    B[1], B[2], B[3] = A1 * y, -A1 * z, A1 * x
    dB[1, 0], dB[1, 1], dB[1, 2] = 0.0, A1, 0.0
    dB[2, 0], dB[2, 1], dB[2, 2] = 0.0, 0.0, -A1
    dB[3, 0], dB[3, 1], dB[3, 2] = A1, 0.0, 0.0
    if n_bases <= 4:
        return
    z2 = z * z
    b2 = -1.092548430592079
    a2 = 0.5462742152960395
    c1, s1 = x * x - y * y, 2 * x * y
    B[4], B[5], B[6], B[7], B[8] = a2 * s1, b2 * z * y, 0.9461746957575601 * z2 - 0.3153915652525201, b2 * z * x, a2 * c1
    dB[4, 0], dB[4, 1], dB[4, 2] = 2 * a2 * y, 2 * a2 * x, 0.0
    dB[5, 0], dB[5, 1], dB[5, 2] = 0.0, b2 * z, b2 * y
    dB[6, 0], dB[6, 1], dB[6, 2] = 0.0, 0.0, 2 * 0.9461746957575601 * z
    dB[7, 0], dB[7, 1], dB[7, 2] = b2 * z, 0.0, b2 * x
    dB[8, 0], dB[8, 1], dB[8, 2] = 2 * a2 * x, -2 * a2 * y, 0.0
    if n_bases <= 9:
        return
    tc = -2.285228997322329 * z2 + 0.4570457994644658
    b3 = 1.445305721320277
    a3 = -0.5900435899266435
    c2, s2 = x * c1 - y * s1, x * s1 + y * c1
    B[9], B[10], B[11], B[12] = a3 * s2, b3 * z * s1, tc * y, z * (1.865881662950577 * z2 - 1.119528997770346)
    B[13], B[14], B[15] = tc * x, b3 * z * c1, a3 * c2
    dB[9, 0], dB[9, 1], dB[9, 2] = a3 * 6 * x * y, a3 * 3 * (x * x - y * y), 0.0
    dB[10, 0], dB[10, 1], dB[10, 2] = b3 * z * 2 * y, b3 * z * 2 * x, b3 * s1
    dB[11, 0], dB[11, 1], dB[11, 2] = 0.0, tc, -2 * 2.285228997322329 * z * y
    dB[12, 0], dB[12, 1], dB[12, 2] = 0.0, 0.0, 3 * 1.865881662950577 * z2 - 1.119528997770346
    dB[13, 0], dB[13, 1], dB[13, 2] = tc, 0.0, -2 * 2.285228997322329 * z * x
    dB[14, 0], dB[14, 1], dB[14, 2] = b3 * z * 2 * x, -b3 * z * 2 * y, b3 * c1
    dB[15, 0], dB[15, 1], dB[15, 2] = a3 * 3 * (x * x - y * y), -a3 * 6 * x * y, 0.0


@njit(cache=True, parallel=True)
def _sh_forward(means, campos, sh0, shN, n_bases):
    """Colour max(SH(view direction) + 0.5, 0) of every Gaussian (N,3); the coefficients as the
    fit keeps them, band 0 (N,1,3) and the rest (N,K-1,3), so no (N,K,3) copy is made per step."""
    n = means.shape[0]
    rgb = np.empty((n, 3), dtype=np.float32)
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        B = np.empty(16)  # per chunk: an allocation per Gaussian would cost more than its maths
        dB = np.empty((16, 3))
        for g in range(chunk * CHUNK, min(n, (chunk + 1) * CHUNK)):
            d0, d1, d2 = means[g, 0] - campos[0], means[g, 1] - campos[1], means[g, 2] - campos[2]
            norm = max(math.sqrt(d0 * d0 + d1 * d1 + d2 * d2), 1e-12)
            _sh_basis(n_bases, d0 / norm, d1 / norm, d2 / norm, B, dB)
            for c in range(3):
                s = B[0] * sh0[g, 0, c]
                for k in range(1, n_bases):
                    s += B[k] * shN[g, k - 1, c]
                rgb[g, c] = max(s + 0.5, 0.0)
    return rgb


@njit(cache=True, parallel=True)
def _sh_backward(means, campos, sh0, shN, n_bases, rgb, g_rgb):
    """Gradients of the means (N,3) (through the view direction) and of both coefficient
    arrays (the bands past ``n_bases`` get zero). Each output row is written once, and band 0
    is taken out of the band loop (its basis is a constant: nothing flows to the means)."""
    n = means.shape[0]
    n_rest = shN.shape[1]
    d_means = np.empty((n, 3), dtype=np.float32)
    d_sh0 = np.empty(sh0.shape, dtype=np.float32)
    d_shN = np.empty(shN.shape, dtype=np.float32)
    for chunk in prange((n + CHUNK - 1) // CHUNK):
        B = np.empty(16)
        dB = np.empty((16, 3))
        for g in range(chunk * CHUNK, min(n, (chunk + 1) * CHUNK)):
            # the clamp at 0
            g0 = g_rgb[g, 0] if rgb[g, 0] > 0.0 else 0.0
            g1 = g_rgb[g, 1] if rgb[g, 1] > 0.0 else 0.0
            g2 = g_rgb[g, 2] if rgb[g, 2] > 0.0 else 0.0
            if g0 == 0.0 and g1 == 0.0 and g2 == 0.0:  # not seen, or clamped: nothing flows back
                d_means[g, 0] = d_means[g, 1] = d_means[g, 2] = 0.0
                d_sh0[g, 0, 0] = d_sh0[g, 0, 1] = d_sh0[g, 0, 2] = 0.0
                for k in range(n_rest):
                    d_shN[g, k, 0] = d_shN[g, k, 1] = d_shN[g, k, 2] = 0.0
                continue
            d0, d1, d2 = means[g, 0] - campos[0], means[g, 1] - campos[1], means[g, 2] - campos[2]
            norm = max(math.sqrt(d0 * d0 + d1 * d1 + d2 * d2), 1e-12)
            x, y, z = d0 / norm, d1 / norm, d2 / norm
            _sh_basis(n_bases, x, y, z, B, dB)
            d_sh0[g, 0, 0], d_sh0[g, 0, 1], d_sh0[g, 0, 2] = B[0] * g0, B[0] * g1, B[0] * g2
            dn0 = dn1 = dn2 = 0.0
            for k in range(1, n_bases):
                b = B[k]
                d_shN[g, k - 1, 0], d_shN[g, k - 1, 1], d_shN[g, k - 1, 2] = b * g0, b * g1, b * g2
                s = shN[g, k - 1, 0] * g0 + shN[g, k - 1, 1] * g1 + shN[g, k - 1, 2] * g2
                dn0 += s * dB[k, 0]
                dn1 += s * dB[k, 1]
                dn2 += s * dB[k, 2]
            for k in range(max(n_bases - 1, 0), n_rest):
                d_shN[g, k, 0] = d_shN[g, k, 1] = d_shN[g, k, 2] = 0.0
            dot = dn0 * x + dn1 * y + dn2 * z
            d_means[g, 0] = (dn0 - x * dot) / norm
            d_means[g, 1] = (dn1 - y * dot) / norm
            d_means[g, 2] = (dn2 - z * dot) / norm
    return d_means, d_sh0, d_shN


class _Project(torch.autograd.Function):
    """means (N,3), quats (N,4), scales (N,3) -> means2d (N,2), conics (N,3), depths (N,); radii aside."""

    @staticmethod
    def forward(ctx, means, quats, scales, viewmat, K, width, height, near):
        arrays = (_np32(means), _np32(quats), _np32(scales), _np32(viewmat), _np32(K))
        means2d, conics, depths, radii = _project_forward(*arrays, width, height, float(near))
        ctx.arrays, ctx.size, ctx.dtype = arrays, (width, height), means.dtype
        radii = torch.from_numpy(radii)
        ctx.mark_non_differentiable(radii)
        return tuple(torch.from_numpy(a).to(means.dtype) for a in (means2d, conics, depths)) + (radii,)

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_depths, _g_radii):
        grads = _project_backward(*ctx.arrays, *ctx.size, _np32(g_means2d), _np32(g_conics), _np32(g_depths))
        return tuple(torch.from_numpy(a).to(ctx.dtype) for a in grads) + (None, None, None, None, None)


class _SphericalHarmonics(torch.autograd.Function):
    """means (N,3), SH band 0 (N,1,3) and the rest (N,K-1,3) -> colour (N,3) seen from ``campos``,
    bands up to ``n_bases``."""

    @staticmethod
    def forward(ctx, means, sh0, shN, campos, n_bases):
        arrays = (_np32(means), _np32(campos), _np32(sh0), _np32(shN))
        rgb = _sh_forward(*arrays, n_bases)
        ctx.arrays, ctx.n_bases, ctx.rgb, ctx.dtype = arrays, n_bases, rgb, means.dtype
        return torch.from_numpy(rgb).to(means.dtype)

    @staticmethod
    def backward(ctx, g_rgb):
        d_means, d_sh0, d_shN = _sh_backward(*ctx.arrays, ctx.n_bases, ctx.rgb, _np32(g_rgb))
        d_shN = torch.from_numpy(d_shN).to(ctx.dtype) if ctx.n_bases > 1 else None  # band 0 only: none
        return torch.from_numpy(d_means).to(ctx.dtype), torch.from_numpy(d_sh0).to(ctx.dtype), d_shN, None, None


def project(g: dict[str, torch.Tensor], viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int,
            near: float = DEFAULT_NEAR):
    """Compiled ``render.project``: radii (N,2) int32, means2d (N,2), depths (N,), conics (N,3)."""
    means2d, conics, depths, radii = _Project.apply(g["means"], g["quats"], g["scales"], viewmat, K, width, height,
                                                    near)
    return radii, means2d, depths, conics


def sh_colors(means, sh0, shN, viewmat, degree: int):
    """Colour of every Gaussian seen from the camera, from SH band 0 (N,1,3) and the rest (N,K-1,3)."""
    campos = torch.linalg.inv(viewmat.detach())[:3, 3]
    return _SphericalHarmonics.apply(means, sh0, shN, campos, (degree + 1) ** 2)


def threading_layer() -> str:
    """The threading layer numba runs its parallel loops on (after the first parallel call)."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # nothing has run in parallel yet
        return "not started"
