"""CIFAR-10 from the official "python version": the tarball `cifar-10-python.tar.gz` or the folder
`cifar-10-batches-py` it unpacks to. Nothing is downloaded.

Jaderberg et al. 2016, Sec. 3.3 (feed-forward networks) trains CIFAR-10 convolutional networks with synthetic
gradients between layers; this module supplies their data as float NCHW images.

Format (https://www.cs.toronto.edu/~kriz/cifar.html): `data_batch_1` ... `data_batch_5` (10000 images each) and
`test_batch` are pickled dicts with
    b"data"    uint8 (N, 3072): each row is the 1024 red, then 1024 green, then 1024 blue pixels of a 32x32 image,
               row-major, so `reshape(N, 3, 32, 32)` gives NCHW directly,
    b"labels"  N ints in 0..9,
and `batches.meta` holds b"label_names". The pickles are read with an unpickler that only admits plain containers
and NumPy arrays, so a tampered file cannot run code when it is loaded.
"""

from __future__ import annotations

import importlib
import io
import pickle
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .common import DATA_ENV_VAR, Split, check_float_dtype, env_data_root, split_off_validation

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _where_to_get_it() -> str:
    return (
        f"Download {CIFAR10_URL} (163 MB) and pass its path, or the folder {CIFAR10_FOLDER}/ it unpacks to, with "
        f"--data-dir on the command line (load_cifar10(path=...) in Python); or put either one inside the folder "
        f"named by ${DATA_ENV_VAR}."
    )


# ----------------------------------------------------------------------------------------------------------------------
# Safe unpickling


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch contains: builtin containers plus NumPy's array reconstruction helpers."""

    _allowed = {
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a CIFAR-10 batch: only NumPy arrays and builtin containers "
                "are expected there"
            )
        if module.startswith("numpy.") and module.endswith("multiarray"):
            # The files name numpy.core (NumPy 1); NumPy 2 moved it to numpy._core. Import whichever exists.
            for candidate in ("numpy._core.multiarray", "numpy.core.multiarray"):
                try:
                    return getattr(importlib.import_module(candidate), name)
                except (ImportError, AttributeError):
                    continue
        return super().find_class(module, name)


def _unpickle(data: bytes, source: str) -> dict:
    try:
        # encoding="bytes": the official files were pickled by Python 2; keys come back as bytes (b"data").
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise ValueError(f"{source}: not a readable CIFAR-10 python batch ({err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a pickled dict, found {type(obj).__name__}")
    return obj


# ----------------------------------------------------------------------------------------------------------------------
# Finding and reading the batches


def resolve_cifar10_source(path: str | Path | None = None) -> Path:
    """The tarball or batches folder to read. `path` may be the tarball, the `cifar-10-batches-py` folder, or a folder
    holding either; None means $MINIDNI_DATA."""
    if path is None:
        root = env_data_root()
        if root is None:
            raise FileNotFoundError(
                f"load_cifar10: no path given and ${DATA_ENV_VAR} is not set. " + _where_to_get_it()
            )
        path = root
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / TRAIN_BATCHES[0]).is_file():
            return path
        for candidate in (path / CIFAR10_FOLDER, path / CIFAR10_TARBALL):
            if candidate.exists():
                return candidate
        raise FileNotFoundError(
            f"CIFAR-10 not found in {path}: looked for {path / TRAIN_BATCHES[0]}, {path / CIFAR10_FOLDER}/ and "
            f"{path / CIFAR10_TARBALL}. " + _where_to_get_it()
        )
    raise FileNotFoundError(f"CIFAR-10 not found: {path} does not exist. " + _where_to_get_it())


def _read_folder(folder: Path) -> dict[str, bytes]:
    files = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(
                f"CIFAR-10 batch {file} is missing; {folder} should hold {', '.join(TRAIN_BATCHES)}, {TEST_BATCH}. "
                + _where_to_get_it()
            )
        files[name] = file.read_bytes()
    if (folder / META_FILE).is_file():
        files[META_FILE] = (folder / META_FILE).read_bytes()
    return files


def _read_tarball(tar_path: Path) -> dict[str, bytes]:
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META_FILE}
    files = {}
    try:
        with tarfile.open(tar_path, mode="r|*") as tar:  # stream mode: one pass over the (gzipped) archive
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted:
                    files[base] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ValueError(
            f"{tar_path}: cannot read it as a tar archive ({err}); the download may be incomplete. "
            + _where_to_get_it()
        ) from err
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if n not in files]
    if missing:
        raise FileNotFoundError(
            f"{tar_path}: the archive lacks {', '.join(missing)}; expected {CIFAR10_FOLDER}/data_batch_1..5 and "
            f"{CIFAR10_FOLDER}/{TEST_BATCH}. " + _where_to_get_it()
        )
    return files


