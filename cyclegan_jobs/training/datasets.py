"""Training data: a domain from a folder / S3 prefix, a .npy array or tfds; the tf.data pipeline."""

from __future__ import annotations

import hashlib
import io
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cyclegan_jobs import storage
from cyclegan_jobs.errors import DataError
from cyclegan_jobs.images import IMAGE_SUFFIXES, ImageDecodeError, decode_image, resize

if TYPE_CHECKING:
    import tensorflow as tf

TFDS_SCHEME = "tfds:"
# The seed's train_test_split(face, test_size=0.3, random_state=42).
NPY_SPLIT_SEED = 42
# Above this, images are gathered by a numpy callback rather than embedded in the tf.data graph
# as a constant (graph constants are copied, and a serialized graph must stay under 2 GB).
CONSTANT_LIMIT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays has no single truth value
class DomainData:
    """One domain's images, split into train and held-out test, and what they were read from."""

    train: np.ndarray  # uint8 (N, S, S, 3)
    test: np.ndarray  # uint8 (M, S, S, 3), M may be 0
    snapshot: list[dict]  # [{"key", "etag"}] of the source objects read, to detect new data
    skipped: list[dict]  # [{"key", "reason"}] of files that could not be decoded


def load_domain(
    uri: str,
    image_size: int,
    *,
    domain: str,
    holdout: float = 0.3,
    limit: int | None = None,
    workers: int = 8,
) -> DomainData:
    """Load one domain ("a" or "b") from an image prefix, a .npy file or a tfds: source.

    Images are resized to image_size x image_size. `holdout` is the held-out fraction; `limit`
    caps the training images (and the held-out ones) for quick runs.
    """
    if domain not in ("a", "b"):
        raise DataError(f"domain must be 'a' or 'b', got {domain!r}")
    if not 0.0 <= holdout < 1.0:
        raise DataError(f"holdout must be in [0, 1), got {holdout}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    if uri.startswith(TFDS_SCHEME):
        data = _load_tfds(uri, image_size, domain=domain, limit=limit)
    elif uri.lower().endswith(".npy"):
        data = _load_npy(uri, image_size, domain=domain, holdout=holdout, limit=limit)
    else:
        data = _load_prefix(uri, image_size, domain, holdout, limit, workers)
    if len(data.train) == 0:
        raise DataError(f"domain {domain} is empty: no readable images under {uri}")
    return data


def holdout_fraction(key: str) -> float:
    """A stable number in [0, 1) for a relative key: below `holdout` means held out for testing.

    A hash of the key alone, so adding files to a prefix never moves old ones between splits.
    """
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _load_prefix(
    uri: str, image_size: int, domain: str, holdout: float, limit: int | None, workers: int
) -> DomainData:
    try:
        objects = list(storage.list_objects(uri, suffixes=IMAGE_SUFFIXES))
    except storage.StorageError as err:
        raise DataError(f"cannot read domain {domain} images from {uri}: {err}") from err
    train = [obj for obj in objects if holdout_fraction(obj.rel) >= holdout]
    test = [obj for obj in objects if holdout_fraction(obj.rel) < holdout]
    if limit is not None:
        train, test = train[:limit], test[:limit]

    def fetch(obj: storage.ObjectInfo) -> np.ndarray | str:
        try:
            data = storage.read_bytes(obj.uri)
        except storage.StorageError as err:  # e.g. deleted between listing and reading
            return f"read failed: {err}"
        try:
            return resize(decode_image(data, draft_size=image_size), image_size)
        except ImageDecodeError as err:
            return err.reason

    chosen = train + test
    pictures = np.empty((len(chosen), image_size, image_size, 3), dtype=np.uint8)
    usable: list[bool] = []
    skipped: list[dict] = []
    # Reading is I/O and decoding/resizing release the GIL in Pillow, so threads overlap both.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, (obj, result) in enumerate(zip(chosen, pool.map(fetch, chosen), strict=True)):
            if isinstance(result, str):
                skipped.append({"key": obj.rel, "reason": result})
                usable.append(False)
            else:
                pictures[i] = result
                usable.append(True)
    if not any(usable):
        message = f"domain {domain} is empty: no readable images under {uri}"
        if skipped:  # say why, or an unreadable bucket looks like an empty one
            first = skipped[0]
            message += f" ({len(skipped)} skipped, e.g. {first['key']}: {first['reason']})"
        raise DataError(message)
    keep = np.array(usable)
    is_train = np.arange(len(chosen)) < len(train)
    train_idx = np.flatnonzero(keep & is_train)
    test_idx = np.flatnonzero(keep & ~is_train)
    if len(train_idx) == 0:
        # Tiny domains can hash entirely into the test split; training needs at least one image.
        train_idx, test_idx = test_idx[:1], test_idx[1:]
    return DomainData(
        train=pictures[train_idx],
        test=pictures[test_idx],
        snapshot=[{"key": obj.rel, "etag": obj.etag} for obj in chosen],
        skipped=skipped,
    )


def _npy_key(uri: str) -> str:
    """The snapshot key of a .npy source: its file name (training and new_data must agree)."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


def npy_split(n: int, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices exactly as sklearn's train_test_split(test_size=holdout,
    random_state=42) draws them, which is how the seed split its face array.

    sklearn's ShuffleSplit: n_test = ceil(test_size * n), n_train = n - n_test, then
    permutation = RandomState(42).permutation(n); test = permutation[:n_test];
    train = permutation[n_test:n_test + n_train].
    """
    n_test = math.ceil(holdout * n)
    n_train = n - n_test
    permutation = np.random.RandomState(NPY_SPLIT_SEED).permutation(n)
    return permutation[n_test : n_test + n_train], permutation[:n_test]


def _load_npy(
    uri: str, image_size: int, *, domain: str, holdout: float, limit: int | None
) -> DomainData:
    try:
        etag = storage.head(uri)["etag"]
        raw = storage.read_bytes(uri)
    except storage.StorageError as err:
        raise DataError(f"cannot read domain {domain} array {uri}: {err}") from err
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{uri} is not a readable .npy file: {err}") from err
    del raw
    expected = "expected N x H x W x 3 uint8"
    if not isinstance(array, np.ndarray) or array.ndim != 4 or array.shape[-1] != 3:
        shape = " x ".join(map(str, getattr(array, "shape", ()))) or "a scalar"
        raise DataError(f"{uri} holds an array of shape {shape}, {expected}")
    if array.dtype != np.uint8:
        # Integer arrays of 0..255 are uint8 in all but name; floats are ambiguous (0-1? -1..1?).
        in_range = array.size == 0 or (array.min() >= 0 and array.max() <= 255)
        if not (np.issubdtype(array.dtype, np.integer) and in_range):
            raise DataError(f"{uri} holds {array.dtype} values, {expected} (0-255)")
        array = array.astype(np.uint8)
    if len(array) == 0:
        raise DataError(f"domain {domain} is empty: no images in {uri}")
    train_idx, test_idx = npy_split(len(array), holdout)
    if len(train_idx) == 0:
        train_idx, test_idx = test_idx[:1], test_idx[1:]
    if limit is not None:
        train_idx, test_idx = train_idx[:limit], test_idx[:limit]
    name = _npy_key(uri)
    return DomainData(
        train=_resize_all(array[train_idx], image_size),
        test=_resize_all(array[test_idx], image_size),
        snapshot=[{"key": name, "etag": etag}],
        skipped=[],
    )


def _resize_all(array: np.ndarray, image_size: int) -> np.ndarray:
    if array.shape[1:3] == (image_size, image_size):
        return array
    out = np.empty((len(array), image_size, image_size, 3), dtype=np.uint8)
    for i, picture in enumerate(array):
        out[i] = resize(picture, image_size)
    return out


def _load_tfds(uri: str, image_size: int, *, domain: str, limit: int | None) -> DomainData:
    # "tfds:cycle_gan/vangogh2photo" or "tfds:cycle_gan/vangogh2photo:trainB".
    name, _, split = uri[len(TFDS_SCHEME) :].partition(":")
    try:
        import tensorflow_datasets as tfds  # optional, heavy, and it needs the network
    except ImportError as err:
        raise DataError(
            f"tfds source {uri} needs tensorflow-datasets: pip install tensorflow-datasets"
        ) from err
    train_split = split or f"train{domain.upper()}"
    test_split = train_split.replace("train", "test", 1) if "train" in train_split else None
    try:
        builder = tfds.builder(name)
        builder.download_and_prepare()
        splits = builder.info.splits
    except Exception as err:  # tfds raises many types (network, registration, checksum)
        raise DataError(f"cannot load tfds dataset {name}: {err}") from err

    def take(split_name: str | None) -> np.ndarray:
        out = np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
        if split_name is None or split_name not in splits:
            return out
        dataset = builder.as_dataset(split=split_name, as_supervised=True)
        if limit is not None:
            dataset = dataset.take(limit)
        pictures = [resize(image, image_size) for image, _ in tfds.as_numpy(dataset)]
        return np.stack(pictures) if pictures else out

    if train_split not in splits:
        raise DataError(f"tfds dataset {name} has no split {train_split!r}: {sorted(splits)}")
    version = str(builder.info.version)
    return DomainData(
        train=take(train_split),
        test=take(test_split),
        snapshot=[{"key": f"{name}:{train_split}", "etag": version}],
        skipped=[],
    )


def epoch_order(n: int, *, seed: int, epoch: int, shuffle_buffer: int = 1000) -> np.ndarray:
    """The order of image indices in one epoch: a pure function of (n, seed, epoch, buffer).

    Computed in numpy instead of by tf.data's shuffle, whose order also depends on TensorFlow's
    global seed; this way a resumed job sees exactly the same order whatever else it seeded.
    A buffer >= n is a uniform shuffle; a smaller one mimics Dataset.shuffle(buffer): each output
    is picked at random from a window of the next `buffer` indices.
    """
    rng = np.random.default_rng(_entropy(seed, epoch))
    if shuffle_buffer >= n:
        return rng.permutation(n)
    picks = rng.random(n)
    window = list(range(shuffle_buffer))
    following = shuffle_buffer
    order = np.empty(n, dtype=np.int64)
    for k in range(n):
        j = int(picks[k] * len(window))
        order[k] = window[j]
        if following < n:
            window[j] = following
            following += 1
        else:
            window[j] = window[-1]
            window.pop()
    return order


def _entropy(*values: int) -> list[int]:
    # numpy seed sequences take non-negative integers; wrap negatives instead of failing.
    return [value % 2**64 for value in values]


def training_dataset(
    images: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    jitter: bool = False,
    shuffle_buffer: int = 1000,
) -> tf.data.Dataset:
    """One epoch of shuffled float32 batches in [-1, 1], shape (batch_size, S, S, 3).

    Deterministic for (images, seed, epoch): `.skip(k)` resumes exactly after k batches. The
    last partial batch is dropped. `jitter` (the paper's augmentation) resizes to 286/256 of the
    size, crops back at random and flips at random, with stateless ops seeded by
    (seed, epoch, index), so it is reproducible too.
    """
    # Imported here: loading images does not need TensorFlow, which takes seconds to import.
    import tensorflow as tf

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"expected uint8 N x H x W x 3 images, got {images.dtype} {images.shape}")
    n, height, width = images.shape[:3]
    if batch_size < 1 or n < batch_size:
        raise DataError(f"{n} images cannot make one batch of {batch_size}")
    order = epoch_order(n, seed=seed, epoch=epoch, shuffle_buffer=shuffle_buffer)

    if images.nbytes <= CONSTANT_LIMIT_BYTES:
        table = tf.constant(images)

        def gather(index: tf.Tensor) -> tf.Tensor:
            return tf.gather(table, index)
    else:

        def gather(index: tf.Tensor) -> tf.Tensor:
            picture = tf.numpy_function(lambda i: images[i], [index], tf.uint8, stateful=False)
            picture.set_shape((height, width, 3))
            return picture

    # A per-epoch key for the stateless jitter ops; each image then folds in its own index.
    epoch_key = np.random.default_rng(_entropy(seed, epoch, 1)).integers(0, 2**31 - 1, size=2)
    big = (round(height * 286 / 256), round(width * 286 / 256))

    def load(index: tf.Tensor) -> tf.Tensor:
        picture = tf.cast(gather(index), tf.float32) / 127.5 - 1.0  # the seed's normalize()
        if jitter:
            key = tf.random.experimental.stateless_fold_in(
                tf.constant(epoch_key, dtype=tf.int64), index
            )
            crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
            # Nearest-neighbour, as in the TensorFlow CycleGAN tutorial: no blur before the crop.
            picture = tf.image.resize(picture, big, method="nearest")
            picture = tf.image.stateless_random_crop(picture, (height, width, 3), seed=crop_key)
            picture = tf.image.stateless_random_flip_left_right(picture, seed=flip_key)
        return picture

    dataset = tf.data.Dataset.from_tensor_slices(order)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def source_snapshot(uri: str) -> list[dict]:
    """[{"key", "etag"}] of a domain's source objects, from a listing (nothing is downloaded)."""
    if uri.startswith(TFDS_SCHEME):
        return []  # a tfds split changes only with its version, which training records
    try:
        if uri.lower().endswith(".npy"):
            return [{"key": _npy_key(uri), "etag": storage.head(uri)["etag"]}]
        objects = storage.list_objects(uri, suffixes=IMAGE_SUFFIXES)
        return [{"key": obj.rel, "etag": obj.etag} for obj in objects]
    except storage.StorageError as err:
        raise DataError(f"cannot list {uri}: {err}") from err
