"""Training data for the pipeline: MNIST-format IDX files, .npz arrays, folders of images, scikit-learn's digits.

* :func:`read_idx` reads one IDX file (plain or gzip), checking its header against its size.
* :func:`load_idx_dir` reads a directory in the MNIST layout (``train-images-idx3-ubyte.gz``,
  ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``;
  the files may also be uncompressed), e.g. MNIST or Fashion-MNIST.
* :func:`load_npz` reads an ``.npz`` of ``x`` / ``y`` arrays (split here) or ``x_train`` / ``y_train`` /
  ``x_test`` / ``y_test`` (``x_val`` / ``y_val``), never unpickling (``allow_pickle=False``), the array
  headers checked before anything is allocated.
* :func:`image_folder` lists a folder of class subfolders of images (or ``train/`` and ``val/`` or
  ``test/`` folders of them) as two lazy datasets that decode each image with Pillow when asked.
* :func:`load_digits` gives scikit-learn's bundled 8x8 digits (no download) with a fixed split.

Every problem with a file raises :class:`converters.errors.ConvertError` with a one-line message.
numpy only (scikit-learn for the digits, Pillow for images).
"""

from __future__ import annotations

import collections
import gzip
import os
import zipfile
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


def _split(x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float) -> tuple:
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(round((1 - test_fraction) * len(x)))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def _npz_header(zf: zipfile.ZipFile, member: str, where: str) -> tuple:
    """(shape, dtype) of one array in an .npz, read from its header, refused when it cannot be right."""
    info = zf.getinfo(member)
    try:
        with zf.open(member) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f, max_header_size=10000)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, SyntaxError) as e:
        raise ConvertError(f"{where}: {member} is not a .npy array ({str(e).splitlines()[0] if str(e) else e!r})") \
            from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise ConvertError(f"{where}: {member} holds {dtype} values, not numbers")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > MAX_IDX_BYTES or nbytes > info.file_size:
        raise ConvertError(f"{where}: {member} claims {'x'.join(map(str, shape))} {dtype} = {nbytes:,} bytes "
                           f"in a {info.file_size:,}-byte member")
    return shape, dtype


