"""Training data for the pipeline: MNIST-format IDX files and scikit-learn's 8x8 digits.

* :func:`read_idx` reads one IDX file (plain or gzip), checking its header against its size.
* :func:`load_idx_dir` reads a directory in the MNIST layout (``train-images-idx3-ubyte.gz``,
  ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``;
  the files may also be uncompressed), e.g. MNIST or Fashion-MNIST.
* :func:`load_digits` gives scikit-learn's bundled 8x8 digits (no download) with a fixed split.

Every problem with a file raises :class:`converters.errors.ConvertError` with a one-line message.
numpy only (scikit-learn for the digits).
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import ConvertError

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

# IDX type codes -> big-endian numpy dtypes
IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
MAX_IDX_BYTES = 1 << 32  # 4 GiB of decompressed data: more is not an image data set
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class Dataset:
    """A train/test split; ``x`` float32 scaled to [0, 1], ``y`` int64 class labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def classes(self) -> int:
        return int(max(self.y_train.max(initial=0), self.y_test.max(initial=0))) + 1

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def describe(self) -> str:
        return (f"{self.name}: {len(self.x_train):,} training and {len(self.x_test):,} test samples of shape "
                f"{'x'.join(map(str, self.sample_shape))}, {self.classes} classes")


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as f:
                data = f.read(MAX_IDX_BYTES + 1)
        except (OSError, EOFError, zlib.error) as e:
            raise ConvertError(f"{path}: a damaged gzip file ({e})") from None
        if len(data) > MAX_IDX_BYTES:
            raise ConvertError(f"{path}: decompresses to more than {MAX_IDX_BYTES:,} bytes")
        return data
    with open(path, "rb") as f:
        return f.read()


def parse_idx(data: bytes, where: str = "IDX data") -> np.ndarray:
    """The array held by the bytes of an IDX file; the header must match the size exactly."""
    if len(data) < 4:
        raise ConvertError(f"{where}: {len(data)} bytes, too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise ConvertError(f"{where}: not an IDX file (magic {data[:4].hex()}, expected 0000TTNN)")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise ConvertError(f"{where}: unknown IDX element type 0x{code:02x}")
    if not 1 <= ndim <= 4:
        raise ConvertError(f"{where}: IDX header has {ndim} dimensions, expected 1 to 4")
    if len(data) < 4 + 4 * ndim:
        raise ConvertError(f"{where}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dt = IDX_DTYPES[code]
    want = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    have = len(data) - 4 - 4 * ndim
    if have != want:
        raise ConvertError(f"{where}: header says {'x'.join(map(str, dims))} {dt.name} = {want:,} data bytes, "
                           f"the file holds {have:,}")
    return np.frombuffer(data, dt, offset=4 + 4 * ndim).reshape(dims).astype(dt.newbyteorder("="))


def read_idx(path) -> np.ndarray:
    """Read one IDX file (plain or gzip-compressed)."""
    path = os.fspath(path)
    return parse_idx(_read_bytes(path), path)


def _find(directory: str, stem: str) -> str:
    alt = stem.replace("-idx", ".idx")  # some copies name them train-images.idx3-ubyte
    for name in (stem + ".gz", stem, alt + ".gz", alt):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    raise ConvertError(f"{directory}: no {stem}(.gz) -- expected the MNIST file layout "
                       "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...)")


def load_idx_split(directory, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of one split: images as stored (uint8, N x H x W), labels int64."""
    directory = os.fspath(directory)
    if split not in FILES:
        raise ValueError(f"split must be one of {', '.join(FILES)}")
    ipath, lpath = (_find(directory, s) for s in FILES[split])
    images, labels = read_idx(ipath), read_idx(lpath)
    if images.ndim != 3:
        raise ConvertError(f"{ipath}: expected images (N x rows x columns), the header gives {images.ndim} dimensions")
    if labels.ndim != 1:
        raise ConvertError(f"{lpath}: expected labels (one dimension), the header gives {labels.ndim} dimensions")
    if len(images) != len(labels):
        raise ConvertError(f"{lpath}: {len(labels):,} labels for {len(images):,} images in {os.path.basename(ipath)}")
    if labels.dtype.kind not in "iu":
        raise ConvertError(f"{lpath}: labels must be integers, not {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 9999):
        raise ConvertError(f"{lpath}: label {int(labels.min() if labels.min() < 0 else labels.max())} is not a class index")
    return images, labels.astype(np.int64)


def _scale(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255)
    return images.astype(np.float32)


def load_idx_dir(directory) -> Dataset:
    """MNIST-layout directory -> Dataset (images scaled to [0, 1], shape N x H x W)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ConvertError(f"{directory}: not a directory")
    xtr, ytr = load_idx_split(directory, "train")
    xte, yte = load_idx_split(directory, "test")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ConvertError(f"{directory}: training images are {xtr.shape[1]}x{xtr.shape[2]}, "
                           f"test images {xte.shape[1]}x{xte.shape[2]}")
    return Dataset(os.path.basename(os.path.normpath(directory)) or directory, _scale(xtr), ytr, _scale(xte), yte)


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, bundled, no download): x (N, 64) in [0, 1], fixed split."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int((1 - test_fraction) * len(x))
    return Dataset("digits", x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]])


def load(spec) -> Dataset:
    """``digits`` or a directory of MNIST-format IDX files."""
    if spec == "digits":
        return load_digits()
    return load_idx_dir(spec)
