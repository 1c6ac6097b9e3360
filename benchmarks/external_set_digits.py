"""Write a distilled set made outside ddbench, to try ``--methods file:PATH`` on digits.

Herding (Welling 2009) on the training split of scikit-learn's 8x8 digits (ddbench's split:
stratified 70/30, seed 0; the test split is never seen): per class, greedily the images whose
running mean stays closest to the class mean, in pixel space [0, 1]; soft labels are a
logistic regression's class probabilities on them (a teacher, as SRe2L/RDED relabel).
Saved as .npz (images N x 1 x 8 x 8, soft labels N x 10, no hard labels): the format a
third party would release.

    python benchmarks/external_set_digits.py --ipc 5 --out herding-soft.npz
    ddbench run --methods random,dm,file:herding-soft.npz --datasets digits --ipc 5 \
        --set eval.labels=hard,soft,teacher --scores
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split


def herding(x: np.ndarray, k: int) -> list[int]:
    mu, chosen, total = x.mean(0), [], np.zeros_like(x[0])
    for i in range(k):
        gaps = np.linalg.norm(mu - (total + x) / (i + 1), axis=1)
        gaps[chosen] = np.inf
        best = int(gaps.argmin())
        chosen.append(best)
        total += x[best]
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ipc", type=int, default=5)
    ap.add_argument("--out", default="herding-soft.npz")
    args = ap.parse_args()
    digits = load_digits()
    train, _ = train_test_split(np.arange(len(digits.target)), test_size=0.3, stratify=digits.target,
                                random_state=0)  # ddbench's digits split (ddbench.builtins.datasets.digits)
    train = np.sort(train)
    x = digits.images[train].round().astype(np.float32) / 16.0  # pixels in [0, 1]
    y = digits.target[train]
    flat = x.reshape(len(x), -1)
    teacher = LogisticRegression(max_iter=2000).fit(flat, y)
    idx = np.concatenate([np.flatnonzero(y == c)[herding(flat[y == c], args.ipc)] for c in range(10)])
    soft = teacher.predict_proba(flat[idx]).astype(np.float32)
    np.savez(args.out, images=x[idx][:, None], labels=soft)
    print(f"wrote {args.out}: {len(idx)} images, soft labels from a logistic regression "
          f"(train accuracy {teacher.score(flat, y):.3f})")


if __name__ == "__main__":
    main()
