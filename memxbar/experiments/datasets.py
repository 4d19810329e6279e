"""Dataset loaders: the 8x8 digits (embedded), MNIST, Fashion-MNIST (IDX) and CIFAR-10.

Every loader returns ``(train, test)`` ``TensorDataset`` pairs of float32 images, normalised with
the dataset's standard mean and std, shaped ``(N, C, H, W)``, and int64 labels.
``make_loaders`` wraps them in seeded ``DataLoader`` objects and reports a ``DatasetInfo``.

Files are read from a data directory; nothing is downloaded. With ``verify=True`` (the default):

- MNIST and Fashion-MNIST ``.gz`` files are checked against the official checksums in
  ``CHECKSUMS`` (SHA-256 for MNIST, the publishers' MD5 for Fashion-MNIST). Uncompressed IDX files
  (``train-images-idx3-ubyte`` etc.) have no published checksum; they are verified structurally
  (magic number, exact byte length, official sample count, 28x28 size, label range).
- CIFAR-10 is read from ``<data_dir>/cifar-10-batches-py/``. If that folder is missing and
  ``cifar-10-python.tar.gz`` is in ``data_dir``, the tarball is checked against its official MD5
  and extracted. The extracted batch files have no published checksum and are verified
  structurally (dict keys, uint8 data of shape (10000, 3072), 10000 labels in 0..9).

A verified file is remembered for the process, keyed by path, size and modification time, so
repeated loads hash each file once. ``verify=False`` skips checksums and official sample counts
(for the small hand-made files the tests write) but keeps the format checks.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "NUM_CLASSES",
    "ChecksumError",
    "DatasetInfo",
    "check_files",
    "PassSampler",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "make_loaders",
    "read_idx",
    "resolve_data_dir",
    "verify_checksum",
]

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")
"""Names accepted by ``load_dataset`` and ``make_loaders``."""

INPUT_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28),
                "cifar10": (3, 32, 32)}
"""``(C, H, W)`` of each dataset's images (``DatasetInfo.input_shape``), known before any file
is read: the run layer builds the model from it to check the config before any work."""

CHECKSUMS: dict[str, dict[str, tuple[str, str]]] = {
    "mnist": {  # SHA-256 of the official files (see ../shared/data/README.md)
        "train-images-idx3-ubyte.gz": (
            "sha256", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        "train-labels-idx1-ubyte.gz": (
            "sha256", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        "t10k-images-idx3-ubyte.gz": (
            "sha256", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        "t10k-labels-idx1-ubyte.gz": (
            "sha256", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    },
    "fashion_mnist": {  # MD5 from github.com/zalandoresearch/fashion-mnist
        "train-images-idx3-ubyte.gz": ("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train-labels-idx1-ubyte.gz": ("md5", "25c81989df183df01b3e8a0aad5dffbe"),
        "t10k-images-idx3-ubyte.gz": ("md5", "bef4ecab320f06d8554ea6380940ec79"),
        "t10k-labels-idx1-ubyte.gz": ("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
    },
    "cifar10": {  # MD5 published on https://www.cs.toronto.edu/~kriz/cifar.html
        "cifar-10-python.tar.gz": ("md5", "c58f30108f718f92721af3b95e74349a"),
    },
}
"""Dataset -> file name -> (hash algorithm, official hex digest)."""

_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
"""Standard per-channel (mean, std) of the training split, on the [0, 1] pixel scale."""
NUM_CLASSES = 10
"""All four datasets have ten classes."""

IDX_IMAGES_MAGIC = 2051
"""IDX magic number of an unsigned-byte 3-D array (images)."""
IDX_LABELS_MAGIC = 2049
"""IDX magic number of an unsigned-byte 1-D array (labels)."""

_OFFICIAL_COUNTS = {"train": 60000, "t10k": 10000}
_CIFAR_BATCH_SIZE = 10000
_CIFAR_PIXELS = 3 * 32 * 32
_DIGITS_SPLIT_SEED = 0
_DIGITS_TEST_FRACTION = 0.2

_verified: set[tuple[str, int, int, str]] = set()
_checked: set[tuple] = set()
"""Files ``check_files`` found good, by (name, verify, each file's path, size and mtime)."""


class ChecksumError(ValueError):
    """A data file's digest differs from the official one."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: input shape (C, H, W), class count, sizes,
    and the normalisation applied (per-channel mean and std on the [0, 1] pixel scale)."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    train_size: int
    test_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def resolve_data_dir(data_dir: str | os.PathLike[str]) -> Path:
    """Absolute data directory; a relative path is taken from the directory the program started
    in (Hydra's original working directory when run under Hydra, else the current one)."""
    from hydra.utils import to_absolute_path

    return Path(to_absolute_path(os.path.expanduser(os.fspath(data_dir))))


def verify_checksum(path: Path, algorithm: str, digest: str) -> None:
    """Check ``path`` against an official ``algorithm`` (``"sha256"``/``"md5"``) hex ``digest``.

    A file that passed is remembered for this process by (path, size, mtime), so a repeat call
    costs one ``stat``.

    Raises:
        ChecksumError: the digest differs; the message names the file, both digests and the fix.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, digest)
    if key in _verified:
        return
    hasher = hashlib.new(algorithm)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    actual = hasher.hexdigest()
    if actual != digest:
        raise ChecksumError(
            f"{path}: {algorithm} is {actual}, expected {digest}. The file is corrupt or not the "
            f"official release; replace it with the official '{path.name}' in {path.parent} "
            "(or pass verify=False for hand-made files)."
        )
    _verified.add(key)


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file (LeCun's MNIST format), gzip-compressed or raw.

    Layout: big-endian int32 magic (2051 for 3-D images, 2049 for 1-D labels), one big-endian
    int32 per dimension, then the uint8 data in C order.

    Raises:
        ValueError: unreadable gzip, wrong magic number, or a byte length that does not match
            the header (truncated or trailing data).
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: cannot be read ({exc}); truncated or corrupt file") from exc
    if len(raw) < 8:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX header (truncated)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(
            f"{path}: IDX magic number is {magic}, expected {expected_magic} "
            f"({'images' if expected_magic == IDX_IMAGES_MAGIC else 'labels'})"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX header {dims} needs {expected} bytes, file has {len(raw)} ({problem})"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _tensor_dataset(
    images: np.ndarray, labels: np.ndarray, stats: tuple[tuple[float, ...], ...]
) -> TensorDataset:
    """uint8 (N, C, H, W) images and labels -> normalised float32 images, int64 labels:
    ``x = (pixel / 255 - mean_c) / std_c``."""
    mean = torch.tensor(stats[0], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(stats[1], dtype=torch.float32).view(1, -1, 1, 1)
    x = (torch.from_numpy(images.astype(np.float32)) / 255.0 - mean) / std
    return TensorDataset(x, torch.from_numpy(np.asarray(labels, dtype=np.int64)))


def _check_labels(labels: np.ndarray, num_classes: int, source: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{source}: labels span {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}"
        )


def _load_idx_dataset(
    dataset: str, data_dir: Path, verify: bool
) -> tuple[TensorDataset, TensorDataset]:
    """Read the four IDX files of ``dataset`` ("mnist" or "fashion_mnist") from ``data_dir``."""
    train, test = (_tensor_dataset(images[:, None], labels, _STATS[dataset])
                   for images, labels in (_idx_split(dataset, data_dir, split, verify)
                                          for split in ("train", "t10k")))
    return train, test


def _idx_split(dataset: str, data_dir: Path, split: str, verify: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images (N, 28, 28) and labels (N,) of one split, every file checked: present,
    official checksum and sample count (``verify``), IDX format, 28 x 28 images, at least one
    sample, as many labels as images, labels 0..9."""
    arrays = []
    for kind, magic in (("images-idx3", IDX_IMAGES_MAGIC), ("labels-idx1", IDX_LABELS_MAGIC)):
        raw_name = f"{split}-{kind}-ubyte"
        algorithm, digest = CHECKSUMS[dataset][f"{raw_name}.gz"]
        gz_path, raw_path = data_dir / f"{raw_name}.gz", data_dir / raw_name
        if gz_path.is_file():
            path = gz_path
            if verify:
                verify_checksum(path, algorithm, digest)
        elif raw_path.is_file():
            path = raw_path
        else:
            raise FileNotFoundError(
                f"{dataset}: neither '{raw_name}.gz' nor '{raw_name}' found in {data_dir}. "
                f"Put the official '{raw_name}.gz' ({algorithm} {digest}) there, or point "
                "dataset.data_dir (env MEMXBAR_DATA) at the folder holding it."
            )
        array = read_idx(path, magic)
        if (verify and len(array) != _OFFICIAL_COUNTS[split]) or array.shape[1:] not in (
                (), (28, 28)):
            count = _OFFICIAL_COUNTS[split] if verify else "N"
            raise ValueError(
                f"{path}: shape {array.shape} differs from the "
                f"{'official' if verify else 'expected'} ({count}"
                f"{', 28, 28' if magic == IDX_IMAGES_MAGIC else ''})"
            )
        if len(array) == 0:
            which = "train" if split == "train" else "test"
            raise ValueError(f"{path} holds no samples: the {which} split has no samples")
        arrays.append((array, path))
    (images, image_path), (labels, label_path) = arrays
    if len(images) != len(labels):
        raise ValueError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} "
            "labels"
        )
    _check_labels(labels, NUM_CLASSES, label_path)
    return images, labels


