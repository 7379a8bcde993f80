"""Tests for the matplotlib loss-curve chart: colours, scales, gaps, empty charts, quiet import."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from cyclegan_jobs import plots

NAN, INF = float("nan"), float("inf")


def _rgb(index: int) -> np.ndarray:
    return np.array(to_rgb(plots.COLOURS[index])) * 255


def _mask(picture: np.ndarray, index: int, tolerance: int = 40) -> np.ndarray:
    """Pixels of series `index`'s colour (the middle of its antialiased line)."""
    return np.abs(picture.astype(int) - _rgb(index)).sum(axis=-1) < tolerance


def _frame(picture: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the plot area: the dark rows and columns of its frame."""
    dark = picture.max(axis=-1) < 100
    rows = np.flatnonzero(dark.mean(axis=1) > 0.4)
    cols = np.flatnonzero(dark.mean(axis=0) > 0.4)
    assert len(rows) >= 2 and len(cols) >= 2, "no plot frame found"
    return rows[0], rows[-1], cols[0], cols[-1]


def _inside(picture: np.ndarray, mask: np.ndarray) -> np.ndarray:
    top, bottom, left, right = _frame(picture)
    inner = np.zeros_like(mask)
    inner[top + 2 : bottom - 1, left + 2 : right - 1] = True
    return mask & inner


def test_each_series_is_drawn_in_its_own_colour_where_its_values_are() -> None:
    steps = range(0, 1000, 10)
    series = {
        "low": [(s, 1.0) for s in steps],
        "high": [(s, 3.0) for s in steps],
        "rising": [(s, 1.0 + s / 500) for s in steps],
    }
    chart = plots.line_chart(series, title="losses")
    assert chart.shape == (450, 800, 3) and chart.dtype == np.uint8
    lines = [_inside(chart, _mask(chart, i)) for i in range(3)]
    # Long lines: hundreds of pixels each, in the plot area; no fourth colour anywhere.
    assert all(line.sum() > 500 for line in lines)
    assert _mask(chart, 3).sum() == 0
    low_rows, high_rows = np.nonzero(lines[0])[0], np.nonzero(lines[1])[0]
    assert np.ptp(low_rows) <= 3 and np.ptp(high_rows) <= 3  # flat series: horizontal lines
    assert high_rows.mean() < low_rows.mean() - 100  # 3.0 is drawn well above 1.0
    rows, cols = np.nonzero(lines[2])
    assert np.corrcoef(rows, cols)[0, 1] < -0.99  # rising: up (smaller rows) to the right
    # The legend is right of the plot area: each colour there too, as a short swatch.
    right = _frame(chart)[3]
    assert all(_mask(chart, i)[:, right + 5 :].sum() > 10 for i in range(3))


def _mid_height(chart: np.ndarray) -> float:
    """Where series 0 crosses the middle column of its line: 0 at its lowest, 1 at its highest."""
    rows, cols = np.nonzero(_inside(chart, _mask(chart, 0)))
    middle = (cols.min() + cols.max()) // 2
    row = rows[cols == middle].mean()
    return (rows.max() - row) / (rows.max() - rows.min())


def test_log_scale_spaces_decades_evenly() -> None:
    series = {"loss": [(s, 10 ** (3 * s / 100)) for s in range(101)]}  # 1 .. 1000
    log = plots.line_chart(series, title="log", log_y=True, width=640, height=400)
    linear = plots.line_chart(series, title="linear", width=640, height=400)
    # Its middle value (31.6) halfway up in log scale; near the bottom (3 % up) in linear.
    assert abs(_mid_height(log) - 0.5) < 0.05
    assert _mid_height(linear) < 0.1
    assert not np.array_equal(log, linear)


def test_the_title_is_drawn_above_the_plot() -> None:
    series = {"loss": [(s, 1.0 / (s + 1)) for s in range(50)]}
    titled = plots.line_chart(series, title="training losses", width=640, height=400)
    untitled = plots.line_chart(series, title="", width=640, height=400)
    top = _frame(titled)[0]
    assert (titled[: top - 2].max(axis=-1) < 100).sum() > 50  # dark text above the frame
    assert (untitled[: _frame(untitled)[0] - 2] == 255).all()


def test_unusable_points_leave_gaps_and_lone_points_are_dots() -> None:
    values = [1.0 + s for s in range(101)]
    for s in range(35, 66):  # a gap of NaN, inf, None, 0 and negatives, with one good point
        values[s] = [NAN, INF, -INF, None, 0.0, -1.0][s % 6]
    values[50] = 51.0
    chart = plots.line_chart({"loss": list(enumerate(values))}, title="gaps", log_y=True)
    line = _inside(chart, _mask(chart, 0))
    cols = np.flatnonzero(line.any(axis=0))
    left, right = cols.min(), cols.max()
    at = [round(left + (right - left) * f) for f in (0.2, 0.42, 0.5, 0.58, 0.8)]
    drawn = [line[:, c - 1 : c + 2].any() for c in at]
    assert drawn == [True, False, True, False, True]  # line, gap, the dot, gap, line
    dot = line[:, at[2] - 6 : at[2] + 7].sum()
    assert 10 < dot < 60  # a small round marker, not a vertical line
    # In linear scale the zero and negative values are kept: no gap where they are.
    linear = plots.line_chart({"loss": [(0, 1.0), (1, 0.0), (2, -1.0), (3, NAN)]}, title="x")
    assert _inside(linear, _mask(linear, 0)).sum() > 300


def test_empty_charts_say_so_at_the_requested_size() -> None:
    for series in ({}, {"loss": []}, {"loss": [(0, NAN), (1, INF)], "disc": [(0, -1.0)]}):
        chart = plots.line_chart(series, title="nothing yet", width=320, height=200, log_y=True)
        assert chart.shape == (200, 320, 3) and chart.dtype == np.uint8
        assert (np.ptp(chart, axis=-1) < 10).all()  # no line of any colour: only greys
        top, bottom, left, right = _frame(chart)
        inside = chart[top + 3 : bottom - 2, left + 3 : right - 2]
        grey = (inside.max(axis=-1) < 200) & (np.ptp(inside, axis=-1) < 10)
        assert grey.sum() > 30  # the "no data" text in the middle
        assert (inside == 255).all(axis=-1).mean() > 0.95


def test_a_single_point_and_odd_sizes() -> None:
    chart = plots.line_chart({"only": [(5, 2.0)]}, title="one step", width=333, height=211)
    assert chart.shape == (211, 333, 3)
    assert _inside(chart, _mask(chart, 0)).sum() > 10  # its dot
    for width, height in ((799, 451), (1234, 567)):
        assert plots.line_chart({}, title="", width=width, height=height).shape == (
            height,
            width,
            3,
        )


def test_trainings_call_and_threads() -> None:
    # train.loss_curve's call: step/value pairs, a curve with no points yet, log scale.
    series = {
        "gen": [(s, 2.0 / (1 + s / 100)) for s in range(0, 500, 10)],
        "disc": [(s, 0.5) for s in range(0, 500, 10)],
        "identity": [],
    }
    expected = plots.line_chart(series, title="training losses (interval means)", log_y=True)
    assert all(_inside(expected, _mask(expected, i)).sum() > 300 for i in (0, 1))
    # No pyplot, no shared figure: charts drawn at once in threads are the same pictures.
    with ThreadPoolExecutor(4) as pool:
        pictures = list(
            pool.map(
                lambda _: plots.line_chart(
                    series, title="training losses (interval means)", log_y=True
                ),
                range(4),
            )
        )
    assert all(np.array_equal(picture, expected) for picture in pictures)


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_building_the_font_cache_logs_no_warning(level: str, tmp_path: Path) -> None:
    # A fresh cache folder, and matplotlib's 5 s "building the font cache" timer made to fire
    # at once: the notice must not come out as a WARNING (Airflow's task log would show it).
    code = (
        "import logging, threading\n"
        f"logging.basicConfig(level=logging.{level}, format='%(levelname)s %(message)s')\n"
        "timer = threading.Timer\n"
        "threading.Timer = lambda delay, fn, *a, **k: timer(0, fn, *a, **k)\n"
        "from cyclegan_jobs import plots\n"
        "plots.line_chart({'a': [(0, 1.0), (1, 2.0)]}, title='t')\n"
    )
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert list(tmp_path.glob("fontlist-*.json")), "the font cache was not built"
    assert "WARNING" not in done.stderr, done.stderr
    notice = [line for line in done.stderr.splitlines() if "building the font cache" in line]
    at_debug = ["DEBUG Matplotlib is building the font cache; this may take a moment."]
    assert notice == (at_debug if level == "DEBUG" else [])
