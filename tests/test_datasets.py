"""Dataset loaders on tiny files written in the official formats (never ../shared/data)."""

from __future__ import annotations

import gzip
import hashlib
import inspect
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from memxbar.experiments import datasets
from memxbar.experiments.datasets import (
    CHECKSUMS,
    ChecksumError,
    load_cifar10,
    load_digits,
    load_mnist,
    make_loaders,
    read_idx,
    verify_checksum,
)

CONF = Path(__file__).resolve().parents[1] / "memxbar" / "conf" / "dataset"
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array as IDX: big-endian magic 0x08 << 8 | ndim, dims, data."""
    header = (0x0800 | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (folder / name).write_bytes(idx_bytes(array))
    return arrays


def write_cifar(folder: Path, n: int = 4) -> dict:
    """Batches as the official python pickles: dict with bytes keys, uint8 (n, 3072) data."""
    batches_dir = folder / "cifar-10-batches-py"
    batches_dir.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }
        (batches_dir / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = batch
    return written


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    arrays = write_idx_set(tmp_path, gz=gz)
    train, test = load_mnist(tmp_path, verify=False)
    assert len(train) == 12 and len(test) == 5
    x, y = train.tensors
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    expected = (arrays["train-images-idx3-ubyte"][:, None] / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), arrays["train-labels-idx1-ubyte"])


def test_checksum_mismatch_names_file_and_digest(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    digest = CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"][1]
    with pytest.raises(ChecksumError) as err:
        load_mnist(tmp_path)
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message and digest in message
    assert str(tmp_path) in message


def test_checksum_pass_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"crossbar")
    digest = hashlib.sha256(b"crossbar").hexdigest()
    verify_checksum(path, "sha256", digest)
    monkeypatch.setattr(datasets.hashlib, "new", lambda *a: pytest.fail("hashed twice"))
    verify_checksum(path, "sha256", digest)


def test_fashion_mnist_checksum_is_md5(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    with pytest.raises(ChecksumError, match="md5 .* expected 8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
        make_loaders("fashion_mnist", tmp_path)


def test_missing_file_message(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(tmp_path, verify=False)
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and str(tmp_path) in message
    assert CHECKSUMS["mnist"]["t10k-labels-idx1-ubyte.gz"][1] in message


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx(tmp_path: Path, gz: bool) -> None:
    data = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))[:-10]
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path, datasets.IDX_IMAGES_MAGIC)


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8)))[:-30])
    with pytest.raises(ValueError, match="x.gz"):
        read_idx(path, datasets.IDX_IMAGES_MAGIC)


def test_wrong_magic(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    labels = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(labels)  # labels where images belong
    with pytest.raises(ValueError, match="magic number is 2049, expected 2051"):
        load_mnist(tmp_path, verify=False)


def test_verify_checks_official_count_on_raw_files(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    with pytest.raises(ValueError, match="official"):
        load_mnist(tmp_path, verify=True)


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(ValueError, match="5 images .* 4 labels"):
        load_mnist(tmp_path, verify=False)


def test_empty_dataset(tmp_path: Path) -> None:
    write_idx_set(tmp_path, n_test=0)
    with pytest.raises(ValueError, match="test split has no samples"):
        make_loaders("mnist", tmp_path, verify=False)


def test_cifar_batches(tmp_path: Path) -> None:
    written = write_cifar(tmp_path)
    train, test = load_cifar10(tmp_path, verify=False)
    assert train.tensors[0].shape == (20, 3, 32, 32) and len(test) == 4
    raw = written["data_batch_1"][b"data"].reshape(-1, 3, 32, 32)[0, 2] / 255.0
    np.testing.assert_allclose(
        train.tensors[0][0, 2].numpy(), (raw - 0.4465) / 0.2616, rtol=1e-5, atol=1e-5
    )
    assert train.tensors[1][:4].tolist() == written["data_batch_1"][b"labels"]


def test_cifar_strict_structure(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    with pytest.raises(ValueError, match="official batches hold 10000"):
        load_cifar10(tmp_path, verify=True)
    bad = {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match=r"data_batch_3.*\(N, 3072\)"):
        load_cifar10(tmp_path, verify=False)


def test_cifar_refuses_code_in_pickle(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    payload = pickle.dumps(print)  # any global outside numpy's array rebuilders
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(payload)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        load_cifar10(tmp_path, verify=False)


def test_cifar_missing_batch_and_tarball(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4.*c58f30108f718f92721af3b95e74349a"):
        load_cifar10(tmp_path, verify=False)


def test_cifar_tarball_extracted_and_checked(tmp_path: Path) -> None:
    source = tmp_path / "src"
    write_cifar(source)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    root = tmp_path / "root"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(ChecksumError, match="c58f30108f718f92721af3b95e74349a"):
        load_cifar10(root)
    train, _ = load_cifar10(root, verify=False)
    assert len(train) == 20 and (root / "cifar-10-batches-py" / "test_batch").is_file()


def test_digits() -> None:
    train, test = load_digits()
    assert len(train) == 1437 and len(test) == 360
    assert train.tensors[0].shape[1:] == (1, 8, 8)
    assert abs(train.tensors[0].mean().item()) < 1e-4
    assert abs(train.tensors[0].std().item() - 1.0) < 1e-2
    again, _ = load_digits()
    assert torch.equal(train.tensors[1], again.tensors[1])  # fixed split


def test_make_loaders_digits_subset_is_seeded() -> None:
    train, test, info = make_loaders("digits", batch_size=32, seed=3, subset=100, test_subset=50)
    assert info.input_shape == (1, 8, 8) and info.num_classes == 10
    assert (info.train_size, info.test_size) == (100, 50)
    assert len(train.dataset) == 100 and len(test.dataset) == 50
    first = [y.tolist() for _, y in train]
    again = [y.tolist() for _, y in make_loaders("digits", batch_size=32, seed=3, subset=100)[0]]
    assert first == again
    other = [y.tolist() for _, y in make_loaders("digits", batch_size=32, seed=4, subset=100)[0]]
    assert first != other


def _orders(loader, passes: int) -> list[list[int]]:
    return [[int(v) for _, y in loader for v in y] for _ in range(passes)]


def test_training_order_is_not_disturbed_by_extra_iterators() -> None:
    """The order of pass p depends only on (seed, passes completed): an extra ``iter()`` (what
    ``tqdm.auto``'s asyncio class does in its constructor), a peeked batch or a pass cut off
    change nothing (issue 19: progress bars changed every result)."""
    from tqdm.asyncio import tqdm_asyncio  # the class tqdm.auto resolves to in a terminal

    from memxbar.experiments.datasets import PassSampler
    plain = _orders(make_loaders("digits", batch_size=64, seed=1, subset=300)[0], 3)
    loader = make_loaders("digits", batch_size=64, seed=1, subset=300)[0]
    disturbed = []
    for _ in range(3):
        iter(loader)  # never read
        next(iter(loader))  # one batch read, pass abandoned
        disturbed.append([int(v) for _, y in tqdm_asyncio(loader, disable=True) for v in y])
    assert disturbed == plain
    assert plain[0] != plain[1] != plain[2]  # a new order each pass
    assert sorted(plain[0]) == sorted(plain[1])  # every sample once per pass
    sampler = loader.sampler
    assert isinstance(sampler, PassSampler) and sampler.state_dict() == {"passes": 3}
    resumed = make_loaders("digits", batch_size=64, seed=1, subset=300)[0]
    resumed.sampler.load_state_dict({"passes": 2})
    assert _orders(resumed, 1)[0] == plain[2]
    for bad in ({"passes": -1}, {"passes": 1.5}, {"passes": True}, {}, [2]):
        with pytest.raises(ValueError, match="PassSampler state"):
            resumed.sampler.load_state_dict(bad)


def test_make_loaders_idx_info(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    train, test, info = make_loaders("mnist", tmp_path, batch_size=4, verify=False)
    x, y = next(iter(train))
    assert x.shape == (4, 1, 28, 28) and y.dtype == torch.int64
    assert info.input_shape == (1, 28, 28) and info.mean == (0.1307,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "imagenet"}, "dataset.name='imagenet'.*allowed"),
        ({"name": "mnist"}, "data_dir=None"),
        ({"name": "digits", "subset": 0}, "dataset.subset=0"),
        ({"name": "digits", "batch_size": 0}, "dataset.batch_size=0"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_loaders(**kwargs)


@pytest.mark.parametrize("name", ["digits", "mnist", "fashion_mnist", "cifar10"])
def test_dataset_configs_match_make_loaders(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMXBAR_DATA", "/data")
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"), resolve=True)
    assert cfg["name"] == name
    assert set(cfg) <= set(inspect.signature(make_loaders).parameters)
    if name != "digits":
        assert cfg["data_dir"] == f"/data/{name}"


def test_embedded_digits_are_scikit_learns_digits_and_split() -> None:
    """Issue 25: the digits ship as a 47 KB file so the install needs no scikit-learn (51 MB);
    the file holds exactly scikit-learn's images, labels and the stratified split the loader
    always used (scikit-learn is a dev dependency: CI has it), so every digits result is
    unchanged."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = bunch.images.astype(np.float32)[:, None] / 16.0
    split = train_test_split(images, bunch.target.astype(np.int64),
                             test_size=datasets._DIGITS_TEST_FRACTION,
                             random_state=datasets._DIGITS_SPLIT_SEED, stratify=bunch.target)
    x_train, x_test, y_train, y_test, mean, std = datasets._digits_arrays()
    for ours, theirs in zip((x_train, x_test, y_train, y_test), split, strict=True):
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
    assert (len(y_train), len(y_test)) == (1437, 360)
    assert mean == float(split[0].mean()) and std == float(split[0].std())
    assert "sklearn" not in inspect.getsource(datasets)
