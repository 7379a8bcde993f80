"""Tests for the synthetic faces, the fixed painting style and the sample domains on disk."""

from __future__ import annotations

import numpy as np
import pytest

from cyclegan_jobs import storage
from cyclegan_jobs.images import decode_image
from cyclegan_jobs.sample_data import paint, synthetic_faces, write_npy, write_sample_domains


def test_faces_are_deterministic_per_seed() -> None:
    first = synthetic_faces(6, 32, seed=3)
    assert first.shape == (6, 32, 32, 3) and first.dtype == np.uint8
    assert first.tobytes() == synthetic_faces(6, 32, seed=3).tobytes()
    assert not np.array_equal(first, synthetic_faces(6, 32, seed=4))


def test_faces_vary_and_have_a_face_in_the_middle() -> None:
    faces = synthetic_faces(40, 48, seed=0).astype(int)
    # Different pictures, not one picture repeated.
    assert len({face.tobytes() for face in faces}) == 40
    assert faces.std(axis=0).mean() > 20
    # A head sits in the middle: the centre differs from the corners' background in each image.
    centre = faces[:, 20:28, 20:28].mean(axis=(1, 2))
    corner = faces[:, :4, :4].mean(axis=(1, 2))
    assert (np.abs(centre - corner).sum(axis=1) > 15).mean() > 0.8
    # Eyes: the darkest spots of the upper face are much darker than the skin around them.
    upper = faces[:, 14:24, 12:36].mean(axis=-1)
    assert (upper.min(axis=(1, 2)) < np.median(upper, axis=(1, 2)) - 40).all()


def test_face_chunks_do_not_change_results() -> None:
    many = synthetic_faces(70, 16, seed=5)  # more than one rendering chunk
    assert many.shape == (70, 16, 16, 3)
    assert many.tobytes() == synthetic_faces(70, 16, seed=5).tobytes()
    assert synthetic_faces(0, 16, seed=5).shape == (0, 16, 16, 3)
    with pytest.raises(ValueError):
        synthetic_faces(2, 4, seed=0)


def test_paint_is_a_fixed_style_that_changes_pictures() -> None:
    faces = synthetic_faces(8, 32, seed=1)
    painted = paint(faces)
    assert painted.shape == faces.shape and painted.dtype == np.uint8
    assert painted.tobytes() == paint(faces).tobytes()
    assert np.abs(painted.astype(int) - faces).mean() > 8
    # Same picture, same result, alone or in a batch: it depends only on pixels and positions.
    np.testing.assert_array_equal(paint(faces[3]), painted[3])
    with pytest.raises(ValueError):
        paint(faces.astype(np.float32))


def test_paint_keeps_tones_in_order_so_it_can_be_undone() -> None:
    # One pixel position (so the same brush texture) at 256 grey levels: the style must keep
    # darker inputs darker and keep nearly all levels distinct, or the cycle back is impossible.
    greys = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None, None], 3, axis=3)
    luma = paint(greys)[:, 0, 0].astype(float) @ [0.299, 0.587, 0.114]
    assert np.all(np.diff(luma) >= -1.0)
    assert len(np.unique(paint(greys)[:, 0, 0], axis=0)) > 200
    # And it pulls colours toward the palette: highlights yellow (blue channel lowest).
    white = paint(np.full((1, 1, 3), 250, dtype=np.uint8))[0, 0].astype(int)
    assert white[2] < white[0] - 40 and white[2] < white[1] - 30


def test_paint_texture_is_mild_and_tied_to_position() -> None:
    flat = np.full((1, 32, 32, 3), 140, dtype=np.uint8)
    painted = paint(flat)[0].astype(float)
    # A flat input shows the brush texture, a few percent of brightness and no more.
    spread = painted.mean(axis=-1)
    assert 2 < spread.max() - spread.min() < 0.15 * spread.mean()


def test_write_sample_domains(tmp_path) -> None:
    out = write_sample_domains(str(tmp_path / "sample"), n_a=3, n_b=4, size=24, seed=2)
    assert out["n_a"] == 3 and out["n_b"] == 4
    a = [info.rel for info in storage.list_objects(out["domain_a"])]
    b = [info.rel for info in storage.list_objects(out["domain_b"])]
    assert a == ["paint_0000.png", "paint_0001.png", "paint_0002.png"]
    assert b == [f"face_{i:04d}.png" for i in range(4)]
    decoded_a = np.stack(
        [decode_image(storage.read_bytes(storage.join(out["domain_a"], r))) for r in a]
    )
    decoded_b = np.stack(
        [decode_image(storage.read_bytes(storage.join(out["domain_b"], r))) for r in b]
    )
    np.testing.assert_array_equal(decoded_a, paint(synthetic_faces(3, 24, seed=5)))
    np.testing.assert_array_equal(decoded_b, synthetic_faces(4, 24, seed=4))


def test_write_npy_round_trip(tmp_path) -> None:
    faces = synthetic_faces(2, 16, seed=0)
    uri = write_npy(str(tmp_path / "faces.npy"), faces)
    np.testing.assert_array_equal(np.load(uri), faces)