def load_npz(path, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """An .npz of ``x`` and ``y`` (split: ``test_fraction`` held out, fixed by ``seed``), or of ``x_train``,
    ``y_train`` and ``x_test`` / ``x_val`` with their ``y``. uint8 inputs are scaled to [0, 1], others
    cast to float32; labels must be integers."""
    path = os.fspath(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ConvertError(f"{path}: not an .npz file ({e})") from None
    with zf:
        names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
        held = "test" if {"x_test", "y_test"} <= names else "val"
        if {"x_train", "y_train", f"x_{held}", f"y_{held}"} <= names:
            keys = ["x_train", "y_train", f"x_{held}", f"y_{held}"]
        elif {"x", "y"} <= names:
            keys = ["x", "y"]
        else:
            raise ConvertError(f"{path}: holds {', '.join(sorted(names)) or 'no arrays'}; expected x and y, or "
                               "x_train, y_train, x_test and y_test")
        for k in keys:
            _npz_header(zf, k + ".npy", path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = [z[k] for k in keys]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ConvertError(f"{path}: cannot read the arrays ({str(e).splitlines()[0] if str(e) else e!r})") from None
    for xs, ys, kx, ky in zip(arrays[::2], arrays[1::2], keys[::2], keys[1::2]):
        if xs.ndim < 1 or len(xs) != len(ys) or ys.ndim != 1:
            raise ConvertError(f"{path}: {kx} has shape {'x'.join(map(str, xs.shape))} and {ky} "
                               f"{'x'.join(map(str, ys.shape))}; expected N samples and N labels")
        if ys.dtype.kind not in "iub":
            raise ConvertError(f"{path}: {ky} must hold integer class labels, not {ys.dtype}")
        if ys.size and (ys.min() < 0 or ys.max() > 9999):
            raise ConvertError(f"{path}: {ky} holds label {int(ys.min() if ys.min() < 0 else ys.max())}, not a class index")
    arrays = [_scale(a) if i % 2 == 0 else a.astype(np.int64) for i, a in enumerate(arrays)]
    if len(arrays) == 2:
        arrays = list(_split(arrays[0], arrays[1], seed, test_fraction))
    xtr, ytr, xte, yte = arrays
    if xtr.shape[1:] != xte.shape[1:]:
        raise ConvertError(f"{path}: training samples are {'x'.join(map(str, xtr.shape[1:]))}, "
                           f"held-out ones {'x'.join(map(str, xte.shape[1:]))}")
    return Dataset(os.path.basename(path), xtr, ytr, xte, yte)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm")
PROBE_IMAGES = 64  # images opened up front to settle the colour mode and the size


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ConvertError("folders of images need Pillow: pip install 'dcz[images]'") from None
    return Image


class ImageFiles:
    """A map-style dataset of (image, label) over image files: each item is decoded when asked, converted
    to ``mode`` (L or RGB), resized to ``size`` (width, height) if it differs, and given as a float32
    C x H x W array scaled to [0, 1] with an int64 label."""

    def __init__(self, files: list, mode: str, size: tuple, classes: list, name: str = "images"):
        self.files, self.mode, self.size, self.classes, self.name = files, mode, tuple(size), list(classes), name

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        path, label = self.files[i]
        Image = _pil()
        try:
            with Image.open(path) as im:
                im = im.convert(self.mode)
                if im.size != self.size:
                    im = im.resize(self.size, Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / np.float32(255)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ConvertError(f"{path}: not a readable image ({str(e).splitlines()[0] if str(e) else e!r})") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return np.ascontiguousarray(a), np.int64(label)

    @property
    def sample_shape(self) -> tuple:
        return (1 if self.mode == "L" else 3, self.size[1], self.size[0])


def _class_files(directory: str, classes: list | None = None) -> tuple[list, list]:
    found = sorted(d.name for d in os.scandir(directory) if d.is_dir() and not d.name.startswith("."))
    classes = found if classes is None else classes
    files = []
    for label, c in enumerate(classes):
        sub = os.path.join(directory, c)
        if not os.path.isdir(sub):
            continue
        for root, dirs, names in os.walk(sub):
            dirs.sort()
            files += [(os.path.join(root, n), label) for n in sorted(names)
                      if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith(".")]
    return files, classes


def image_folder(directory, size: tuple | None = None, seed: int = 0, test_fraction: float = 0.2):
    """(train, held-out) :class:`ImageFiles` of a folder of class subfolders of images (classes in sorted name
    order, as torchvision's ImageFolder), split with ``test_fraction`` held out (fixed by ``seed``); or of its
    ``train/`` and ``val/`` (or ``test/``) subfolders when it has them. ``size`` (width, height) defaults to
    the most common size among the first images; grey images stay one channel unless some are in colour."""
    directory = os.fspath(directory)
    held = next((d for d in ("val", "test") if os.path.isdir(os.path.join(directory, d))), None)
    if held and os.path.isdir(os.path.join(directory, "train")):
        train, classes = _class_files(os.path.join(directory, "train"))
        test, _ = _class_files(os.path.join(directory, held), classes)
    else:
        files, classes = _class_files(directory)
        order = np.random.default_rng(seed).permutation(len(files))
        cut = int(round((1 - test_fraction) * len(files)))
        train, test = [files[i] for i in sorted(order[:cut])], [files[i] for i in sorted(order[cut:])]
    if len(classes) < 2:
        raise ConvertError(f"{directory}: expected class subfolders of images (or MNIST-format IDX files), found "
                           f"{len(classes)} subfolder{'s' if len(classes) != 1 else ''}")
    if not train or not test:
        raise ConvertError(f"{directory}: {len(train)} training and {len(test)} held-out images; need some of each")
    Image = _pil()
    modes, sizes = set(), collections.Counter()
    pool = train + test
    probe = pool[:: max(1, len(pool) // PROBE_IMAGES)][:PROBE_IMAGES]
    for path, _ in probe:
        try:
            with Image.open(path) as im:
                modes.add(im.mode)
                sizes[im.size] += 1
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ConvertError(f"{path}: not a readable image ({str(e).splitlines()[0] if str(e) else e!r})") from None
    mode = "L" if modes <= {"1", "L", "I", "I;16", "F"} else "RGB"
    size = tuple(size) if size else sizes.most_common(1)[0][0]
    name = os.path.basename(os.path.normpath(directory)) or directory
    return (ImageFiles(train, mode, size, classes, name), ImageFiles(test, mode, size, classes, name))


def is_idx_dir(directory) -> bool:
    """Whether a directory looks like the MNIST layout (any *-ubyte file) rather than a folder of images."""
    try:
        return any(n.endswith(("-ubyte", "-ubyte.gz")) for n in os.listdir(directory))
    except OSError:
        return False


def load(spec) -> Dataset:
    """``digits``, an ``.npz`` file or a directory of MNIST-format IDX files."""
    if spec == "digits":
        return load_digits()
    if os.fspath(spec).endswith(".npz") and os.path.isfile(spec):
        return load_npz(spec)
    return load_idx_dir(spec)