def check_files(name: str, data_dir: str | os.PathLike[str], verify: bool = True) -> None:
    """The files ``load_dataset(name, data_dir, verify)`` reads, checked before any work,
    every check the loader makes (an IDX split or a CIFAR-10 batch once per process and
    file version, like the checksums; a CIFAR-10 tarball is extracted as the loader would).
    Raises what the loader would, naming the file."""
    if name not in DATASETS or name == "digits":
        return
    root = resolve_data_dir(data_dir)
    if name == "cifar10":
        folder, tarball = root / "cifar-10-batches-py", root / "cifar-10-python.tar.gz"
        if not folder.is_dir() and tarball.is_file():
            _extract_cifar_tarball(tarball, root, verify)
        checks = [((folder / batch,), functools.partial(_read_cifar_batch, folder / batch,
                                                         verify))
                  for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]]
    else:
        checks = []
        for split in ("train", "t10k"):
            names = [f"{split}-{kind}-ubyte" for kind in ("images-idx3", "labels-idx1")]
            if verify and all((root / f"{n}.gz").is_file() for n in names):
                for n in names:  # the official files: their checksums say it all
                    verify_checksum(root / f"{n}.gz", *CHECKSUMS[name][f"{n}.gz"])
                continue
            checks.append((tuple(root / f"{n}{gz}" for n in names for gz in (".gz", "")),
                           functools.partial(_idx_split, name, root, split, verify)))
    for paths, check in checks:
        key = (name, verify) + tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                                     for p in paths if p.is_file())
        if key not in _checked:
            check()
            _checked.add(key)


