"""MNIST from the four original IDX files: an IDX reader/writer, SHA-256 checks, and `load_mnist` with a seeded
validation split.

Jaderberg et al. 2016, Sec. 3.3 (feed-forward networks) trains MNIST classifiers whose layers are decoupled by
synthetic gradients; this module supplies their data. The files ship inside the package (`minidni/data/mnist/*.gz`),
so `load_mnist()` works offline.

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/), all integers big-endian:

    bytes 0-1   0x00 0x00                 magic: two zero bytes
    byte  2     dtype code                0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte  3     ndim                      1 for labels, 3 for images
    then        ndim x uint32             the size of each dimension, e.g. 60000, 28, 28
    then        prod(dims) x dtype        the values, row-major (C order)

Where the files are looked for, first match wins:
    1. the `data_dir` argument,
    2. `$MINIDNI_DATA/mnist` when the environment variable MINIDNI_DATA is set,
    3. the folder shipped inside the package.
Each file may be raw (`train-images-idx3-ubyte`) or gzipped (`train-images-idx3-ubyte.gz`); gzip is recognised by
its content, not its name. The SHA-256 pins below are of the *uncompressed* bytes, so both forms verify the same way.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .common import DATA_ENV_VAR, Split, check_float_dtype, env_data_root, split_off_validation

PACKAGED_DIR = Path(__file__).resolve().parent / "mnist"

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

# SHA-256 of the uncompressed files; the same lines ship as minidni/data/mnist/SHA256SUMS.uncompressed.
MNIST_SHA256 = {
    TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}

# The shape each file must decode to.
MNIST_SHAPES = {
    TRAIN_IMAGES: (60000, 28, 28),
    TRAIN_LABELS: (60000,),
    TEST_IMAGES: (10000, 28, 28),
    TEST_LABELS: (10000,),
}

IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ValueError):
    """The bytes are not a well-formed IDX file (bad magic, unknown dtype code, truncated or overlong data)."""


class ChecksumError(ValueError):
    """A data file's SHA-256 differs from the pinned value: the file is corrupt or is not the file we expect."""


# ----------------------------------------------------------------------------------------------------------------------
# IDX reading and writing


def decode_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse uncompressed IDX bytes into an array of the stored dtype and shape (native byte order).

    `source` names the file in error messages. For uint8 data the result is a zero-copy, read-only view of `raw`.
    """
    if len(raw) < 4:
        raise IdxFormatError(
            f"{source}: an IDX file starts with a 4-byte header, but the file holds only {len(raw)} bytes"
        )
    if raw[0] != 0 or raw[1] != 0:
        hint = " (it looks gzipped: decompress it first or use read_idx)" if raw[:2] == _GZIP_MAGIC else ""
        raise IdxFormatError(
            f"{source}: bad IDX magic: expected the first two bytes to be 00 00, found {raw[:2].hex(' ')}{hint}"
        )
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} ({d.name})" for c, d in IDX_DTYPES.items())
        raise IdxFormatError(f"{source}: unknown IDX dtype code 0x{code:02X}; expected one of {known}")
    if ndim == 0:
        raise IdxFormatError(f"{source}: IDX header says ndim=0; expected at least one dimension")

    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise IdxFormatError(
            f"{source}: truncated header: ndim={ndim} needs {header_len} header bytes, the file holds {len(raw)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header_len
    if found < expected:
        raise IdxFormatError(
            f"{source}: truncated data: the header says shape {shape} of {dtype.name} = {expected} bytes, "
            f"but only {found} bytes follow the header. The file is incomplete; fetch or copy it again."
        )
    if found > expected:
        raise IdxFormatError(
            f"{source}: {found - expected} unexpected bytes after the data: the header says shape {shape} of "
            f"{dtype.name} = {expected} bytes, but {found} bytes follow the header"
        )
    array = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header_len).reshape(shape)
    if dtype.itemsize > 1:  # big-endian on disk -> native order for fast arithmetic
        array = array.astype(dtype.newbyteorder("="))
    return array


def read_idx_bytes(path: str | Path) -> bytes:
    """The uncompressed bytes of an IDX file, raw or gzipped (gzip is detected by its magic bytes 1f 8b)."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:
            raise IdxFormatError(
                f"{path}: the gzip stream is truncated or corrupt ({err}). Copy or download the file again."
            ) from err
    return raw


