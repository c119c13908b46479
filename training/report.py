"""Render the training job's ``report.html``.

One self-contained HTML page (embedded ``<style>``, inline SVG charts, no scripts,
no external references) built with the standard library only.

Public API
----------
``render_report(summary) -> str``
    The whole page.  Every key of ``summary`` may be missing, empty or malformed;
    missing parts are shown as "not recorded" and a section that cannot be drawn
    shows an error note instead of breaking the page.
``write_report(summary, path) -> Path``
    Render and write atomically (temporary file in the same folder + ``os.replace``).

Chart helpers (reusable, return an ``<svg>`` string):
``line_chart``, ``hbar_chart``, ``heatmap``; plus ``downsample``, ``nice_ticks``,
``log_ticks``, ``top_confusions`` and the formatters ``fmt_num``, ``fmt_pct``,
``fmt_duration``.

Every string that comes from the summary passes through ``html.escape``.
"""
from __future__ import annotations

import html
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "MAX_PLOT_POINTS", "Series", "render_report", "write_report", "line_chart",
    "hbar_chart", "heatmap", "downsample", "nice_ticks", "log_ticks",
    "top_confusions", "fmt_num", "fmt_pct", "fmt_duration",
]

log = logging.getLogger(__name__)

#: Upper bound on the points plotted for one per-step series (after downsampling).
MAX_PLOT_POINTS = 500
#: Per-class bars shown (worst first); the rest are counted as hidden.
MAX_CLASS_BARS = 40
#: Classes in the confusion heatmap, and rows in the "top confused pairs" table.
CONFUSION_CLASSES = 10
CONFUSION_PAIRS = 15
#: Rows shown in the profiler table and the skipped-images list.
MAX_PROFILER_OPS = 25
MAX_SKIPPED_LISTED = 100

NOT_RECORDED = "not recorded"
PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
           "#b07aa1", "#edc948", "#ff9da7", "#9c755f", "#7f7f7f"]
STATUS_CLASS = {  # badge colour class per job or rule status
    "completed": "ok", "noissuesfound": "ok",
    "failed": "bad", "issuesfound": "bad",
    "stopped": "warn", "error": "warn",
    "notapplicable": "na",
}


# --------------------------------------------------------------------------- #
# small helpers: escaping, number parsing and formatting
# --------------------------------------------------------------------------- #
def esc(value: Any) -> str:
    """Escape anything for use in HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> float | None:
    """A float (possibly NaN/inf) for numbers and numeric strings, else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _finite(value: Any) -> bool:
    v = _num(value)
    return v is not None and math.isfinite(v)


def _list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def fmt_num(value: Any, sig: int = 4) -> str:
    """4 significant digits; integers as integers; large values with separators."""
    v = _num(value)
    if v is None:
        return "—"
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if abs(v) >= 1e4 and abs(v) < 1e15:
        return f"{v:,.0f}"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.{sig}g}"


def fmt_pct(value: Any, digits: int = 1) -> str:
    """A fraction (0.812) as a percentage ("81.2%").

    Values in (1, 100] are taken to be percentages already.
    """
    v = _num(value)
    if v is None or not math.isfinite(v):
        return fmt_num(value) if v is not None else "—"
    if 1.0 < v <= 100.0:
        v /= 100.0
    return f"{100.0 * v:.{digits}f}%"


def fmt_duration(seconds: Any) -> str:
    v = _num(seconds)
    if v is None or not math.isfinite(v) or v < 0:
        return NOT_RECORDED
    if v < 60:
        return f"{v:.1f} s"
    total = int(round(v))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h} h {m} min {s} s"
    return f"{m} min {s} s"


def _fmt_time(value: Any) -> str:
    """ISO time as ``2024-11-22 04:30:12 UTC``; anything else unchanged."""
    text = str(value)
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    off = t.utcoffset()
    zone = "" if off is None else " UTC" if not off else " " + t.strftime("%z")
    return t.strftime("%Y-%m-%d %H:%M:%S") + zone


def _short(text: str, limit: int = 28) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _na(why: str = "") -> str:
    """The placeholder for a part of the report the run did not record."""
    tail = f" — {esc(why)}" if why else ""
    return f'<p class="empty">{NOT_RECORDED}{tail}</p>'


def _compact_evidence(evidence: Any, limit: int = 160) -> str:
    """Evidence dict as a short one-liner: ``step=120; values=[1.2, 1.1, … +40]``."""
    def one(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            head = ", ".join(one(x) for x in v[:6])
            more = f", … +{len(v) - 6}" if len(v) > 6 else ""
            return f"[{head}{more}]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {one(x)}" for k, x in list(v.items())[:6]) + "}"
        if _num(v) is not None:
            return fmt_num(v)
        return str(v)

    if evidence in (None, "", {}, []):
        return ""
    if isinstance(evidence, dict):
        text = "; ".join(f"{k}={one(v)}" for k, v in evidence.items())
    else:
        text = one(evidence)
    return _short(text, limit)


# --------------------------------------------------------------------------- #
# scales, ticks, downsampling
# --------------------------------------------------------------------------- #
def _nice(x: float, round_: bool) -> float:
    if not (x > 0 and math.isfinite(x)):
        return 1.0
    exp = math.floor(math.log10(x))
    f = x / 10 ** exp
    if round_:
        nf = 1 if f < 1.5 else 2 if f < 3 else 5 if f < 7 else 10
    else:
        nf = 1 if f <= 1 else 2 if f <= 2 else 5 if f <= 5 else 10
    return nf * 10 ** exp


def nice_ticks(lo: float, hi: float, n: int = 5, extend: bool = True,
               integer: bool = False) -> tuple[float, float, list[float]]:
    """About ``n`` round tick values covering [lo, hi].

    With ``extend`` the domain grows to the outer ticks; otherwise ticks are kept
    inside [lo, hi].  Returns ``(domain_lo, domain_hi, ticks)``.
    """
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = _nice((hi - lo) / max(n - 1, 1), True)
    if integer:
        step = max(step, 1.0)
    eps = 1e-9
    if extend:
        t0 = math.floor(lo / step + eps) * step
        t1 = math.ceil(hi / step - eps) * step
        lo, hi = t0, t1
    else:
        t0 = math.ceil(lo / step - eps) * step
    ticks = []
    t = t0
    while t <= hi + step * eps and len(ticks) < 50:
        ticks.append(round(t, 12))
        t = t0 + len(ticks) * step
    return lo, hi, ticks