def load_mnist(
    data_dir: str | os.PathLike[str], verify: bool = True
) -> tuple[TensorDataset, TensorDataset]:
    """MNIST (LeCun et al., 1998) from the four IDX files in ``data_dir``; shape 1x28x28,
    normalised with mean 0.1307 and std 0.3081."""
    return _load_idx_dataset("mnist", resolve_data_dir(data_dir), verify)


def load_fashion_mnist(
    data_dir: str | os.PathLike[str], verify: bool = True
) -> tuple[TensorDataset, TensorDataset]:
    """Fashion-MNIST (Xiao et al., 2017) from the four IDX files in ``data_dir``; shape 1x28x28,
    normalised with mean 0.2860 and std 0.3530."""
    return _load_idx_dataset("fashion_mnist", resolve_data_dir(data_dir), verify)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays and bytes, so a data file cannot run code.

    ``_codecs.encode`` is how protocol-2 pickles written by Python 3 store ``bytes``.
    """

    _ALLOWED = {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    } | {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _extract_cifar_tarball(tarball: Path, data_dir: Path, verify: bool) -> None:
    if verify:
        verify_checksum(tarball, *CHECKSUMS["cifar10"][tarball.name])
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith("cifar-10-batches-py/")]
            for member in members:
                if not (member.isfile() or member.isdir()) or ".." in Path(member.name).parts:
                    raise ValueError(f"{tarball}: unexpected member {member.name!r}")
            tar.extractall(data_dir, members=members)  # noqa: S202 - members checked above
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{tarball}: cannot be extracted ({exc}); truncated or corrupt "
                         "file: replace it with the official cifar-10-python.tar.gz") from exc


def _read_cifar_batch(path: Path, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: dict with b"data" uint8 (N, 3072) and b"labels" (N,)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"cifar10: '{path.name}' not found in {path.parent}. Extract the official "
            f"cifar-10-python.tar.gz (md5 {CHECKSUMS['cifar10']['cifar-10-python.tar.gz'][1]}) "
            f"into {path.parent.parent}, or put the tarball there to have it extracted."
        )
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict, found {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: keys {sorted(batch)} lack 'data' and/or 'labels'")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == _CIFAR_PIXELS
    ):
        raise ValueError(
            f"{path}: 'data' must be uint8 of shape (N, {_CIFAR_PIXELS}), found "
            f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', None)}"
        )
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: 'labels' must be {len(data)} integers, found {labels.shape}")
    if verify and len(data) != _CIFAR_BATCH_SIZE:
        raise ValueError(f"{path}: {len(data)} images, official batches hold {_CIFAR_BATCH_SIZE}")
    _check_labels(labels, NUM_CLASSES, path)
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(
    data_dir: str | os.PathLike[str], verify: bool = True
) -> tuple[TensorDataset, TensorDataset]:
    """CIFAR-10 (Krizhevsky, 2009) from ``<data_dir>/cifar-10-batches-py/`` (data_batch_1..5,
    test_batch); shape 3x32x32, per-channel mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435,
    0.2616). The batch files are verified structurally (no official per-file checksum exists);
    a ``cifar-10-python.tar.gz`` in ``data_dir`` is MD5-checked and extracted when the folder is
    missing."""
    root = resolve_data_dir(data_dir)
    folder = root / "cifar-10-batches-py"
    tarball = root / "cifar-10-python.tar.gz"
    if not folder.is_dir() and tarball.is_file():
        _extract_cifar_tarball(tarball, root, verify)
    splits = []
    for names in ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]):
        batches = [_read_cifar_batch(folder / name, verify) for name in names]
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        splits.append(_tensor_dataset(images, labels, _STATS["cifar10"]))
    return splits[0], splits[1]


DIGITS_FILE = "digits.npz"
"""The embedded 8x8 digits: the 1,797 images (uint8, 0..16) and labels of UCI's "Optical
Recognition of Handwritten Digits" as scikit-learn ships them (Alpaydin and Kaynak 1998,
doi:10.24432/C50P49, CC BY 4.0), stored in the split ``train_test_split`` made (stratified,
seed 0), checked against scikit-learn's copy by tests/test_datasets.py."""


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]:
    """The fixed split of the embedded digits, pixels in [0, 1], plus the training mean and
    std."""
    with resources.files("memxbar.experiments").joinpath(DIGITS_FILE).open("rb") as f:
        data = dict(np.load(f))
    x_train, x_test = (data[k].astype(np.float32)[:, None] / 16.0 for k in ("x_train", "x_test"))
    y_train, y_test = (data[k].astype(np.int64) for k in ("y_train", "y_test"))
    return x_train, x_test, y_train, y_test, float(x_train.mean()), float(x_train.std())