def read_idx(path: str | Path, *, sha256: str | None = None) -> np.ndarray:
    """Read one IDX file (raw or .gz) into a NumPy array.

    If `sha256` is given, the SHA-256 of the uncompressed bytes must equal it, otherwise `ChecksumError` is raised.
    """
    path = Path(path)
    raw = read_idx_bytes(path)
    array = decode_idx(raw, source=str(path))
    if sha256 is not None:
        found = hashlib.sha256(raw).hexdigest()
        if found != sha256.lower():
            raise ChecksumError(
                f"{path}: SHA-256 mismatch of the uncompressed bytes.\n"
                f"  expected {sha256.lower()}\n"
                f"  found    {found}\n"
                "The file is corrupt or is a different file. Replace it with a fresh copy "
                "(the package ships one under minidni/data/mnist/, or reinstall minidni), "
                "or skip the check at your own risk: verify=False in Python, --no-verify on the command line."
            )
    return array


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write `array` as an IDX file (the inverse of `read_idx`). Gzips when `compress` is True, or when it is None
    and the name ends in `.gz`."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        allowed = ", ".join(sorted({d.name for d in IDX_DTYPES.values()}))
        raise TypeError(f"write_idx: IDX cannot store dtype {array.dtype}; expected one of {allowed}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"write_idx: IDX stores 1 to 255 dimensions; received an array with ndim={array.ndim}")
    header = bytes([0, 0, codes[native], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=native.newbyteorder(">")).tobytes()
    data = header + body
    if compress or (compress is None and path.suffix == ".gz"):
        data = gzip.compress(data, mtime=0)  # mtime=0: identical input -> identical file
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Finding and verifying the MNIST files


def resolve_mnist_dir(data_dir: str | Path | None = None) -> tuple[Path, str]:
    """The folder to read MNIST from, and a phrase saying why it was chosen (for error messages)."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "the data_dir argument"
    root = env_data_root()
    if root is not None:
        return root / "mnist", f"${DATA_ENV_VAR}/mnist (${DATA_ENV_VAR}={root})"
    return PACKAGED_DIR, "the folder shipped inside the minidni package"


def find_mnist_file(folder: Path, name: str, why: str = "") -> Path:
    """`folder/name` or `folder/name.gz`, whichever exists (raw first); a clear FileNotFoundError otherwise."""
    candidates = [folder / name, folder / f"{name}.gz"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = " or ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"MNIST file {name!r} not found: looked for {looked}"
        + (f" (folder chosen from {why})" if why else "")
        + ".\nPut the four MNIST files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte; raw or .gz) in that folder, pass the folder holding them (data_dir=... in "
        "Python, --data-dir on the command line), "
        f"or unset ${DATA_ENV_VAR} to use the copy shipped inside the package."
    )


@lru_cache(maxsize=16)
def _read_cached(path: str, mtime_ns: int, size: int, sha256: str | None) -> np.ndarray:
    # mtime and size are part of the key so that a file replaced on disk is read again.
    array = read_idx(path, sha256=sha256)
    array.flags.writeable = False  # shared between callers: nobody may change it in place
    return array


def read_mnist_file(folder: Path, name: str, *, verify: bool = True, why: str = "") -> np.ndarray:
    """One of the four MNIST arrays (uint8, read-only, cached in-process), checked for hash and shape."""
    path = find_mnist_file(folder, name, why)
    stat = path.stat()
    array = _read_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, MNIST_SHA256[name] if verify else None)
    if array.shape != MNIST_SHAPES[name] or array.dtype != np.uint8:
        raise IdxFormatError(
            f"{path}: expected uint8 data of shape {MNIST_SHAPES[name]} for {name}, "
            f"found {array.dtype} of shape {array.shape}"
        )
    return array


def read_sha256sums(path: str | Path) -> dict[str, str]:
    """Parse a `sha256sum`-style file ("<hex>  <name>" per line) into {name: hex}."""
    sums = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip().lstrip("*")] = digest.lower()
    return sums


# ----------------------------------------------------------------------------------------------------------------------
# The dataset


@dataclass(frozen=True)
class MNIST:
    """MNIST split into train / validation / test.

    Each split is `Split(x, y)`: x (N, 784) floating point, pixels scaled to [0, 1] (or standardised), y (N,) int64.
    `val` is None when the loader was asked for `validation=0`. `mean` and `std` are the training-set pixel
    statistics that were subtracted and divided when `standardize=True`, else None.
    """

    train: Split
    val: Split | None
    test: Split
    mean: float | None = None
    std: float | None = None
    data_dir: Path | None = None
    num_classes: int = 10
    image_shape: tuple[int, int] = (28, 28)

    def __repr__(self) -> str:
        val = len(self.val) if self.val is not None else 0
        return (
            f"MNIST(train={len(self.train)}, val={val}, test={len(self.test)}, "
            f"dtype={self.train.x.dtype}, standardized={self.mean is not None})"
        )


def load_mnist(
    data_dir: str | Path | None = None,
    *,
    validation: int = 10000,
    seed: int = 0,
    standardize: bool = False,
    dtype=np.float32,
    verify: bool = True,
) -> MNIST:
    """Load MNIST as flat float vectors with a seeded validation split.

    data_dir:    folder holding the four IDX files (raw or .gz); default: $MINIDNI_DATA/mnist, else the packaged copy.
    validation:  how many of the 60000 training images to hold out; chosen by a permutation seeded with `seed`
                 (both the remaining train indices and the validation indices stay in file order).
    standardize: subtract the training-set pixel mean and divide by its std (one scalar each, from the train split
                 after the validation images were removed), applied to every split.
    verify:      check each file's SHA-256 against the pinned value before using it.
    """
    dtype = check_float_dtype(dtype, "load_mnist")
    folder, why = resolve_mnist_dir(data_dir)
    train_images = read_mnist_file(folder, TRAIN_IMAGES, verify=verify, why=why)
    train_labels = read_mnist_file(folder, TRAIN_LABELS, verify=verify, why=why)
    test_images = read_mnist_file(folder, TEST_IMAGES, verify=verify, why=why)
    test_labels = read_mnist_file(folder, TEST_LABELS, verify=verify, why=why)

    def to_split(images: np.ndarray, labels: np.ndarray, index: np.ndarray | None = None) -> Split:
        if index is not None:
            images, labels = images[index], labels[index]  # one gather; the cached arrays stay untouched
        x = images.reshape(len(images), 28 * 28).astype(dtype)  # (N, 784)
        x /= 255.0
        return Split(x, labels.astype(np.int64))

    train_idx, val_idx = split_off_validation(len(train_labels), validation, seed)
    train = to_split(train_images, train_labels, train_idx if validation else None)
    val = to_split(train_images, train_labels, val_idx) if validation else None
    test = to_split(test_images, test_labels)

    mean = std = None
    if standardize:
        mean = float(train.x.mean(dtype=np.float64))
        std = float(train.x.std(dtype=np.float64))
        for split in (train, val, test):
            if split is not None:
                np.subtract(split.x, dtype.type(mean), out=split.x)  # in place: no second copy of the images
                np.divide(split.x, dtype.type(std), out=split.x)
    return MNIST(train=train, val=val, test=test, mean=mean, std=std, data_dir=folder)
