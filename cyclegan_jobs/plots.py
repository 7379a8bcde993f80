"""Charts drawn with matplotlib: the training job's loss curves, as uint8 H x W x 3 pictures.

The object-oriented API on the Agg canvas (Figure + FigureCanvasAgg), never pyplot: no global
figure state and no backend to switch, so charts can be drawn from any thread.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes


class _FontCacheNoticeAtDebug(logging.Filter):
    """Matplotlib's first import on a machine builds a font cache and, after 5 s, logs a WARNING
    that it does; inside Airflow that would be a WARNING line in the training task's log. It is a
    "please wait", not a problem: passed on at DEBUG (and dropped when DEBUG is off)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and "building the font cache" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


# Before matplotlib.figure is imported: that import loads (or builds) the font cache. The install
# steps (Makefile, docker/Dockerfile) build it already; this covers a machine where they did not.
logging.getLogger("matplotlib.font_manager").addFilter(_FontCacheNoticeAtDebug())

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogFormatter, MaxNLocator  # noqa: E402

# Matplotlib's "tab10", set explicitly per series (in order), whatever a matplotlibrc says.
COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
DPI = 100  # the picture is width x height pixels; fonts are sized for this


def line_chart(
    series: dict[str, list[tuple[int, float]]],
    *,
    title: str,
    log_y: bool = False,
    width: int = 800,
    height: int = 450,
    xlabel: str = "step",
) -> np.ndarray:
    """A chart (uint8 height x width x 3 RGB) with one line per series, e.g. losses per step.

    Points are (x, y). Non-finite values (NaN, inf, None) and, with `log_y`, values <= 0 are
    skipped: the line has a gap there (a log axis has no place for them; symlog would bend the
    scale of the values that matter). A point with no usable neighbour is drawn as a dot. With
    no usable point at all the chart says "no data". The legend sits right of the plot area (so
    it never hides a curve) in charts 480 px wide or more. Below about 320 x 200 px the text
    leaves no room for the curves.
    """
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    drawn = [
        _plot_series(ax, name, points, COLOURS[i % len(COLOURS)], log_y)
        for i, (name, points) in enumerate(series.items())
    ]
    if any(drawn):
        _style_axes(ax, log_y, xlabel)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", color="grey", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    return _render(fig, width, height)


def _usable(points: list[tuple[int, float]], log_y: bool) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) as floats, both NaN where a point is skipped (matplotlib breaks the line there)."""
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)  # None -> NaN
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(xy).all(axis=1) & ((xy[:, 1] > 0) if log_y else True)
    xy[~ok] = np.nan
    return xy[:, 0], xy[:, 1]


def _plot_series(
    ax: Axes, name: str, points: list[tuple[int, float]], colour: str, log_y: bool
) -> bool:
    """Draws one series (its legend entry even when empty); True if any point was usable."""
    x, y = _usable(points, log_y)
    ok = np.isfinite(y)
    ax.plot(x, y, color=colour, linewidth=1.6, label=name)
    # A line needs two neighbouring points: single points (a one-step run, a point between
    # gaps) get a dot of their own.
    alone = ok & ~np.r_[False, ok[:-1]] & ~np.r_[ok[1:], False]
    if alone.any():
        ax.plot(x[alone], y[alone], "o", color=colour, markersize=4)
    return bool(ok.any())


def _style_axes(ax: Axes, log_y: bool, xlabel: str) -> None:
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_PlainLogFormatter())
        ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))
    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))  # steps: no "497.5"
    low, high = ax.dataLim.intervalx
    if low == high:  # one step only: a range of whole steps around it
        ax.set_xlim(low - 1, high + 1)
    ax.set_xlabel(xlabel)
    ax.grid(True, which="major", color="#e0e0e0", linewidth=0.8)
    ax.set_axisbelow(True)
    # Right of the plot area where there is room (it never hides a curve), else inside.
    outside = ax.figure.get_figwidth() * DPI >= 480
    where = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if outside else {"loc": "best"}
    ax.legend(frameon=not outside, fontsize="small", **where)


class _PlainLogFormatter(LogFormatter):
    """Matplotlib's choice of which log ticks get a label (minor ones too when the curves span
    less than a decade or two), written as plain numbers: 0.3, 2, 10, 1e-05; not 3 x 10^-1."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:.3g}" if super().__call__(x, pos) else ""


def _render(fig: Figure, width: int, height: int) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    if rgba.shape[:2] != (height, width):  # matplotlib rounds sizes within 1e-8 px: never seen
        raise RuntimeError(f"chart drawn at {rgba.shape[:2]}, not {(height, width)}")
    return np.ascontiguousarray(rgba[:, :, :3])
