"""Render the training job's ``report.html``.

One self-contained HTML page (embedded ``<style>``, inline SVG charts, no scripts, no external
references) built with the standard library only, from a ``TrainingSummary``:

- ``render_report(summary) -> str``: the whole page. Any field of the summary may be missing (None),
  empty or malformed; missing parts are shown as "not recorded" and a section that cannot be drawn
  shows an error note instead of breaking the page.
- ``write_report(summary, path) -> Path``: render and write atomically (temporary file in the same
  folder + ``os.replace``).

The page is assembled here; its sections live in ``training.report_sections``, the SVG charts in
``training.charts`` and the number and HTML formatting in ``training.formatting``. Every string that
comes from the summary passes through ``formatting.esc``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from training.formatting import esc
from training.report_sections import SECTIONS, header
from training.summary import TrainingSummary

__all__ = ["render_report", "write_report"]

log = logging.getLogger(__name__)

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


def render_report(summary: TrainingSummary | None) -> str:
    """The whole report as one self-contained HTML page (see the module docstring)."""
    s = summary if isinstance(summary, TrainingSummary) else TrainingSummary()
    title = s.title or "Training report"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             # the page needs nothing from anywhere: forbid all loads except inline styles
             '<meta http-equiv="Content-Security-Policy" '
             "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">",
             f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"]
    try:
        parts.append(header(s))
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


def write_report(summary: TrainingSummary | None, path: str | os.PathLike) -> Path:
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
