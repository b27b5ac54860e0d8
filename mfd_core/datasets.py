"""Small bundled data and the ways of spreading it over nodes.

Everything here is numpy and index arrays: a split says *which* samples a node holds,
so the samples themselves never need copying between nodes (the model follows the data).
"""
from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Dataset", "load_digits", "dirichlet_split", "train_val_test_split", "class_counts"]


@dataclass(frozen=True)
class Dataset:
    """Inputs and labels of a classification data set.

    :param inputs: ``float32`` array of shape ``(n, features)``, flat so that every model
        family (MLP, CNN) takes the same rows.
    :param labels: ``int64`` array of shape ``(n,)``.
    :param image_shape: ``(channels, height, width)`` the flat rows reshape to.
    :param num_classes: number of classes.
    """

    inputs: np.ndarray
    labels: np.ndarray
    image_shape: tuple[int, int, int]
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 samples, 10 classes).

    Shipped inside scikit-learn, so the default scenario needs no download. Pixels
    (0..16 in the source) are scaled to ``[0, 1]``.

    The file is read where scikit-learn keeps it, as its own ``load_digits`` reads it
    (``np.loadtxt`` of the gzipped CSV: 64 pixel columns, then the label), but without
    importing scikit-learn, whose import (and the SciPy parts it pulls in) cost 0.9 s of
    CPU, as much as torch's, before a small run's first step. Where that file is not
    found, scikit-learn's loader is used.
    """
    path = _sklearn_digits_file()
    if path is None:
        from sklearn.datasets import load_digits as _sk_load_digits

        raw = _sk_load_digits()
        pixels, target = raw.data, raw.target
    else:
        with gzip.open(path, mode="rt", encoding="utf-8") as f:
            table = np.loadtxt(f, delimiter=",")
        pixels, target = table[:, :-1], table[:, -1]
    inputs = (np.asarray(pixels, dtype=np.float32) / 16.0).astype(np.float32)
    labels = np.asarray(target, dtype=np.int64)
    return Dataset(inputs=inputs, labels=labels, image_shape=(1, 8, 8), num_classes=10)


def _sklearn_digits_file() -> Path | None:
    """``sklearn/datasets/data/digits.csv.gz``, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")  # a top-level package: found, not run
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def dirichlet_split(
    labels: np.ndarray,
    num_nodes: int,
    alpha: float,
    seed: int,
    min_per_node: int = 5,
) -> list[np.ndarray]:
    """Split sample indices over nodes with non-IID class shares (Hsu et al. 2019).

    Each node ``k`` draws its class distribution ``q_k ~ Dir(alpha * C * p)``, ``p``
    being the class frequencies of ``labels`` and ``C`` the number of classes: with
    balanced classes that is ``alpha`` per class, the convention of the FL literature
    and of Flower's ``DirichletPartitioner`` ("Dirichlet(0.3)" leaves a node a few
    dominant classes). As ``alpha -> 0`` a node holds one class, as ``alpha -> inf``
    every node matches ``p``. Nodes hold equal numbers of samples (the first
    ``len(labels) % num_nodes`` nodes one more), as in Hsu et al.

    Finite data: samples are dealt round-robin, one per node per round, each from the
    node's ``q_k`` renormalised over the classes not yet used up, so running out of a
    class costs every node alike rather than the last ones.

    :param labels: integer class label per sample.
    :param num_nodes: number of parts.
    :param alpha: Dirichlet concentration, ``> 0``.
    :param seed: seed of the split (same seed, same split).
    :param min_per_node: smallest part allowed; a ``ValueError`` says when there are too
        few samples for it.
    :return: one sorted ``int64`` index array per node; together they cover every index
        exactly once.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if n // num_nodes < min_per_node:
        raise ValueError(
            f"{n} samples over {num_nodes} nodes gives {n // num_nodes} per node, "
            f"fewer than min_per_node={min_per_node}"
        )
    rng = np.random.default_rng(seed)
    classes, inverse = np.unique(labels, return_inverse=True)
    pools = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    left = np.array([len(p) for p in pools], dtype=np.int64)
    prior = left / n
    # Dir(alpha * p) with tiny entries underflows to all-zero rows in float64; a floor
    # keeps every row a distribution without changing its character.
    q = rng.dirichlet(np.maximum(alpha * len(classes) * prior, 1e-3), size=num_nodes)
    sizes = np.full(num_nodes, n // num_nodes)
    sizes[: n % num_nodes] += 1
    taken = np.zeros(len(classes), dtype=np.int64)
    parts: list[list[int]] = [[] for _ in range(num_nodes)]
    for rnd in range(int(sizes.max())):
        for k in np.flatnonzero(sizes > rnd):
            w = q[k] * (left > 0)
            total = w.sum()
            if total <= 0:  # every class this node likes is used up: take what is left
                w, total = (left > 0).astype(np.float64), float((left > 0).sum())
            c = int(np.searchsorted(np.cumsum(w), rng.random() * total, side="right"))
            c = min(c, len(classes) - 1)
            while left[c] == 0:  # guards the float edge of searchsorted
                c = (c + 1) % len(classes)
            parts[k].append(int(pools[c][taken[c]]))
            taken[c] += 1
            left[c] -= 1
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def class_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int | None = None) -> np.ndarray:
    """Samples of each class per part: a ``(len(parts), num_classes)`` ``int64`` array.

    :param labels: integer class label per sample.
    :param parts: index arrays, e.g. from :func:`dirichlet_split`.
    :param num_classes: number of columns; default ``labels.max() + 1``.
    """
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def train_val_test_split(
    indices: np.ndarray | int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle and cut indices into train, validation and test parts.

    A non-zero fraction always gets at least one sample (a node's gate needs some
    validation data) as long as one is left for training.

    :param indices: index array, or ``n`` for ``range(n)``.
    :param val_fraction: share for validation.
    :param test_fraction: share for test (0 for a node's own train/val split).
    :param seed: seed of the shuffle.
    :return: ``(train, val, test)`` sorted ``int64`` index arrays.
    """
    idx = np.arange(indices) if isinstance(indices, (int, np.integer)) else np.asarray(indices, dtype=np.int64)
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"need 0 <= fractions and val+test < 1, got {val_fraction}, {test_fraction}")
    n = len(idx)
    perm = np.random.default_rng(seed).permutation(idx)

    def _count(fraction: float) -> int:
        return max(1, round(n * fraction)) if fraction > 0 and n >= 3 else round(n * fraction)

    n_val, n_test = _count(val_fraction), _count(test_fraction)
    if n - n_val - n_test < 1:
        raise ValueError(f"{n} samples leave none for training")
    val, test, train = perm[:n_val], perm[n_val : n_val + n_test], perm[n_val + n_test :]
    return np.sort(train), np.sort(val), np.sort(test)