def load_digits() -> tuple[TensorDataset, TensorDataset]:
    """The 8x8 digits (1797 images, 10 classes; :data:`DIGITS_FILE`), embedded: no files
    needed.

    Pixels (0..16) are scaled to [0, 1], then normalised with the mean and std of the training
    split. The split is fixed: stratified, 20 % test, seed 0 (1437 train / 360 test).
    """
    x_train, x_test, y_train, y_test, mean, std = _digits_arrays()
    train = TensorDataset(torch.from_numpy((x_train - mean) / std), torch.from_numpy(y_train))
    test = TensorDataset(torch.from_numpy((x_test - mean) / std), torch.from_numpy(y_test))
    return train, test


def _normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel applied by the loader of dataset ``name``."""
    if name == "digits":
        mean, std = _digits_arrays()[4:]
        return (mean,), (std,)
    return _STATS[name]


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, verify: bool = True
) -> tuple[TensorDataset, TensorDataset]:
    """``(train, test)`` datasets for ``name`` in ``DATASETS``; ``data_dir`` is required for all
    but ``digits``.

    Raises:
        ValueError: unknown name, missing ``data_dir``, malformed files, or an empty split.
        FileNotFoundError / ChecksumError: a missing or corrupt file (the message names it).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset.name={name!r} is not a known dataset; allowed: {list(DATASETS)}")
    if name == "digits":
        splits = load_digits()
    else:
        if data_dir is None:
            raise ValueError(f"dataset.data_dir=None; dataset {name!r} needs a data directory")
        loader = {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist,
                  "cifar10": load_cifar10}[name]
        splits = loader(data_dir, verify=verify)
    for split, ds in zip(("train", "test"), splits, strict=True):
        if len(ds) == 0:
            raise ValueError(f"dataset {name!r} ({data_dir}): the {split} split has no samples")
    return splits


