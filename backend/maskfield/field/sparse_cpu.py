"""The mask field's sparse blending matrices built on the CPU by counting sorts (numba).

A view's frozen weights arrive as (pixel, Gaussian, weight) pairs, each pair once, grouped by
pixel. Building the CSR matrices through PyTorch's COO ``coalesce`` (a general sort, plus
summing duplicates there are none of) took most of the mask field's preparation: four
coalesces per view. Here the rows are counted and filled in one pass each (a counting sort);
the transpose is the same sort over the swapped pairs. ``data.py`` keeps the
coalesce path for other devices; tests hold the two together.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _by_rows(rows, cols, values, n_rows):
    """CSR arrays (crow, col, value) of unique (row, col) pairs in any order; the columns
    of each row ascending."""
    n = rows.shape[0]
    crow = np.zeros(n_rows + 1, dtype=np.int64)
    for i in range(n):
        crow[rows[i] + 1] += 1
    for r in range(n_rows):
        crow[r + 1] += crow[r]
    fill = crow[:-1].copy()
    col = np.empty(n, dtype=np.int64)
    val = np.empty(n, dtype=values.dtype)
    for i in range(n):
        at = fill[rows[i]]
        col[at] = cols[i]
        val[at] = values[i]
        fill[rows[i]] += 1
    for r in range(n_rows):  # a pixel holds tens of Gaussians: insertion sort
        for a in range(crow[r] + 1, crow[r + 1]):
            c, v = col[a], val[a]
            b = a - 1
            while b >= crow[r] and col[b] > c:
                col[b + 1] = col[b]
                val[b + 1] = val[b]
                b -= 1
            col[b + 1] = c
            val[b + 1] = v
    return crow, col, val


def csr_from_pairs(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int):
    """CSR arrays of the (n_rows x any) matrix with ``values`` at the unique (row, col) pairs."""
    return _by_rows(np.ascontiguousarray(rows, dtype=np.int64), np.ascontiguousarray(cols, dtype=np.int64),
                    np.ascontiguousarray(values), int(n_rows))


def csr_transpose(crow: np.ndarray, col: np.ndarray, val: np.ndarray, n_cols: int):
    """The transpose as CSR arrays: the same counting sort over the swapped pairs. Read row by
    row, each column's rows arrive in ascending order, so the per-row sort only checks them."""
    rows = np.repeat(np.arange(len(crow) - 1, dtype=np.int64), np.diff(crow))
    return _by_rows(col, rows, val, int(n_cols))


def csr_keep_rows(crow: np.ndarray, col: np.ndarray, val: np.ndarray, keep: np.ndarray):
    """The rows where ``keep`` is true, renumbered in order, as CSR arrays."""
    keep = np.asarray(keep, dtype=bool)
    lengths = np.diff(crow)
    entries = np.repeat(keep, lengths)
    crow_k = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(lengths[keep], out=crow_k[1:])
    return crow_k, col[entries], val[entries]
