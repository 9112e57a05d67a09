"""Selection: the top-k offers by score, with a deterministic tie-break.

Order: higher score first; equal scores by lower offer index first (the catalog sorts
offers by id, so ties resolve by offer id). Offers with score -inf (ineligible) are
never selected, so fewer than ``k`` may come back.

Cost: one pass over the scores with a sorted buffer of size k: O(n) typical,
O(n k) worst case; k is small (<= the server's max offers).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def top_k(scores, k):
    """int32 indices of the best ``k`` finite-or-+inf scores, best first."""
    if k <= 0:
        return np.empty(0, dtype=np.int32)
    best = np.empty(k, dtype=np.int32)
    best_score = np.empty(k, dtype=np.float64)
    size = 0
    for i in range(scores.shape[0]):
        s = scores[i]
        if s == -np.inf or s != s:
            continue
        if size == k and s <= best_score[k - 1]:
            continue
        pos = size if size < k else k - 1
        # shift strictly smaller scores down; an equal earlier index stays ahead
        while pos > 0 and best_score[pos - 1] < s:
            if pos < k:
                best[pos] = best[pos - 1]
                best_score[pos] = best_score[pos - 1]
            pos -= 1
        best[pos] = i
        best_score[pos] = s
        if size < k:
            size += 1
    return best[:size].copy()


def top_k_reference(scores, k):
    idx = [i for i in range(len(scores)) if scores[i] != -np.inf and not np.isnan(scores[i])]
    idx.sort(key=lambda i: (-scores[i], i))
    return np.asarray(idx[:k], dtype=np.int32)
