"""Small pieces shared by the dataset readers: the `Split` (x, y) pair, where data lives, seeded validation splits.

Every image loader in `minidni.data` returns splits as `Split(x, y)` so a trainer can write `x, y = ds.train`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

DATA_ENV_VAR = "MINIDNI_DATA"


@dataclass(frozen=True)
class Split:
    """One split of a labelled dataset: inputs `x` (N, ...) and integer labels `y` (N,).

    `x, y = split` unpacks it; `len(split)` is N, the number of examples.
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"Split: x has {len(self.x)} examples but y has {len(self.y)}; they must match")

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.x, self.y))

    def __len__(self) -> int:
        return int(self.y.shape[0])


def env_data_root() -> Path | None:
    """The folder named by $MINIDNI_DATA, or None when the variable is unset or empty."""
    value = os.environ.get(DATA_ENV_VAR, "").strip()
    return Path(value).expanduser() if value else None


def split_off_validation(n: int, validation: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) that move `validation` seeded-random examples out of a training set of size `n`.

    Both index arrays are sorted, so `validation=0` returns the training set in its original file order and the
    split only depends on (n, validation, seed).
    """
    if not 0 <= validation < n:
        raise ValueError(
            f"validation must be between 0 and {n - 1} (the training set has {n} examples); received {validation}"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[validation:]), np.sort(perm[:validation])


def check_float_dtype(dtype, who: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"{who}: dtype must be a floating type such as np.float32; received {dtype}")
    return dtype
