"""The mask field's sparse blending matrices built on the CPU by counting sorts (numba).

A view's frozen weights arrive as (pixel, Gaussian, weight) pairs, each pair once, grouped by
pixel. Building the CSR matrices through PyTorch's COO ``coalesce`` (a general sort, plus
summing duplicates there are none of) took most of the mask field's preparation: four
coalesces per view. Here the rows are counted and filled in one pass each, and the transpose
comes out with its columns in order because it is filled row by row. ``data.py`` keeps the
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


@njit(cache=True)
def _transpose(crow, col, val, n_cols):
    """The transpose of a CSR matrix, as CSR arrays; filled row by row, so each of its rows
    lists the original rows in ascending order."""
    n_rows = crow.shape[0] - 1
    crow_t = np.zeros(n_cols + 1, dtype=np.int64)
    for a in range(col.shape[0]):
        crow_t[col[a] + 1] += 1
    for c in range(n_cols):
        crow_t[c + 1] += crow_t[c]
    fill = crow_t[:-1].copy()
    col_t = np.empty(col.shape[0], dtype=np.int64)
    val_t = np.empty(col.shape[0], dtype=val.dtype)
    for r in range(n_rows):
        for a in range(crow[r], crow[r + 1]):
            at = fill[col[a]]
            col_t[at] = r
            val_t[at] = val[a]
            fill[col[a]] += 1
    return crow_t, col_t, val_t


@njit(cache=True)
def _keep_rows(crow, col, val, keep):
    """The rows where ``keep`` is true, renumbered in order, as CSR arrays."""
    n_rows = crow.shape[0] - 1
    count = 0
    kept = 0
    for r in range(n_rows):
        if keep[r]:
            count += crow[r + 1] - crow[r]
            kept += 1
    crow_k = np.zeros(kept + 1, dtype=np.int64)
    col_k = np.empty(count, dtype=np.int64)
    val_k = np.empty(count, dtype=val.dtype)
    k = 0
    at = 0
    for r in range(n_rows):
        if not keep[r]:
            continue
        for a in range(crow[r], crow[r + 1]):
            col_k[at] = col[a]
            val_k[at] = val[a]
            at += 1
        k += 1
        crow_k[k] = at
    return crow_k, col_k, val_k


def csr_from_pairs(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int):
    """CSR arrays of the (n_rows x any) matrix with ``values`` at the unique (row, col) pairs."""
    return _by_rows(np.ascontiguousarray(rows, dtype=np.int64), np.ascontiguousarray(cols, dtype=np.int64),
                    np.ascontiguousarray(values), int(n_rows))


def csr_transpose(crow: np.ndarray, col: np.ndarray, val: np.ndarray, n_cols: int):
    return _transpose(crow, col, val, int(n_cols))


def csr_keep_rows(crow: np.ndarray, col: np.ndarray, val: np.ndarray, keep: np.ndarray):
    return _keep_rows(crow, col, val, np.ascontiguousarray(keep, dtype=np.bool_))