def _take(ds: TensorDataset, n: int | None, key: str, generator: torch.Generator) -> TensorDataset:
    """A seeded random subset of ``n`` samples (all of them when ``n`` is None or >= len)."""
    if n is None:
        return ds
    if int(n) <= 0:
        raise ValueError(f"dataset.{key}={n!r} is invalid; allowed: a positive integer or null")
    if n >= len(ds):
        return ds
    index = torch.randperm(len(ds), generator=generator)[: int(n)]
    return TensorDataset(*(t[index] for t in ds.tensors))


class PassSampler(Sampler[int]):
    """Training order that depends only on ``(seed, passes completed)``.

    Pass ``p`` visits the samples in ``randperm(n)`` drawn from a generator seeded with
    ``BLAKE2b("seed/p")``; ``passes`` grows by one when a pass has been read to its end. So the
    order cannot be disturbed by anything that is not a full pass over the data: an extra
    ``iter(loader)`` (progress bars, ``next(iter(loader))`` for an example batch), a pass cut off
    by an error, or the draws of ``DataLoader``'s own base seed. A shuffle drawn from a stateful
    generator, as ``DataLoader(shuffle=True)`` does, advances on every ``iter()``.

    ``state_dict()`` / ``load_state_dict()`` carry ``passes`` through checkpoints, so a resumed
    run reads the same batches as an uninterrupted one.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        if int(n) < 0:
            raise ValueError(f"PassSampler: n={n!r} is invalid; allowed: n >= 0")
        self.n, self.seed, self.passes = int(n), int(seed), 0

    def order(self, p: int) -> torch.Tensor:
        """The sample order of pass ``p`` (a pure function of ``seed`` and ``p``)."""
        digest = hashlib.blake2b(f"{self.seed}/{int(p)}".encode(), digest_size=8).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
        return torch.randperm(self.n, generator=gen)

    def __iter__(self):
        yield from self.order(self.passes).tolist()
        self.passes += 1

    def __len__(self) -> int:
        return self.n

    def state_dict(self) -> dict[str, int]:
        """``{"passes": ...}``: what a checkpoint needs to restore the order."""
        return {"passes": self.passes}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        passes = state.get("passes") if isinstance(state, dict) else None
        if not isinstance(passes, int) or isinstance(passes, bool) or passes < 0:
            raise ValueError(f"PassSampler state {state!r} is invalid; allowed: "
                             "{'passes': a non-negative integer}")
        self.passes = passes


def make_loaders(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 128,
    seed: int = 0,
    subset: int | None = None,
    test_subset: int | None = None,
    test_batch_size: int | None = None,
    verify: bool = True,
    num_workers: int = 0,
    splits: tuple[TensorDataset, TensorDataset] | None = None,
) -> tuple[DataLoader, DataLoader, DatasetInfo]:
    """Seeded train/test ``DataLoader`` objects for ``name`` and their ``DatasetInfo``.

    ``subset`` / ``test_subset`` keep a seeded random sample of that many training / test
    samples (``None``: all). ``seed`` fixes both the subsets and the training shuffle order
    (a :class:`PassSampler`: the order of each pass depends only on the seed and the passes
    completed); the test loader does not shuffle. ``test_batch_size`` defaults to
    ``batch_size``. ``splits``: your own ``(train, test)`` instead of a built-in data set
    (``name`` is then its label; its classes are counted from the labels, and no normalisation
    is recorded: the data come as the user prepared them).
    """
    for key, value in (("batch_size", batch_size), ("test_batch_size", test_batch_size)):
        if value is not None and int(value) <= 0:
            raise ValueError(f"dataset.{key}={value!r} is invalid; allowed: a positive integer")
    train, test = load_dataset(name, data_dir, verify=verify) if splits is None else splits
    generator = torch.Generator().manual_seed(int(seed))
    train = _take(train, subset, "subset", generator)
    test = _take(test, test_subset, "test_subset", generator)
    mean, std = _normalisation(name) if splits is None else ((), ())
    classes = NUM_CLASSES if splits is None else 1 + max(
        int(train.tensors[1].max()), int(test.tensors[1].max()))
    info = DatasetInfo(
        name=name,
        input_shape=tuple(int(d) for d in train.tensors[0].shape[1:]),
        num_classes=classes,
        train_size=len(train),
        test_size=len(test),
        mean=mean,
        std=std,
    )
    train_loader = DataLoader(
        train, batch_size=int(batch_size), sampler=PassSampler(len(train), int(seed)),
        num_workers=num_workers, generator=torch.Generator().manual_seed(int(seed)),
    )
    test_loader = DataLoader(
        test, batch_size=int(test_batch_size or batch_size), shuffle=False,
        num_workers=num_workers,
    )
    return train_loader, test_loader, info
