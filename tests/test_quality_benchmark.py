"""The known-mapping benchmark, short: 320 steps at 64 px must beat doing nothing by 3 dB.

The full benchmark (10 minutes at 64 px, README) is `benchmarks/quality.py`; this runs the same
code path with a budget a test suite can afford.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from cyclegan_jobs.config import PRESET_BATCH_SIZE, preset
from cyclegan_jobs.evaluation.evaluate import load_style
from cyclegan_jobs.sample_data import synthetic_faces

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import quality  # noqa: E402


@pytest.mark.slow
def test_short_benchmark_beats_the_do_nothing_baseline(tmp_path: Path) -> None:
    # A fixed number of steps (40 epochs x 8), not a time budget: the same run on any machine;
    # the tiny preset's own defaults, as users train it.
    report = quality.run_benchmark(epochs=40, n=64, held_out=16, out=tmp_path, log_every=100)
    assert report["steps"] == 320 and report["batch_size"] == PRESET_BATCH_SIZE["tiny"]
    assert report["loss"] == asdict(preset("tiny")[1]), report["loss"]
    assert report["psnr_model"] > report["psnr_do_nothing"] + 3.0, report
    # Model selection ran (every 100 steps and at the last) and the version is the selected
    # step's: the probe's true PSNR at that step is the exported model's.
    curve = {row["step"]: row for row in report["curve"]}
    assert sorted(curve) == [100, 200, 300, 320]
    selected = curve[report["selected_step"]]
    assert selected["psnr_true"] == pytest.approx(report["psnr_model"], abs=0.02)
    # It also moves the outputs toward the styled domain (distribution, not only pixels).
    swd = report["evaluation"]["swd"]
    assert swd["b2a"] < swd["b2a_untranslated"], swd
    assert (tmp_path / "quality.png").stat().st_size > 0
    assert (tmp_path / "quality.json").is_file()


@pytest.mark.parametrize("name", ["colour_remap", "blur_posterize"])
def test_benchmark_styles_load_by_path_and_change_colours_or_detail(name: str) -> None:
    style = load_style(f"{BENCHMARKS / 'styles.py'}:{name}")
    faces = synthetic_faces(4, 32, seed=5)
    out = style(faces)
    assert out.shape == faces.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - faces).mean() > 5  # a visible change, not identity
    np.testing.assert_array_equal(style(faces[0]), out[0])  # one image == a batch of one
    with pytest.raises(ValueError, match="uint8"):
        style(faces.astype(np.float32))


def test_colour_remap_is_monotonic_per_channel_so_the_cycle_can_invert_it() -> None:
    style = load_style(f"{BENCHMARKS / 'styles.py'}:colour_remap")
    for channel in range(3):
        ramp = np.zeros((1, 256, 3), np.uint8)
        ramp[0, :, channel] = np.arange(256)
        out = style(ramp).astype(int)[0, :, channel]
        assert np.all(np.diff(out) >= 0), channel


@pytest.mark.slow
def test_paired_ceiling_learns_a_style_it_is_shown() -> None:
    # benchmarks/ceiling.py: the preset's generator trained on (face, style(face)) pairs. A
    # pixel-wise style is learned within 200 steps (a broken step, no gradients applied, stays
    # at the residual start's do-nothing figure).
    import ceiling

    style = f"{BENCHMARKS / 'styles.py'}:colour_remap"
    run = ceiling.paired_run(style, {}, steps=200, probe_every=100, n=64, held_out=16)
    assert [row["step"] for row in run["curve"]] == [100, 200]
    assert run["gain_best_db"] > 8.0, run
    assert run["psnr_best"] >= run["psnr_last"] == run["curve"][-1]["psnr_true"]


def test_matrix_runs_get_every_option_the_matrix_was_given(tmp_path: Path) -> None:
    # Each run of --matrix is its own process: what the matrix's command line says about the
    # runs (training images, size, preset, length, threads) must reach every run's own parser.
    given = ["--matrix", "--n", "1024", "--image-size", "32", "--preset", "tiny", "--minutes",
             "2.5", "--held-out", "16", "--select-every", "50", "--threads", "1"]  # fmt: skip
    matrix = quality._parser().parse_args(given)
    style, variant = "benchmarks/styles.py:colour_remap", "x=ema_momentum:0"
    run = quality._parser().parse_args(quality.run_argv(matrix, style, variant, tmp_path))
    for name in ("n", "image_size", "preset", "minutes", "held_out", "select_every", "threads"):
        assert getattr(run, name) == getattr(matrix, name), name
    assert (run.style, run.variant, run.out, run.matrix) == (style, variant, str(tmp_path), False)
    with_epochs = quality._parser().parse_args([*given, "--epochs", "3"])
    run = quality._parser().parse_args(quality.run_argv(with_epochs, style, variant, tmp_path))
    assert run.epochs == 3