def _decode_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(raw, source)
    if b"data" not in batch or b"labels" not in batch:
        raise ValueError(
            f"{source}: expected keys b'data' and b'labels', found {sorted(batch)}"
            " (CIFAR-100 batches use b'fine_labels' and are not supported here)"
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{source}: expected b'data' uint8 of shape (N, 3072), found {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{source}: expected {data.shape[0]} labels (one per image), found shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{source}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels  # (N, 3, 32, 32): channel planes are stored one after another


@lru_cache(maxsize=4)
def _read_cached(source: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple]:
    path = Path(source)
    files = _read_folder(path) if path.is_dir() else _read_tarball(path)
    train = [_decode_batch(files[n], f"{source}:{n}") for n in TRAIN_BATCHES]
    x_test, y_test = _decode_batch(files[TEST_BATCH], f"{source}:{TEST_BATCH}")
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    names = CLASS_NAMES
    if META_FILE in files:
        meta = _unpickle(files[META_FILE], f"{source}:{META_FILE}")
        if b"label_names" in meta:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"])
    for array in (x_train, y_train, x_test, y_test):
        array.flags.writeable = False  # shared by every caller through the cache
    return x_train, y_train, x_test, y_test, names


# ----------------------------------------------------------------------------------------------------------------------
# The dataset


@dataclass(frozen=True)
class CIFAR10:
    """CIFAR-10 split into train / validation / test.

    Each split is `Split(x, y)`: x (N, 3, 32, 32) floating point in [0, 1] (or standardised per channel),
    y (N,) int64. `val` is None for `validation=0`. `mean` and `std` (3,) are the training-set channel statistics
    used when `standardize=True`, else None.
    """

    train: Split
    val: Split | None
    test: Split
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    class_names: tuple[str, ...] = CLASS_NAMES
    source: Path | None = None
    num_classes: int = 10
    image_shape: tuple[int, int, int] = (3, 32, 32)

    def __repr__(self) -> str:
        val = len(self.val) if self.val is not None else 0
        return (
            f"CIFAR10(train={len(self.train)}, val={val}, test={len(self.test)}, "
            f"dtype={self.train.x.dtype}, standardized={self.mean is not None})"
        )


def load_cifar10(
    path: str | Path | None = None,
    *,
    validation: int = 5000,
    seed: int = 0,
    standardize: bool = False,
    dtype=np.float32,
) -> CIFAR10:
    """Load CIFAR-10 as float NCHW images with a seeded validation split.

    path:        `cifar-10-python.tar.gz`, the `cifar-10-batches-py` folder, or a folder holding either
                 (default: $MINIDNI_DATA).
    validation:  how many of the 50000 training images to hold out, chosen by a permutation seeded with `seed`.
    standardize: per channel, subtract the training-split mean and divide by its std (statistics over N, H, W).
    """
    dtype = check_float_dtype(dtype, "load_cifar10")
    source = resolve_cifar10_source(path)
    stat = source.stat()
    x_train, y_train, x_test, y_test, names = _read_cached(str(source.resolve()), stat.st_mtime_ns, stat.st_size)

    def to_split(images: np.ndarray, labels: np.ndarray, index: np.ndarray | None = None) -> Split:
        if index is not None:
            images, labels = images[index], labels[index]
        x = images.astype(dtype)  # (N, 3, 32, 32)
        x /= 255.0
        return Split(x, labels.astype(np.int64))

    train_idx, val_idx = split_off_validation(len(y_train), validation, seed)
    train = to_split(x_train, y_train, train_idx if validation else None)
    val = to_split(x_train, y_train, val_idx) if validation else None
    test = to_split(x_test, y_test)

    mean = std = None
    if standardize:
        mean = train.x.mean(axis=(0, 2, 3), dtype=np.float64)  # (3,)
        std = train.x.std(axis=(0, 2, 3), dtype=np.float64)  # (3,)
        shift = mean.astype(dtype).reshape(1, 3, 1, 1)
        scale = std.astype(dtype).reshape(1, 3, 1, 1)
        for split in (train, val, test):
            if split is not None:
                np.subtract(split.x, shift, out=split.x)
                np.divide(split.x, scale, out=split.x)
    return CIFAR10(train=train, val=val, test=test, mean=mean, std=std, class_names=names, source=source)


def write_cifar10_batches(folder: str | Path, batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write CIFAR-10-format batch files {name: (data uint8 (N, 3072), labels (N,))} plus batches.meta into `folder`.

    For tests and tiny demos: the files have the same layout as the official ones, so `load_cifar10` reads them.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in batches.items():
        payload = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in labels],
            b"data": np.ascontiguousarray(data, dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(len(labels))],
        }
        (folder / name).write_bytes(pickle.dumps(payload, protocol=2))
    meta = {b"label_names": [n.encode() for n in CLASS_NAMES], b"num_vis": 3072, b"num_cases_per_batch": 10000}
    (folder / META_FILE).write_bytes(pickle.dumps(meta, protocol=2))
    return folder