def log_ticks(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """Decade ticks for positive [lo, hi]; returns ``(log10_lo, log10_hi, ticks)``."""
    a = math.floor(math.log10(lo))
    b = math.ceil(math.log10(hi))
    if b <= a:
        b = a + 1
    step = max(1, math.ceil((b - a) / 6))
    b = a + step * math.ceil((b - a) / step)
    ticks = [10.0 ** k for k in range(a, b + 1, step)]
    if b - a == 1:  # a single decade: add 2x and 5x
        ticks = sorted(ticks + [2 * 10.0 ** a, 5 * 10.0 ** a])
    return float(a), float(b), ticks


def downsample(xs: Sequence, ys: Sequence, max_points: int = MAX_PLOT_POINTS,
               mode: str = "minmax") -> tuple[list[float], list[float]]:
    """Drop non-finite pairs and reduce to at most ``max_points`` points.

    ``minmax`` keeps the first and last points and splits the series into
    ``(max_points - 2) // 2`` buckets, keeping each bucket's lowest and highest
    point (in step order), so spikes and the global minimum and maximum stay
    visible.  ``mean`` keeps one averaged point per
    bucket (smoother; used for stacked step times).
    """
    pts = [(float(x), float(y)) for x, y in zip(xs, ys) if _finite(x) and _finite(y)]
    max_points = max(2, int(max_points))
    if len(pts) <= max_points:
        return [p[0] for p in pts], [p[1] for p in pts]
    n = len(pts)
    out: list[tuple[float, float]] = []
    if mode == "mean":
        for b in range(max_points):
            chunk = pts[b * n // max_points:(b + 1) * n // max_points]
            if chunk:
                out.append((sum(p[0] for p in chunk) / len(chunk),
                            sum(p[1] for p in chunk) / len(chunk)))
    else:
        buckets = max(1, (max_points - 2) // 2)
        keep = {0, n - 1}  # the first and last points keep the x range intact
        for b in range(buckets):
            lo, hi = b * n // buckets, (b + 1) * n // buckets
            if lo < hi:
                keep.add(min(range(lo, hi), key=lambda i: pts[i][1]))
                keep.add(max(range(lo, hi), key=lambda i: pts[i][1]))
        out = [pts[i] for i in sorted(keep)]
    return [p[0] for p in out], [p[1] for p in out]


# --------------------------------------------------------------------------- #
# SVG charts
# --------------------------------------------------------------------------- #
@dataclass
class Series:
    """One named line of a :func:`line_chart`."""
    name: str
    x: Sequence
    y: Sequence
    color: str | None = None
    width: float = 2.0
    dash: str | None = None          # SVG stroke-dasharray, e.g. "5 4"
    opacity: float = 1.0
    markers: bool | None = None      # None: dots when there are few points
    fill: str | None = None          # fill the area below the line with this colour
    skipped_x: Sequence = ()         # extra x positions of values removed earlier


def _f1(v: float) -> str:
    return f"{v:.1f}"


def _empty_svg(width: int, height: int, text: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" role="img">'
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" '
            f'class="muted">{esc(text)}</text></svg>')


def line_chart(series: Sequence[Series], *, title: str = "", x_label: str = "",
               y_label: str = "", log_y: bool = False,
               hlines: Iterable[tuple[float, str, str]] = (),
               vlines: Iterable[tuple[float, str, str]] = (),
               width: int = 960, height: int = 300,
               y_min: float | None = None, y_max: float | None = None,
               y_format: Callable[[Any], str] = fmt_num,
               x_format: Callable[[Any], str] = fmt_num,
               mark_skipped: bool = False) -> str:
    """Line chart with several named series, nice ticks, optional log y and a legend.

    Each series becomes one ``<polyline data-series="name">`` holding exactly its
    plottable points, in the order given.  Non-finite values (and values <= 0 on a
    log axis) are skipped; with ``mark_skipped`` each skipped x position (plus
    ``Series.skipped_x``) is marked by a small red tick under the plot
    (``class="skip"``).  ``hlines`` / ``vlines`` are ``(y or x, label, colour)``
    dashed reference lines.  Callers downsample long series first (see :func:`downsample`).
    """
    def ok(y: Any) -> bool:
        return _finite(y) and (not log_y or float(y) > 0)

    kept, skipped = [], []
    for s in series:
        pts, bad = [], list(s.skipped_x)
        for x, y in zip(s.x, s.y):
            if not _finite(x):
                continue
            if ok(y):
                pts.append((float(x), float(y)))
            else:
                bad.append(float(x))
        kept.append(pts)
        skipped.append([float(x) for x in bad if _finite(x)])
    hl = [(float(v), lab, col) for v, lab, col in hlines if ok(v)]
    vl = [(float(v), lab, col) for v, lab, col in vlines if _finite(v)]
    all_x = [p[0] for pts in kept for p in pts] + [x for bad in skipped for x in bad] \
        + [v for v, _, _ in vl]
    all_y = [p[1] for pts in kept for p in pts] + [v for v, _, _ in hl]
    if not all_x or not all_y:
        return _empty_svg(width, min(height, 120), "no finite values to plot")

    # legend layout (wraps onto more rows when needed)
    legend, row, lx = [], 0, 0.0
    left, right, bottom = 64, 24, 46
    for i, s in enumerate(series):
        w = 42 + 6.8 * len(_short(s.name, 40))
        if lx and left + lx + w > width - right:
            row, lx = row + 1, 0.0
        legend.append((i, left + lx, 14 + 18 * row))
        lx += w
    top = 30 + 18 * row
    pw, ph = width - left - right, height - top - bottom

    x_lo, x_hi = min(all_x), max(all_x)
    integer_x = all(float(x).is_integer() for x in all_x)
    x_lo, x_hi, x_ticks = nice_ticks(x_lo, x_hi, 7, extend=False, integer=integer_x) \
        if x_hi > x_lo else (x_lo - 1, x_hi + 1, [x_lo])

    if log_y:
        y_lo, y_hi, y_ticks = log_ticks(min(all_y), max(all_y))
        ty = math.log10
    else:
        lo = min(all_y) if y_min is None else min(y_min, min(all_y))
        hi = max(all_y) if y_max is None else max(y_max, max(all_y))
        y_lo, y_hi, y_ticks = nice_ticks(lo, hi, 5)
        ty = float

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def py(y: float) -> float:
        return top + (1.0 - (ty(y) - y_lo) / (y_hi - y_lo)) * ph

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{esc(title)}">']
    if title:
        out.append(f"<title>{esc(title)}</title>")
    # grid and axes
    for t in y_ticks:
        y = py(t)
        out.append(f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{_f1(y)}" y2="{_f1(y)}"/>'
                   f'<text class="tick" x="{left - 6}" y="{_f1(y + 4)}" text-anchor="end">'
                   f"{esc(_log_label(t) if log_y else y_format(t))}</text>")
    for t in x_ticks:
        x = px(t)
        out.append(f'<line class="grid" x1="{_f1(x)}" x2="{_f1(x)}" y1="{top}" y2="{top + ph}"/>'
                   f'<text class="tick" x="{_f1(x)}" y="{top + ph + 16}" text-anchor="middle">'
                   f"{esc(x_format(t))}</text>")
    out.append(f'<rect class="frame" x="{left}" y="{top}" width="{pw}" height="{ph}"/>')
    if x_label:
        out.append(f'<text class="axis-label" x="{left + pw / 2}" y="{height - 6}" '
                   f'text-anchor="middle">{esc(x_label)}</text>')
    if y_label:
        out.append(f'<text class="axis-label" transform="translate(14,{top + ph / 2}) rotate(-90)" '
                   f'text-anchor="middle">{esc(y_label + (" (log scale)" if log_y else ""))}</text>')

    # filled areas first, so lines and markers sit on top of them
    for s, pts in zip(series, kept):
        if s.fill and len(pts) > 1:
            poly = " ".join(f"{_f1(px(x))},{_f1(py(y))}" for x, y in pts)
            base = _f1(top + ph)
            poly += f" {_f1(px(pts[-1][0]))},{base} {_f1(px(pts[0][0]))},{base}"
            out.append(f'<polygon class="area" points="{poly}" fill="{esc(s.fill)}"/>')
    for v, lab, col in hl:
        y = py(v)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{_f1(y)}" y2="{_f1(y)}" '
                   f'stroke="{esc(col)}" stroke-width="1.5" stroke-dasharray="6 4"/>'
                   f'<text class="hline-label" x="{left + pw - 4}" y="{_f1(y - 5)}" '
                   f'text-anchor="end" fill="{esc(col)}">{esc(lab)}</text>')
    for v, lab, col in vl:
        x = px(v)
        # label to the right of the line, or to its left near the right edge
        flip = x + 8 + 6.5 * len(lab) > left + pw
        out.append(f'<line x1="{_f1(x)}" x2="{_f1(x)}" y1="{top}" y2="{top + ph}" '
                   f'stroke="{esc(col)}" stroke-width="1.5" stroke-dasharray="3 3"/>'
                   f'<text class="hline-label" x="{_f1(x - 4 if flip else x + 4)}" y="{top + 12}" '
                   f'text-anchor="{"end" if flip else "start"}" fill="{esc(col)}">{esc(lab)}</text>')
    for i, (s, pts) in enumerate(zip(series, kept)):
        col = s.color or PALETTE[i % len(PALETTE)]
        dash = f' stroke-dasharray="{esc(s.dash)}"' if s.dash else ""
        if pts:
            coords = " ".join(f"{_f1(px(x))},{_f1(py(y))}" for x, y in pts)
            out.append(f'<polyline data-series="{esc(s.name)}" points="{coords}" fill="none" '
                       f'stroke="{esc(col)}" stroke-width="{s.width}" stroke-opacity="{s.opacity}" '
                       f'stroke-linejoin="round" stroke-linecap="round"{dash}/>')
        if s.markers or (s.markers is None and 0 < len(pts) <= 60):
            for x, y in pts:
                out.append(f'<circle cx="{_f1(px(x))}" cy="{_f1(py(y))}" r="3" fill="{esc(col)}">'
                           f"<title>{esc(s.name)} @ {esc(x_format(x))}: {esc(fmt_num(y))}</title>"
                           f"</circle>")
        if mark_skipped and skipped[i]:
            seen = set()
            for x in skipped[i]:
                key = round(px(x))
                if key in seen:
                    continue
                seen.add(key)
                out.append(f'<path class="skip" d="M{_f1(px(x))} {top + ph - 1}l-4 -8h8z" '
                           f'fill="#c53030"><title>{esc(s.name)} @ {esc(x_format(x))}: '
                           f"non-finite or non-positive value skipped</title></path>")
    # legend
    for i, lx_, ly in legend:
        s = series[i]
        col = s.color or PALETTE[i % len(PALETTE)]
        dash = f' stroke-dasharray="{esc(s.dash)}"' if s.dash else ""
        out.append(f'<line x1="{_f1(lx_)}" x2="{_f1(lx_ + 20)}" y1="{ly}" y2="{ly}" '
                   f'stroke="{esc(col)}" stroke-width="3"{dash}/>'
                   f'<text class="legend" x="{_f1(lx_ + 25)}" y="{ly + 4}">'
                   f"{esc(_short(s.name, 40))}</text>")
    out.append("</svg>")
    return "".join(out)


def _log_label(v: float) -> str:
    k = math.log10(v)
    if abs(k - round(k)) < 1e-9 and not -3 <= k <= 4:
        return f"1e{int(round(k))}"
    return fmt_num(v)


def hbar_chart(items: Sequence[tuple[str, float, str]], *, max_value: float | None = None,
               value_format: Callable[[Any], str] = fmt_pct,
               tick_format: Callable[[Any], str] = lambda v: fmt_pct(v, 0),
               color_fn: Callable[[float], str] | None = None,
               width: int = 960, bar_height: int = 16, label_width: int = 250,
               title: str = "") -> str:
    """Horizontal bars: ``items`` are ``(label, value, note)``; the note follows the value."""
    items = [(lab, float(v), note) for lab, v, note in items if _finite(v)]
    if not items:
        return _empty_svg(width, 80, "nothing to plot")
    gap, top, right = 6, 24, 150
    vmax = max_value if max_value is not None else max(v for _, v, _ in items)
    _, vmax, ticks = nice_ticks(0.0, vmax if vmax > 0 else 1.0, 5)
    pw = width - label_width - right
    height = top + len(items) * (bar_height + gap) + 4
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{esc(title)}">']
    if title:
        out.append(f"<title>{esc(title)}</title>")
    for t in ticks:
        x = label_width + t / vmax * pw
        out.append(f'<line class="grid" x1="{_f1(x)}" x2="{_f1(x)}" y1="{top - 4}" y2="{height - 2}"/>'
                   f'<text class="tick" x="{_f1(x)}" y="{top - 8}" text-anchor="middle">'
                   f"{esc(tick_format(t))}</text>")
    for k, (lab, v, note) in enumerate(items):
        y = top + k * (bar_height + gap)
        w = max(0.0, min(v, vmax)) / vmax * pw
        col = color_fn(v) if color_fn else PALETTE[0]
        out.append(f'<g class="bar"><title>{esc(lab)}: {esc(value_format(v))} {esc(note)}</title>'
                   f'<text class="label" x="{label_width - 8}" y="{y + bar_height - 4}" '
                   f'text-anchor="end">{esc(_short(lab, 34))}</text>'
                   f'<rect x="{label_width}" y="{y}" width="{_f1(max(w, 1.0))}" '
                   f'height="{bar_height}" rx="2" fill="{esc(col)}"/>'
                   f'<text class="value" x="{_f1(label_width + w + 6)}" y="{y + bar_height - 4}">'
                   f"{esc(value_format(v))} {esc(note)}</text></g>")
    out.append("</svg>")
    return "".join(out)


def _mix(hex_to: str, t: float) -> str:
    """Interpolate from white to ``hex_to`` (t in 0..1)."""
    t = max(0.0, min(1.0, t))
    r, g, b = (int(hex_to[i:i + 2], 16) for i in (1, 3, 5))
    return "#%02x%02x%02x" % tuple(round(255 + (c - 255) * t) for c in (r, g, b))


def heatmap(row_labels: Sequence[str], col_labels: Sequence[str],
            matrix: Sequence[Sequence[float]], *, title: str = "",
            diagonal_color: str = "#2f855a", off_color: str = "#c53030",
            label_width: int = 230, max_cell: int = 44, diagonal: bool = True) -> str:
    """Count heatmap of ``matrix`` (rows x columns).

    With ``diagonal`` (a square matrix with the same classes on both axes) cell
    (i, i) is "correct" and coloured on its own green scale; the rest on a red one.
    """
    n_r, n_c = len(row_labels), len(col_labels)
    if not n_r or not n_c:
        return _empty_svg(600, 80, "nothing to plot")
    cell = max(14, min(max_cell, 560 // max(n_r, n_c)))
    longest = max(len(_short(lab, 24)) for lab in col_labels)
    top = 24 + int(longest * 6.4 * 0.71)  # rotated column labels need this much room
    width = label_width + n_c * cell + int(longest * 6.4 * 0.71) + 20
    height = top + n_r * cell + 4
    vals = [[(_num(row[j]) if j < len(row) else 0.0) or 0.0 for j in range(n_c)]
            for row in list(matrix)[:n_r]]
    def is_diag(i: int, j: int) -> bool:
        return diagonal and i == j

    diag = [vals[i][j] for i in range(len(vals)) for j in range(n_c) if is_diag(i, j)]
    off = [vals[i][j] for i in range(len(vals)) for j in range(n_c) if not is_diag(i, j)]
    dmax, omax = max(diag, default=0) or 1, max(off, default=0) or 1
    out = [f'<svg class="chart heatmap" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{esc(title)}" style="max-width:{width}px">']
    if title:
        out.append(f"<title>{esc(title)}</title>")
    for j, lab in enumerate(col_labels):
        x = label_width + j * cell + cell / 2
        out.append(f'<text class="label hm-col" transform="translate({_f1(x + 4)},{top - 6}) rotate(-45)">'
                   f"{esc(_short(lab, 24))}</text>")
    for i, row in enumerate(vals):
        y = top + i * cell
        out.append(f'<text class="label hm-row" x="{label_width - 8}" y="{_f1(y + cell / 2 + 4)}" '
                   f'text-anchor="end">{esc(_short(row_labels[i], 32))}</text>')
        for j, v in enumerate(row):
            d = is_diag(i, j)
            t = v / (dmax if d else omax)
            fill = "#f4f5f7" if v == 0 else _mix(diagonal_color if d else off_color,
                                                 0.15 + 0.85 * t)
            x = label_width + j * cell
            out.append(f'<rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{fill}">'
                       f"<title>true {esc(row_labels[i])} → predicted {esc(col_labels[j])}: "
                       f"{esc(fmt_num(v))}</title></rect>")
            if v and cell >= 20:
                colour = "#fff" if t > 0.55 else "#1f2933"
                out.append(f'<text class="cell" x="{_f1(x + cell / 2)}" y="{_f1(y + cell / 2 + 4)}" '
                           f'text-anchor="middle" fill="{colour}">{esc(fmt_num(v))}</text>')
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------- #
# data helpers
# --------------------------------------------------------------------------- #
def top_confusions(classes: Sequence[str], matrix: Sequence[Sequence[Any]],
                   k: int = CONFUSION_CLASSES, pairs: int = CONFUSION_PAIRS):
    """The classes involved in the most off-diagonal errors, and the largest pairs.

    A class's involvement is its row's plus its column's off-diagonal counts (how
    often it was mistaken for something else plus how often something else was
    mistaken for it).  Returns ``(indices, pair_rows)`` where ``indices`` are the
    up-to-``k`` class indices, most involved first, and ``pair_rows`` are
    ``(true_index, predicted_index, count, row_total)`` sorted by count.
    """
    n = len(classes)
    m = [[0.0] * n for _ in range(n)]
    for i, row in enumerate(_list(matrix)[:n]):
        for j, v in enumerate(_list(row)[:n]):
            if _finite(v) and float(v) > 0:
                m[i][j] = float(v)
    involved = [0.0] * n
    all_pairs = []
    for i in range(n):
        for j in range(n):
            if i != j and m[i][j] > 0:
                involved[i] += m[i][j]
                involved[j] += m[i][j]
                all_pairs.append((i, j, m[i][j], sum(m[i])))
    order = sorted((i for i in range(n) if involved[i] > 0), key=lambda i: (-involved[i], i))
    all_pairs.sort(key=lambda p: (-p[2], p[0], p[1]))
    return order[:k], all_pairs[:pairs]


def _epochs(summary: dict) -> list[dict]:
    rows = [e for e in _list(summary.get("epochs")) if isinstance(e, dict)]
    for k, e in enumerate(rows):
        if not _finite(e.get("epoch")):
            e = dict(e, epoch=k + 1)
            rows[k] = e
    return rows


def _best(summary: dict) -> tuple[float | None, float | None, str]:
    """(best epoch, its val acc, how it was chosen)."""
    rows = _epochs(summary)
    be = _num(summary.get("best_epoch"))
    if be is not None and math.isfinite(be):
        acc = next((_num(e.get("val_acc")) for e in rows if _num(e.get("epoch")) == be), None)
        return be, acc, "recorded"
    cand = [(float(e["val_acc"]), float(e["epoch"])) for e in rows if _finite(e.get("val_acc"))]
    if cand:
        acc, ep = max(cand, key=lambda c: (c[0], -c[1]))
        return ep, acc, "by val acc"
    return None, None, ""


def _badge(status: Any, fallback: str = NOT_RECORDED) -> str:
    text = str(status) if status not in (None, "") else fallback
    cls = STATUS_CLASS.get(text.replace(" ", "").lower(), "na")
    return f'<span class="badge b-{cls}">{esc(text)}</span>'


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], num_cols: Iterable[int] = (),
           cls: str = "", row_classes: Sequence[str] | None = None) -> str:
    """Rows are already-escaped HTML cells."""
    num_cols = set(num_cols)
    th = "".join(f'<th{" class=num" if i in num_cols else ""}>{h}</th>' for i, h in enumerate(head))
    body = []
    for r, row in enumerate(rows):
        rc = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        tds = "".join(f'<td{" class=num" if i in num_cols else ""}>{c}</td>' for i, c in enumerate(row))
        body.append(f"<tr{rc}>{tds}</tr>")
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _acc_colour(v: float) -> str:
    return "#c53030" if v < 0.5 else "#dd8a1c" if v < 0.8 else "#2f855a"


# --------------------------------------------------------------------------- #
# sections
# --------------------------------------------------------------------------- #
def _header(s: dict) -> str:
    title = s.get("title") or "Training report"
    status = s.get("status")
    be, bacc, how = _best(s)
    test = _dict(s.get("test"))
    epochs = _epochs(s)
    duration = esc(fmt_duration(s.get("seconds")))
    if not _finite(s.get("seconds")):
        secs = [float(e["seconds"]) for e in epochs if _finite(e.get("seconds"))]
        if secs:  # fall back to the epochs' own timings
            duration = f"≈ {esc(fmt_duration(sum(secs)))} <small>(sum of epochs)</small>"
    kpis = [
        ("Device", esc(s.get("device")) if s.get("device") else NOT_RECORDED),
        ("Started", esc(_fmt_time(s.get("started_at"))) if s.get("started_at") else NOT_RECORDED),
        ("Duration", duration),
        ("Test accuracy", esc(fmt_pct(test["test_acc"])) if _finite(test.get("test_acc"))
         else NOT_RECORDED),
        ("Test loss", esc(fmt_num(test["test_loss"])) if _finite(test.get("test_loss"))
         else NOT_RECORDED),
        ("Best val accuracy", esc(fmt_pct(bacc)) if bacc is not None and math.isfinite(bacc)
         else NOT_RECORDED),
        ("Best epoch", (esc(fmt_num(be)) + (f' <small>({esc(how)})</small>' if how != "recorded" else ""))
         if be is not None else NOT_RECORDED),
        ("Epochs run", esc(str(len(epochs))) if epochs else NOT_RECORDED),
    ]
    cards = "".join(
        f'<div class="kpi{" missing" if v == NOT_RECORDED else ""}"><div class="k">{k}</div>'
        f'<div class="v">{v}</div></div>' for k, v in kpis)
    parts = [f'<header><div class="title-row"><h1>{esc(title)}</h1>'
             f'{_badge(status)}</div><div class="kpis">{cards}</div>']
    if s.get("failure_reason"):
        parts.append(f'<div class="alert"><strong>Failure reason:</strong> '
                     f'<span class="mono">{esc(s["failure_reason"])}</span></div>')
    if s.get("skipped"):
        parts.append(f'<div class="note"><strong>Note:</strong> {esc(s["skipped"])}</div>')
    job = _dict(s.get("job"))
    if job:
        items = list(job.items())
        cells = []
        for k in range(0, len(items), 2):
            row = []
            for key, val in items[k:k + 2]:
                shown = fmt_num(val) if _num(val) is not None else (
                    json.dumps(val, default=str) if isinstance(val, (list, dict, bool)) or val is None
                    else str(val))
                row += [f'<span class="key">{esc(key)}</span>', f'<span class="mono">{esc(shown)}</span>']
            cells.append(row + ["", ""] * (2 - len(items[k:k + 2])))
        parts.append("<h3>Hyperparameters</h3>" + _table(["Parameter", "Value", "Parameter", "Value"],
                                                          cells, cls="kv"))
    else:
        parts.append("<h3>Hyperparameters</h3>" + _na("no job parameters in the summary"))
    parts.append("</header>")
    return "".join(parts)


def _sec_rules(s: dict) -> str:
    rules = [r for r in _list(s.get("rules")) if isinstance(r, dict)]
    if not rules:
        return _na("no rules were evaluated")
    order = {"issuesfound": 0, "error": 1, "noissuesfound": 2, "notapplicable": 3}
    norm = [str(r.get("status") or "").replace(" ", "").lower() for r in rules]
    n_issues = sum(1 for n in norm if n == "issuesfound")
    n_err = sum(1 for n in norm if n == "error")
    ranked = sorted(range(len(rules)), key=lambda i: order.get(norm[i], 4))
    rows, rcls = [], []
    for i in ranked:
        r = rules[i]
        ev = r.get("evidence")
        full = json.dumps(ev, default=str) if ev not in (None, "", {}, []) else ""
        rows.append([
            f"<strong>{esc(r.get('name') or 'unnamed rule')}</strong>",
            esc(r.get("kind") or "—"),
            _badge(r.get("status"), "unknown"),
            esc(r.get("message") or ""),
            esc(r.get("advice") or ""),
            f'<span class="mono evidence" title="{esc(full)}">{esc(_compact_evidence(ev))}</span>',
        ])
        rcls.append({"issuesfound": "row-bad", "error": "row-warn"}.get(norm[i], ""))
    cls = "bad" if n_issues else "ok"
    extra = f", {n_err} rule{'s' if n_err != 1 else ''} failed to run" if n_err else ""
    head = (f'<p class="rule-summary {cls}" data-issues="{n_issues}"><strong>{n_issues}</strong> '
            f"issue{'s' if n_issues != 1 else ''} found by {len(rules)} rule"
            f"{'s' if len(rules) != 1 else ''}{extra}.</p>")
    return head + _table(["Rule", "Kind", "Status", "What was seen", "What to do", "Evidence"],
                         rows, cls="rules", row_classes=rcls)


def _best_line(s: dict) -> list[tuple[float, str, str]]:
    be, _, _ = _best(s)
    return [(be, f"best epoch {fmt_num(be)}", "#616e7c")] if be is not None else []


def _epoch_series(s: dict, key: str) -> tuple[list[float], list[Any]]:
    rows = _epochs(s)
    return [float(e["epoch"]) for e in rows], [e.get(key) for e in rows]


def _spans_decades(values, decades: float = 2.0) -> bool:
    """True when positive values span more than ``decades`` powers of ten: one early spike (BatchNorm
    statistics settling in a from-scratch run) would otherwise flatten every other point."""
    positive = [float(v) for v in values if _finite(v) and float(v) > 0]
    return len(positive) > 1 and max(positive) / min(positive) > 10 ** decades


def _sec_loss(s: dict) -> str:
    parts = []
    ex, tr = _epoch_series(s, "train_loss")
    _, va = _epoch_series(s, "val_loss")
    if any(_finite(v) for v in tr + va):
        parts.append(line_chart([Series("train loss", ex, tr, PALETTE[0]),
                                 Series("validation loss", ex, va, PALETTE[1])],
                                vlines=_best_line(s), title="Loss per epoch", x_label="epoch",
                                y_label="loss", log_y=_spans_decades(tr + va)))
    else:
        parts.append(_na("no per-epoch loss"))
    steps = _dict(s.get("steps"))
    sx, sy = _list(steps.get("step")), _list(steps.get("loss"))
    if not sx and sy:
        sx = list(range(1, len(sy) + 1))
    if any(_finite(v) for v in sy):
        dx, dy = downsample(sx, sy, MAX_PLOT_POINTS, "minmax")
        n = sum(1 for x, y in zip(sx, sy) if _finite(x) and _finite(y))
        note = (f"{n:,} steps, shown as {len(dx)} points (lowest and highest loss of each bucket kept)"
                if len(dx) < n else f"{n:,} steps")
        parts.append(f'<h3>Training loss per step <small>({esc(note)})</small></h3>')
        parts.append(line_chart([Series("train loss per step", dx, dy, "#8fb3d9", width=1.2,
                                        markers=False)],
                                title="Training loss per step", x_label="step", y_label="loss",
                                height=220))
    else:
        parts.append("<h3>Training loss per step</h3>" + _na("no per-step loss"))
    return "".join(parts)


def _sec_accuracy(s: dict) -> str:
    parts = []
    ex, tr = _epoch_series(s, "train_acc")
    _, va = _epoch_series(s, "val_acc")
    test = _dict(s.get("test"))
    hl = []
    if _finite(test.get("test_acc")):
        hl.append((float(test["test_acc"]), f"test {fmt_pct(test['test_acc'])}", "#2f855a"))
    if any(_finite(v) for v in tr + va) or hl:
        parts.append(line_chart([Series("train accuracy", ex, tr, PALETTE[0]),
                                 Series("validation accuracy", ex, va, PALETTE[1])],
                                hlines=hl, vlines=_best_line(s), title="Accuracy per epoch", x_label="epoch",
                                y_label="accuracy", y_format=lambda v: fmt_pct(v, 0)))
        if not hl:
            parts.append('<p class="muted">Test accuracy not recorded.</p>')
    else:
        parts.append(_na("no accuracy values"))
    rows = _epochs(s)
    if rows:
        be, _, _ = _best(s)
        body, rcls = [], []
        for e in rows:
            body.append([esc(fmt_num(e.get("epoch"))), esc(fmt_num(e.get("train_loss"))),
                         esc(fmt_pct(e.get("train_acc"))), esc(fmt_num(e.get("val_loss"))),
                         esc(fmt_pct(e.get("val_acc"))), esc(fmt_num(e.get("seconds")))])
            rcls.append("row-best" if be is not None and _num(e.get("epoch")) == be else "")
        opened = " open" if len(rows) <= 15 else ""
        parts.append(f"<details{opened}><summary>Per-epoch numbers (best epoch highlighted)</summary>"
                     + _table(["Epoch", "Train loss", "Train acc", "Val loss", "Val acc", "Seconds"],
                              body, num_cols=range(6), cls="compact", row_classes=rcls)
                     + "</details>")
    return "".join(parts)


def _sec_per_class(s: dict) -> str:
    entries = []
    no_data = 0
    for e in _list(s.get("per_class")):
        if not isinstance(e, dict):
            continue
        c, t = _num(e.get("correct")), _num(e.get("total"))
        name = e.get("class") or e.get("label") or "?"
        if c is None or t is None or not math.isfinite(c) or not (math.isfinite(t) and t > 0):
            no_data += 1
            continue
        entries.append((c / t, -t, str(name), c, t))
    if not entries:
        return _na("no per-class results" + (f" ({no_data} classes without examples)" if no_data else ""))
    entries.sort()
    shown = entries[:MAX_CLASS_BARS]
    hidden = len(entries) - len(shown)
    items = [(name, acc, f"({fmt_num(c)}/{fmt_num(t)})") for acc, _, name, c, t in shown]
    total_c = sum(e[3] for e in entries)
    total_t = sum(e[4] for e in entries)
    head = (f'<p>{len(entries)} classes, overall {esc(fmt_pct(total_c / total_t))} '
            f'({esc(fmt_num(total_c))}/{esc(fmt_num(total_t))}). Worst first; '
            f'red &lt; 50%, amber &lt; 80%.</p>')
    tail = []
    if hidden:
        tail.append(f'<p class="muted hidden-count">{hidden} better-scoring class'
                    f"{'es' if hidden != 1 else ''} not shown.</p>")
    if no_data:
        tail.append(f'<p class="muted">{no_data} class{"es" if no_data != 1 else ""} '
                    f"without evaluation examples.</p>")
    return head + hbar_chart(items, max_value=1.0, color_fn=_acc_colour,
                             title="Per-class accuracy") + "".join(tail)


def _sec_confusion(s: dict) -> str:
    conf = _dict(s.get("confusion"))
    classes = [str(c) for c in _list(conf.get("classes"))]
    matrix = _list(conf.get("matrix"))
    if not classes or not matrix:
        return _na("no confusion matrix")
    idx, pairs = top_confusions(classes, matrix)
    if not idx:
        return '<p class="ok-text">No misclassifications: every prediction was correct.</p>'
    sub = [[(_list(matrix[i])[j] if i < len(matrix) and j < len(_list(matrix[i])) else 0)
            for j in idx] for i in idx]
    names = [classes[i] for i in idx]
    total_err = sum(float(v) for i, row in enumerate(matrix[:len(classes)])
                    for j, v in enumerate(_list(row)[:len(classes)])
                    if i != j and _finite(v) and float(v) > 0)
    parts = [f"<p>{esc(fmt_num(total_err))} misclassified examples in a {len(classes)}-class "
             f"matrix. The {len(idx)} classes involved in the most errors:</p>",
             heatmap(names, names, sub, title="Confusions among the most-confused classes"),
             '<p class="muted">Rows: true class; columns: predicted class. Green: correct '
             "predictions (diagonal); red: errors, darker = more. Errors involving classes "
             "outside this subset are counted in the table below but not drawn.</p>",
             "<h3>Top confused pairs</h3>"]
    rows = [[esc(classes[i]), esc(classes[j]), esc(fmt_num(c)),
             esc(fmt_pct(c / rt)) if rt else "—"] for i, j, c, rt in pairs]
    parts.append(_table(["True class", "Predicted as", "Count", "Share of true class"], rows,
                        num_cols=(2, 3), cls="pairs"))
    return "".join(parts)


def _sec_gradients(s: dict) -> str:
    g = _dict(s.get("gradients"))
    groups = _dict(g.get("groups"))
    steps = _list(g.get("step"))
    if not groups:
        return _na("no gradient norms")
    series, bad_total, bad_by = [], 0, []
    n_values = 0
    for k, (name, vals) in enumerate(groups.items()):
        vals = _list(vals)
        xs = steps[:len(vals)] if len(steps) >= len(vals) else list(range(1, len(vals) + 1))
        good_x, good_y, bad_x = [], [], []
        for x, v in zip(xs, vals):
            if not _finite(x):
                continue
            if _finite(v) and float(v) > 0:
                good_x.append(x)
                good_y.append(v)
            else:
                bad_x.append(x)
        n_values += len(good_y) + len(bad_x)
        dx, dy = downsample(good_x, good_y, MAX_PLOT_POINTS)
        series.append(Series(str(name), dx, dy, PALETTE[k % len(PALETTE)], width=1.6,
                             skipped_x=bad_x))
        if bad_x:
            bad_total += len(bad_x)
            bad_by.append(f"{name}: {len(bad_x)}")
    parts = [line_chart(series, log_y=True, mark_skipped=True, title="Gradient L2 norm per group",
                        x_label="step", y_label="gradient L2 norm")]
    if bad_total:
        parts.append(f'<p class="warn-text" data-skipped="{bad_total}"><strong>{bad_total}</strong> '
                     f"non-finite or non-positive value{'s' if bad_total != 1 else ''} (NaN, ±inf "
                     f"or 0) skipped and marked with red triangles on the step axis — "
                     f"{esc('; '.join(bad_by))}.</p>")
    else:
        parts.append(f'<p class="muted" data-skipped="0">All {n_values} values finite and positive; '
                     f"log scale.</p>")
    return "".join(parts)


def _sec_step_time(s: dict) -> str:
    st = _dict(s.get("steps"))
    data, comp = _list(st.get("data_seconds")), _list(st.get("compute_seconds"))
    sx = _list(st.get("step")) or list(range(1, max(len(data), len(comp)) + 1))
    trip = [(float(x), float(d), float(c)) for x, d, c in zip(sx, data, comp)
            if _finite(x) and _finite(d) and _finite(c) and float(d) >= 0 and float(c) >= 0]
    if not trip:
        return _na("no per-step timings")
    sum_d, sum_c = sum(t[1] for t in trip), sum(t[2] for t in trip)
    share = sum_d / (sum_d + sum_c) if sum_d + sum_c > 0 else 0.0
    xs = [t[0] for t in trip]
    tot_x, tot_y = downsample(xs, [t[1] + t[2] for t in trip], MAX_PLOT_POINTS, "mean")
    cx, cy = downsample(xs, [t[2] for t in trip], MAX_PLOT_POINTS, "mean")
    ms = lambda v: fmt_num(1000 * v)  # noqa: E731
    cls = "warn-text" if share >= 0.3 else ""
    head = (f'<div class="kpis"><div class="kpi"><div class="k">Time waiting for data</div>'
            f'<div class="v {cls}" data-share="{share:.6f}">{esc(fmt_pct(share))}</div></div>'
            f'<div class="kpi"><div class="k">Mean data wait / step</div>'
            f'<div class="v">{esc(ms(sum_d / len(trip)))} ms</div></div>'
            f'<div class="kpi"><div class="k">Mean compute / step</div>'
            f'<div class="v">{esc(ms(sum_c / len(trip)))} ms</div></div>'
            f'<div class="kpi"><div class="k">Steps timed</div>'
            f'<div class="v">{len(trip):,}</div></div></div>')
    note = ('<p class="muted">Stacked: compute at the bottom, data wait on top'
            + (f"; averaged over buckets of about {len(trip) // len(tot_x)} steps" if len(tot_x) < len(trip) else "")
            + ".</p>")
    chart = line_chart([Series("data wait (on top)", tot_x, [v * 1000 for v in tot_y], "#dd8a1c",
                               width=1.2, markers=False, fill="#f8d5a8"),
                        Series("compute", cx, [v * 1000 for v in cy], PALETTE[0], width=1.2,
                               markers=False, fill="#c6d7ea")],
                       title="Time per training step", x_label="step", y_label="ms per step",
                       y_min=0, height=240)
    return head + chart + note


def _sec_system(s: dict) -> str:
    sy = _dict(s.get("system"))
    t = _list(sy.get("t"))
    if not t:
        return _na("no system samples")
    dur = max((float(v) for v in t if _finite(v)), default=0.0)
    scale, unit = (60.0, "minutes") if dur > 1200 else (1.0, "seconds")
    tx = [float(v) / scale if _finite(v) else v for v in t]

    def ser(key: str, name: str, col: str) -> Series | None:
        vals = _list(sy.get(key))
        if not any(_finite(v) for v in vals):
            return None
        dx, dy = downsample(tx, vals, MAX_PLOT_POINTS)
        return Series(name, dx, dy, col, width=1.6, markers=False)
    util = [x for x in (ser("cpu_percent", "CPU %", PALETTE[0]),
                        ser("gpu_util", "GPU utilisation %", PALETTE[2])) if x]
    mem = [x for x in (ser("rss_mb", "process RSS (MB)", PALETTE[1]),
                       ser("gpu_mem_mb", "GPU memory (MB)", PALETTE[5])) if x]
    parts = []
    multi = any(_finite(v) and float(v) > 100 for v in _list(sy.get("cpu_percent")))
    parts.append(f'<p class="muted">{len(t):,} samples over {esc(fmt_duration(dur))}.'
                 + (" CPU % counts one fully busy core as 100 %, so it exceeds 100 with several "
                    "cores busy." if multi else "")
                 + ("" if sy.get("gpu_util") else " GPU: not recorded (no GPU or no NVML).") + "</p>")
    parts.append(line_chart(util, title="Utilisation", x_label=f"{unit} since start",
                            y_label="percent", y_min=0, height=220) if util else _na("no CPU/GPU utilisation"))
    parts.append(line_chart(mem, title="Memory", x_label=f"{unit} since start", y_label="MB",
                            y_min=0, height=220) if mem else _na("no memory samples"))
    return "".join(parts)


def _sec_profiler(s: dict) -> str:
    p = _dict(s.get("profiler"))
    if not p:
        return _na("the profiler did not run")
    parts = []
    trace = p.get("trace_file")
    steps = [fmt_num(x) for x in _list(p.get("steps"))]
    parts.append(f"<p>Profiled steps: {esc(', '.join(steps)) if steps else NOT_RECORDED}.</p>")
    if trace:
        parts.append(f'<p>Trace file: <span class="mono">{esc(trace)}</span>. To inspect it, open '
                     '<span class="mono">chrome://tracing</span> in Chrome or Chromium and load '
                     "the file, or drag it into the Perfetto UI "
                     '(<span class="mono">ui.perfetto.dev</span>).</p>')
    else:
        parts.append(f"<p>Trace file: {NOT_RECORDED}.</p>")
    ops = [o for o in _list(p.get("top_ops")) if isinstance(o, dict)]
    if ops:
        has_cuda = any(_finite(o.get("cuda_ms")) and float(o["cuda_ms"]) > 0 for o in ops)
        head = ["Operator", "Calls", "CPU total (ms)", "Self CPU (ms)"] + (["CUDA (ms)"] if has_cuda else [])
        rows = []
        for o in ops[:MAX_PROFILER_OPS]:
            r = [f'<span class="mono">{esc(o.get("name") or "?")}</span>', esc(fmt_num(o.get("calls"))),
                 esc(fmt_num(o.get("cpu_ms"))), esc(fmt_num(o.get("self_cpu_ms")))]
            rows.append(r + ([esc(fmt_num(o.get("cuda_ms")))] if has_cuda else []))
        parts.append(_table(head, rows, num_cols=range(1, len(head)), cls="compact"))
        if len(ops) > MAX_PROFILER_OPS:
            parts.append(f'<p class="muted">{len(ops) - MAX_PROFILER_OPS} more operators in the trace.</p>')
    else:
        parts.append(_na("no operator table"))
    return "".join(parts)


def _sec_dataset(s: dict) -> str:
    d = _dict(s.get("dataset"))
    if not d:
        return _na("no dataset information")
    parts = [f'<p>Fingerprint: <span class="mono">{esc(d["fingerprint"])}</span></p>'
             if d.get("fingerprint") else f"<p>Fingerprint: {NOT_RECORDED}.</p>"]
    counts = {str(k): _dict(v) for k, v in _dict(d.get("class_counts")).items()}
    if counts:
        splits = list(counts)
        srows = []
        for sp in splits:
            vals = [float(v) for v in counts[sp].values() if _finite(v)]
            if vals:
                lo, hi = min(vals), max(vals)
                ratio = "∞ (a class has 0 images)" if lo == 0 else f"{hi / lo:.2f}×"
                srows.append([esc(sp), str(len(vals)), esc(fmt_num(sum(vals))), esc(fmt_num(lo)),
                              esc(fmt_num(hi)), f'<span class="imbalance">{esc(ratio)}</span>'])
            else:
                srows.append([esc(sp), "0", "0", "—", "—", "—"])
        parts.append(_table(["Split", "Classes", "Images", "Min / class", "Max / class",
                             "Imbalance (max/min)"], srows, num_cols=range(1, 6), cls="compact"))
        names = sorted({c for sp in splits for c in counts[sp]})
        rows = []
        for c in names:
            cells = [esc(c)]
            for sp in splits:
                v = counts[sp].get(c)
                cells.append('<span class="zero">0</span>' if _num(v) == 0 else
                             esc(fmt_num(v)) if v is not None else '<span class="zero">—</span>')
            rows.append(cells)
        opened = " open" if len(names) <= 12 else ""
        parts.append(f"<details{opened}><summary>Images per class and split ({len(names)} classes)"
                     f'</summary><div class="scroll">'
                     + _table(["Class"] + [esc(sp) for sp in splits], rows,
                              num_cols=range(1, len(splits) + 1), cls="compact")
                     + "</div></details>")
    else:
        parts.append(f"<p>Class counts: {NOT_RECORDED}.</p>")
    skipped = [x for x in _list(d.get("skipped_images"))]
    if skipped:
        rows = []
        for x in skipped[:MAX_SKIPPED_LISTED]:
            x = _dict(x) if isinstance(x, dict) else {"path": x}
            rows.append([f'<span class="mono">{esc(x.get("path") or "?")}</span>',
                         esc(x.get("reason") or "")])
        more = (f'<p class="muted">… and {len(skipped) - MAX_SKIPPED_LISTED} more.</p>'
                if len(skipped) > MAX_SKIPPED_LISTED else "")
        parts.append(f'<h3>Skipped images <span class="badge b-warn">{len(skipped)}</span></h3>'
                     + _table(["Path", "Reason"], rows, cls="compact") + more)
    elif "skipped_images" in d:
        parts.append("<h3>Skipped images</h3><p>None: every image decoded.</p>")
    else:
        parts.append(f"<h3>Skipped images</h3>{_na()}")
    return "".join(parts)


SECTIONS: list[tuple[str, str, Callable[[dict], str]]] = [
    ("rules", "Rules", _sec_rules),
    ("loss", "Loss", _sec_loss),
    ("accuracy", "Accuracy", _sec_accuracy),
    ("per-class", "Per-class accuracy", _sec_per_class),
    ("confusions", "Largest confusions", _sec_confusion),
    ("gradients", "Gradient norms", _sec_gradients),
    ("step-time", "Step time", _sec_step_time),
    ("utilisation", "Utilisation", _sec_system),
    ("profiler", "Profiler", _sec_profiler),
    ("dataset", "Dataset", _sec_dataset),
]

CSS = """
:root{--fg:#1f2933;--muted:#616e7c;--bg:#f3f5f8;--card:#fff;--line:#e1e5ea;
--ok:#2f855a;--bad:#c53030;--warn:#c77c12;--na:#718096}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:24px 20px 48px}
header,section{background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:18px 22px;margin:0 0 16px}
h1{font-size:22px;margin:0;font-weight:650}
h2{font-size:17px;margin:0 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:14px;margin:18px 0 6px}
small{color:var(--muted);font-weight:400}
.title-row{display:flex;align-items:center;gap:12px;flex-wrap:wrap;margin-bottom:14px}
.kpis{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:8px;margin:0 0 10px}
.kpi{border:1px solid var(--line);border-radius:8px;padding:8px 12px;background:#fafbfc}
.kpi .k{font-size:12px;color:var(--muted)}
.kpi .v{font-size:17px;font-weight:600;overflow-wrap:anywhere}
.kpi.missing .v{font-size:14px;font-weight:400;color:var(--na);font-style:italic}
.badge{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;font-weight:600;
color:#fff;white-space:nowrap}
.b-ok{background:var(--ok)}.b-bad{background:var(--bad)}.b-warn{background:var(--warn)}.b-na{background:var(--na)}
.alert{border-left:4px solid var(--bad);background:#fdf2f2;padding:8px 12px;border-radius:4px;margin:8px 0}
.note{border-left:4px solid var(--warn);background:#fdf8ee;padding:8px 12px;border-radius:4px;margin:8px 0}
nav{display:flex;flex-wrap:wrap;gap:6px;margin:0 0 16px}
nav a{font-size:13px;color:#2b5a8a;text-decoration:none;background:var(--card);border:1px solid var(--line);
border-radius:999px;padding:2px 10px}
nav a:hover{background:#eaf1f8}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:12px;background:#fafbfc}
.num{text-align:right;font-variant-numeric:tabular-nums}
table.compact{width:auto;min-width:50%}
table.kv td{width:25%}
.key{color:var(--muted)}
tr.row-bad td{background:#fff5f5}tr.row-warn td{background:#fffaf0}tr.row-best td{background:#eef7f1;font-weight:600}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:12px;
overflow-wrap:anywhere}
.evidence{color:#3e4c59}
.empty{color:var(--na);font-style:italic;margin:4px 0}
.muted{color:var(--muted);fill:#616e7c;font-size:12px}
.rule-summary{font-size:15px;margin:0 0 10px}.rule-summary.bad strong{color:var(--bad)}.rule-summary.ok strong{color:var(--ok)}
.warn-text{color:var(--warn)}.ok-text{color:var(--ok)}
.zero{color:var(--bad);font-weight:600}
details{margin:10px 0}summary{cursor:pointer;color:#2b5a8a}
.scroll{max-height:420px;overflow:auto;margin-top:6px}
svg.chart{width:100%;height:auto;display:block;margin:6px 0;font-family:inherit}
svg .grid{stroke:#e8ebef;stroke-width:1}
svg .frame{fill:none;stroke:#c5ccd4;stroke-width:1}
svg .tick{font-size:11px;fill:#616e7c}
svg .axis-label{font-size:12px;fill:#3e4c59}
svg .legend{font-size:12px;fill:#1f2933}
svg .hline-label{font-size:11px;font-weight:600}
svg .label{font-size:11px;fill:#1f2933}
svg .value{font-size:11px;fill:#3e4c59}
svg .cell{font-size:11px;font-weight:600}
svg .area{stroke:none}
footer{color:var(--muted);font-size:12px;text-align:center}
@media print{body{background:#fff}nav{display:none}header,section{break-inside:avoid;border-color:#ccc}}
"""


def render_report(summary: dict | None) -> str:
    """The whole report as one self-contained HTML page (see the module docstring)."""
    s = summary if isinstance(summary, dict) else {}
    title = s.get("title") or "Training report"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             # the page needs nothing from anywhere: forbid all loads except inline styles
             '<meta http-equiv="Content-Security-Policy" '
             "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">",
             f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"]
    try:
        parts.append(_header(s))
    except Exception as exc:  # a broken header must not lose the rest of the report
        log.exception("report header failed")
        parts.append(f"<header><h1>{esc(title)}</h1><p class=\"alert\">Could not render the header: "
                     f"{esc(type(exc).__name__)}: {esc(exc)}</p></header>")
    parts.append("<nav>" + "".join(f'<a href="#{sid}">{name}</a>' for sid, name, _ in SECTIONS) + "</nav>")
    for sid, name, fn in SECTIONS:
        try:
            body = fn(s)
        except Exception as exc:
            log.exception("report section %s failed", sid)
            body = (f'<p class="alert">Could not render this section: '
                    f"{esc(type(exc).__name__)}: {esc(exc)}</p>")
        parts.append(f'<section id="{sid}"><h2>{name}</h2>{body}</section>')
    parts.append("<footer>Generated by training/report.py · self-contained, no external resources"
                 "</footer></main></body></html>")
    return "\n".join(parts)


def write_report(summary: dict | None, path: str | os.PathLike) -> Path:
    """Render and write the report atomically; returns the final path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(summary)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
