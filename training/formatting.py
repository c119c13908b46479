"""Formatting for the training report: escaping, tolerant number parsing, numbers, times, tables, badges.

Every value may be missing or malformed (a partial summary): the parsers return None or empty
containers, and the formatters show "—" or "not recorded". Every string goes through ``esc``.
"""
from __future__ import annotations

import html
import math
from datetime import datetime
from typing import Any, Iterable, Sequence

NOT_RECORDED = "not recorded"
STATUS_CLASS = {  # badge colour class per job or rule status
    "completed": "ok", "noissuesfound": "ok",
    "failed": "bad", "issuesfound": "bad",
    "stopped": "warn", "error": "warn",
    "notapplicable": "na",
}


def esc(value: Any) -> str:
    """Escape anything for use in HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def to_float(value: Any) -> float | None:
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


def is_finite(value: Any) -> bool:
    v = to_float(value)
    return v is not None and math.isfinite(v)


def as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def fmt_num(value: Any, sig: int = 4) -> str:
    """4 significant digits; integers as integers; large values with separators."""
    v = to_float(value)
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
    v = to_float(value)
    if v is None or not math.isfinite(v):
        return fmt_num(value) if v is not None else "—"
    if 1.0 < v <= 100.0:
        v /= 100.0
    return f"{100.0 * v:.{digits}f}%"


def fmt_duration(seconds: Any) -> str:
    v = to_float(seconds)
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


def fmt_time(value: Any) -> str:
    """ISO time as ``2024-11-22 04:30:12 UTC``; anything else unchanged."""
    text = str(value)
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    off = t.utcoffset()
    zone = "" if off is None else " UTC" if not off else " " + t.strftime("%z")
    return t.strftime("%Y-%m-%d %H:%M:%S") + zone


def shorten(text: str, limit: int = 28) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def not_recorded(why: str = "") -> str:
    """The placeholder for a part of the report the run did not record."""
    tail = f" — {esc(why)}" if why else ""
    return f'<p class="empty">{NOT_RECORDED}{tail}</p>'


def compact_evidence(evidence: Any, limit: int = 160) -> str:
    """Evidence dict as a short one-liner: ``step=120; values=[1.2, 1.1, … +40]``."""
    def one(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            head = ", ".join(one(x) for x in v[:6])
            more = f", … +{len(v) - 6}" if len(v) > 6 else ""
            return f"[{head}{more}]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {one(x)}" for k, x in list(v.items())[:6]) + "}"
        if to_float(v) is not None:
            return fmt_num(v)
        return str(v)

    if evidence in (None, "", {}, []):
        return ""
    if isinstance(evidence, dict):
        text = "; ".join(f"{k}={one(v)}" for k, v in evidence.items())
    else:
        text = one(evidence)
    return shorten(text, limit)


def badge(status: Any, fallback: str = NOT_RECORDED) -> str:
    text = str(status) if status not in (None, "") else fallback
    cls = STATUS_CLASS.get(text.replace(" ", "").lower(), "na")
    return f'<span class="badge b-{cls}">{esc(text)}</span>'


def html_table(head: Sequence[str], rows: Iterable[Sequence[str]], num_cols: Iterable[int] = (),
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
