"""The statistics the model measurement reports, kept free of torch so they can be tested
(and reused) without the train extra: AUROC of confidence as a correctness score, and the
plain majority answer of a trace set.

    auroc(conf_of_correct, conf_of_wrong)   # 0.5: confidence says nothing; 1.0: it separates
    majority([3, 3, None, 5])               # 3
"""

from __future__ import annotations

from collections import Counter

import numpy as np


def auroc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """P(score of a random positive > a random negative), ties counted half (Mann-Whitney).

    None when either class is empty (AUROC is undefined then).
    """
    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    if pos.size == 0 or neg.size == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def majority(answers: list[int | None]) -> int | None:
    counts = Counter(a for a in answers if a is not None)
    return counts.most_common(1)[0][0] if counts else None
