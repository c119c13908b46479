"""SVG charts for the training report: line charts, horizontal bars and heatmaps, with their scales.

Each chart function returns one ``<svg>`` string; no scripts, no external references.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from training.formatting import esc, fmt_num, fmt_pct, is_finite, shorten, to_float

MAX_PLOT_POINTS = 500
PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
           "#b07aa1", "#edc948", "#ff9da7", "#9c755f", "#7f7f7f"]

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
    pts = [(float(x), float(y)) for x, y in zip(xs, ys) if is_finite(x) and is_finite(y)]
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
        return is_finite(y) and (not log_y or float(y) > 0)

    kept, skipped = [], []
    for s in series:
        pts, bad = [], list(s.skipped_x)
        for x, y in zip(s.x, s.y):
            if not is_finite(x):
                continue
            if ok(y):
                pts.append((float(x), float(y)))
            else:
                bad.append(float(x))
        kept.append(pts)
        skipped.append([float(x) for x in bad if is_finite(x)])
    hl = [(float(v), lab, col) for v, lab, col in hlines if ok(v)]
    vl = [(float(v), lab, col) for v, lab, col in vlines if is_finite(v)]
    all_x = [p[0] for pts in kept for p in pts] + [x for bad in skipped for x in bad] \
        + [v for v, _, _ in vl]
    all_y = [p[1] for pts in kept for p in pts] + [v for v, _, _ in hl]
    if not all_x or not all_y:
        return _empty_svg(width, min(height, 120), "no finite values to plot")

    # legend layout (wraps onto more rows when needed)
    legend, row, lx = [], 0, 0.0
    left, right, bottom = 64, 24, 46
    for i, s in enumerate(series):
        w = 42 + 6.8 * len(shorten(s.name, 40))
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
                   f"{esc(shorten(s.name, 40))}</text>")
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
    items = [(lab, float(v), note) for lab, v, note in items if is_finite(v)]
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
                   f'text-anchor="end">{esc(shorten(lab, 34))}</text>'
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
    longest = max(len(shorten(lab, 24)) for lab in col_labels)
    top = 24 + int(longest * 6.4 * 0.71)  # rotated column labels need this much room
    width = label_width + n_c * cell + int(longest * 6.4 * 0.71) + 20
    height = top + n_r * cell + 4
    vals = [[(to_float(row[j]) if j < len(row) else 0.0) or 0.0 for j in range(n_c)]
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
                   f"{esc(shorten(lab, 24))}</text>")
    for i, row in enumerate(vals):
        y = top + i * cell
        out.append(f'<text class="label hm-row" x="{label_width - 8}" y="{_f1(y + cell / 2 + 4)}" '
                   f'text-anchor="end">{esc(shorten(row_labels[i], 32))}</text>')
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
