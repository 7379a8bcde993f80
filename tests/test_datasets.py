"""Tests for loading domains (folders, .npy, tfds) and the deterministic tf.data pipeline."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest

from cyclegan_jobs.images import encode_jpeg, encode_png
from cyclegan_jobs.training import datasets
from cyclegan_jobs.training.datasets import DataError, load_domain, training_dataset


def _solid(value: int, size: int = 20) -> np.ndarray:
    """A picture whose red channel names it, so tests can tell which files ended up where."""
    picture = np.zeros((size, size, 3), dtype=np.uint8)
    picture[..., 0] = value
    picture[..., 1] = 40
    return picture


def _write_folder(folder: Path, ids: range) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        (folder / f"img_{i:03d}.png").write_bytes(encode_png(_solid(i)))


def _ids(array: np.ndarray) -> set[int]:
    return {int(picture[0, 0, 0]) for picture in array}


def test_folder_with_a_corrupt_file(tmp_path: Path) -> None:
    _write_folder(tmp_path, range(1, 7))
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "UPPER.JPG").write_bytes(encode_jpeg(_solid(200)))
    (tmp_path / "corrupt.png").write_bytes(b"definitely not a png")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")

    data = load_domain(str(tmp_path), 16, domain="b")
    assert data.train.dtype == np.uint8 and data.train.shape[1:] == (16, 16, 3)
    assert data.test.shape[1:] == (16, 16, 3)
    assert len(data.train) + len(data.test) == 7
    assert data.skipped == [{"key": "corrupt.png", "reason": "not an image"}]
    keys = [entry["key"] for entry in data.snapshot]
    assert sorted(keys) == sorted(
        ["corrupt.png", "nested/UPPER.JPG"] + [f"img_{i:03d}.png" for i in range(1, 7)]
    )
    assert all(entry["etag"] for entry in data.snapshot)
    assert 195 <= max(int(p[8, 8, 0]) for p in np.concatenate([data.train, data.test]))


def test_missing_prefix_and_empty_domain_are_clear(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(DataError, match="nope"):
        load_domain(missing, 16, domain="a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"domain b is empty: no readable images under .*empty"):
        load_domain(str(tmp_path / "empty"), 16, domain="b")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"domain a is empty.*1 skipped, e\.g\. x\.jpg: empty file"):
        load_domain(str(tmp_path / "bad"), 16, domain="a")
    with pytest.raises(DataError, match="domain must be"):
        load_domain(str(tmp_path), 16, domain="c")


def test_hash_split_is_stable_when_files_are_added(tmp_path: Path) -> None:
    _write_folder(tmp_path, range(1, 31))
    before = load_domain(str(tmp_path), 8, domain="b", holdout=0.3)
    assert 0 < len(before.test) < 30
    _write_folder(tmp_path, range(31, 61))
    after = load_domain(str(tmp_path), 8, domain="b", holdout=0.3)
    old = set(range(1, 31))
    assert _ids(after.train) & old == _ids(before.train)
    assert _ids(after.test) & old == _ids(before.test)
    # The split is the documented hash of the relative key.
    expected_test = {i for i in range(1, 61) if datasets.holdout_fraction(f"img_{i:03d}.png") < 0.3}
    assert _ids(after.test) == expected_test


def test_at_least_one_training_image_and_limit(tmp_path: Path) -> None:
    _write_folder(tmp_path / "one", range(5, 6))
    data = load_domain(str(tmp_path / "one"), 8, domain="a", holdout=0.99)
    assert _ids(data.train) == {5} and len(data.test) == 0

    _write_folder(tmp_path / "many", range(1, 21))
    full = load_domain(str(tmp_path / "many"), 8, domain="a", holdout=0.3)
    limited = load_domain(str(tmp_path / "many"), 8, domain="a", holdout=0.3, limit=3)
    assert len(limited.train) == 3
    assert [int(p[0, 0, 0]) for p in limited.train] == [int(p[0, 0, 0]) for p in full.train[:3]]
    assert len(limited.snapshot) == 3 + len(limited.test)


def _npy(path: Path, array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array)
    path.write_bytes(buffer.getvalue())
    return str(path)


def test_npy_split_matches_the_seeds_train_test_split(tmp_path: Path) -> None:
    faces = np.stack([_solid(i, size=8) for i in range(10)])
    data = load_domain(_npy(tmp_path / "faces.npy", faces), 8, domain="b")
    # sklearn's train_test_split(face, test_size=0.3, random_state=42) on 10 items:
    # n_test = ceil(0.3 * 10) = 3, RandomState(42).permutation(10) = [8 1 5 0 7 2 9 4 3 6],
    # test = the first 3, train = the other 7 in that order.
    assert np.random.RandomState(42).permutation(10).tolist() == [8, 1, 5, 0, 7, 2, 9, 4, 3, 6]
    assert [int(p[0, 0, 0]) for p in data.test] == [8, 1, 5]
    assert [int(p[0, 0, 0]) for p in data.train] == [0, 7, 2, 9, 4, 3, 6]
    assert data.skipped == []
    assert len(data.snapshot) == 1
    assert data.snapshot[0]["key"] == "faces.npy" and data.snapshot[0]["etag"]


@pytest.mark.parametrize(("n", "holdout", "n_test"), [(10, 0.3, 3), (7, 0.3, 3), (100, 0.25, 25)])
def test_npy_split_sizes(n: int, holdout: float, n_test: int) -> None:
    train, test = datasets.npy_split(n, holdout)
    assert len(test) == n_test and len(train) == n - n_test
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(n))


def test_npy_is_resized_limited_and_integer_arrays_accepted(tmp_path: Path) -> None:
    faces = np.stack([_solid(i, size=12) for i in range(10)]).astype(np.int64)
    data = load_domain(_npy(tmp_path / "f.npy", faces), 8, domain="b", limit=4)
    assert data.train.shape == (4, 8, 8, 3) and data.train.dtype == np.uint8
    assert [int(p[4, 4, 0]) for p in data.train] == [0, 7, 2, 9]


@pytest.mark.parametrize(
    ("array", "found"),
    [
        (np.zeros((10, 8, 8), dtype=np.uint8), "10 x 8 x 8"),
        (np.zeros((2, 8, 8, 4), dtype=np.uint8), "2 x 8 x 8 x 4"),
        (np.zeros((2, 8, 8, 3), dtype=np.float32), "float32"),
        (np.full((2, 8, 8, 3), 300, dtype=np.int32), "int32"),
    ],
)
def test_npy_wrong_shape_or_dtype(tmp_path: Path, array: np.ndarray, found: str) -> None:
    with pytest.raises(DataError, match="N x H x W x 3 uint8") as info:
        load_domain(_npy(tmp_path / "bad.npy", array), 8, domain="b")
    assert found in str(info.value)


def test_npy_missing_or_not_npy(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.npy"):
        load_domain(str(tmp_path / "missing.npy"), 8, domain="b")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a readable .npy"):
        load_domain(str(tmp_path / "junk.npy"), 8, domain="b")


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_datasets") is not None,
    reason="tensorflow-datasets is installed here",
)
def test_tfds_without_tensorflow_datasets() -> None:
    with pytest.raises(DataError, match="pip install tensorflow-datasets"):
        load_domain("tfds:cycle_gan/vangogh2photo", 64, domain="a")


def test_epoch_order_is_a_seeded_permutation() -> None:
    full = datasets.epoch_order(50, seed=1, epoch=0, shuffle_buffer=1000)
    assert sorted(full.tolist()) == list(range(50))
    np.testing.assert_array_equal(full, datasets.epoch_order(50, seed=1, epoch=0))
    assert not np.array_equal(full, datasets.epoch_order(50, seed=1, epoch=1))
    assert not np.array_equal(full, datasets.epoch_order(50, seed=2, epoch=0))
    windowed = datasets.epoch_order(50, seed=1, epoch=0, shuffle_buffer=5)
    assert sorted(windowed.tolist()) == list(range(50))
    # A window of 5 can only hand out index i once i has entered it: at position k, i < k + 5.
    assert all(i < k + 5 for k, i in enumerate(windowed.tolist()))
    assert len(datasets.epoch_order(4, seed=-3, epoch=0)) == 4


PICTURES = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)


def _batches(dataset) -> list[np.ndarray]:
    return [batch.numpy() for batch in dataset]


def test_training_dataset_batches_values_and_determinism() -> None:
    batches = _batches(training_dataset(PICTURES, batch_size=3, seed=7, epoch=0))
    assert len(batches) == 3  # 10 // 3, the partial batch dropped
    assert all(b.shape == (3, 8, 8, 3) and b.dtype == np.float32 for b in batches)
    values = np.concatenate(batches)
    assert values.min() >= -1.0 and values.max() <= 1.0
    # Each element is one of the pictures through the seed's normalize(), in epoch_order.
    order = datasets.epoch_order(10, seed=7, epoch=0)[:9]
    np.testing.assert_allclose(values, PICTURES[order].astype(np.float32) / 127.5 - 1.0)
    again = _batches(training_dataset(PICTURES, batch_size=3, seed=7, epoch=0))
    np.testing.assert_array_equal(np.concatenate(again), values)
    other_epoch = np.concatenate(
        _batches(training_dataset(PICTURES, batch_size=3, seed=7, epoch=1))
    )
    assert not np.array_equal(other_epoch, values)


@pytest.mark.parametrize("jitter", [False, True])
def test_skip_resumes_exactly(jitter: bool) -> None:
    def make():
        return training_dataset(PICTURES, batch_size=2, seed=3, epoch=4, jitter=jitter)

    full = _batches(make())
    resumed = _batches(make().skip(2))
    assert len(resumed) == len(full) - 2
    for got, want in zip(resumed, full[2:], strict=True):
        np.testing.assert_array_equal(got, want)


def test_jitter_is_deterministic_and_in_range() -> None:
    big = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    first = np.concatenate(
        _batches(training_dataset(big, batch_size=2, seed=0, epoch=0, jitter=True))
    )
    second = np.concatenate(
        _batches(training_dataset(big, batch_size=2, seed=0, epoch=0, jitter=True))
    )
    plain = np.concatenate(_batches(training_dataset(big, batch_size=2, seed=0, epoch=0)))
    np.testing.assert_array_equal(first, second)
    assert first.shape == (6, 16, 16, 3)
    assert first.min() >= -1.0 and first.max() <= 1.0
    assert not np.array_equal(first, plain)  # crops and flips did something


def test_large_arrays_take_the_numpy_gather_path(monkeypatch: pytest.MonkeyPatch) -> None:
    constant = _batches(training_dataset(PICTURES, batch_size=2, seed=5, epoch=1, jitter=True))
    monkeypatch.setattr(datasets, "CONSTANT_LIMIT_BYTES", 0)
    gathered = _batches(training_dataset(PICTURES, batch_size=2, seed=5, epoch=1, jitter=True))
    np.testing.assert_array_equal(np.concatenate(gathered), np.concatenate(constant))


def test_training_dataset_rejects_unusable_input() -> None:
    with pytest.raises(DataError, match="cannot make one batch"):
        training_dataset(PICTURES[:2], batch_size=3, seed=0, epoch=0)
    with pytest.raises(DataError, match="uint8"):
        training_dataset(PICTURES.astype(np.float32), batch_size=2, seed=0, epoch=0)


def test_order_and_jitter_ignore_tensorflow_global_seed() -> None:
    import tensorflow as tf

    results = []
    for global_seed in (1, 2):
        tf.random.set_seed(global_seed)
        dataset = training_dataset(PICTURES, batch_size=2, seed=9, epoch=0, jitter=True)
        results.append(np.concatenate(_batches(dataset)))
    np.testing.assert_array_equal(results[0], results[1])
