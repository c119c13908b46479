"""The sections of the training report, each a function of the run's summary returning HTML.

``SECTIONS`` lists them in page order: (anchor id, heading, render function). ``header`` is the top card.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any, Callable, Sequence

from training.charts import MAX_PLOT_POINTS, PALETTE, Series, downsample, hbar_chart, heatmap, line_chart
from training.formatting import (NOT_RECORDED, as_dict, as_list, badge, compact_evidence, esc, fmt_duration, fmt_num,
                                 fmt_pct, fmt_time, html_table, is_finite, not_recorded, to_float)
from training.summary import EpochResult, RuleResult, TestResult, TrainingSummary

MAX_CLASS_BARS = 40
#: Classes in the confusion heatmap, and rows in the "top confused pairs" table.
CONFUSION_CLASSES = 10
CONFUSION_PAIRS = 15
#: Rows shown in the profiler table and the skipped-images list.
MAX_PROFILER_OPS = 25
MAX_SKIPPED_LISTED = 100


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
    for i, row in enumerate(as_list(matrix)[:n]):
        for j, v in enumerate(as_list(row)[:n]):
            if is_finite(v) and float(v) > 0:
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


def _epochs(s: TrainingSummary) -> list[EpochResult]:
    """The recorded epochs, numbered in order where their number is missing."""
    rows = [e for e in as_list(s.epochs) if isinstance(e, EpochResult)]
    return [e if is_finite(e.epoch) else replace(e, epoch=k + 1) for k, e in enumerate(rows)]


def _test(s: TrainingSummary) -> TestResult | None:
    return s.test if isinstance(s.test, TestResult) else None


def _best(s: TrainingSummary) -> tuple[float | None, float | None, str]:
    """(best epoch, its val acc, how it was chosen)."""
    rows = _epochs(s)
    be = to_float(s.best_epoch)
    if be is not None and math.isfinite(be):
        acc = next((to_float(e.val_acc) for e in rows if to_float(e.epoch) == be), None)
        return be, acc, "recorded"
    cand = [(float(e.val_acc), float(e.epoch)) for e in rows if is_finite(e.val_acc)]
    if cand:
        acc, ep = max(cand, key=lambda c: (c[0], -c[1]))
        return ep, acc, "by val acc"
    return None, None, ""


def accuracy_colour(v: float) -> str:
    return "#c53030" if v < 0.5 else "#dd8a1c" if v < 0.8 else "#2f855a"


def header(s: TrainingSummary) -> str:
    """The top card: title, status, key numbers, failure reason and hyperparameters."""
    title = s.title or "Training report"
    be, bacc, how = _best(s)
    test = _test(s)
    epochs = _epochs(s)
    duration = esc(fmt_duration(s.seconds))
    if not is_finite(s.seconds):
        secs = [float(e.seconds) for e in epochs if is_finite(e.seconds)]
        if secs:  # fall back to the epochs' own timings
            duration = f"≈ {esc(fmt_duration(sum(secs)))} <small>(sum of epochs)</small>"
    kpis = [
        ("Device", esc(s.device) if s.device else NOT_RECORDED),
        ("Started", esc(fmt_time(s.started_at)) if s.started_at else NOT_RECORDED),
        ("Duration", duration),
        ("Test accuracy", esc(fmt_pct(test.test_acc)) if test and is_finite(test.test_acc) else NOT_RECORDED),
        ("Test loss", esc(fmt_num(test.test_loss)) if test and is_finite(test.test_loss) else NOT_RECORDED),
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
             f'{badge(s.status)}</div><div class="kpis">{cards}</div>']
    if s.failure_reason:
        parts.append(f'<div class="alert"><strong>Failure reason:</strong> '
                     f'<span class="mono">{esc(s.failure_reason)}</span></div>')
    job = as_dict(s.job)
    if job:
        items = list(job.items())
        cells = []
        for k in range(0, len(items), 2):
            row = []
            for key, val in items[k:k + 2]:
                shown = fmt_num(val) if to_float(val) is not None else (
                    json.dumps(val, default=str) if isinstance(val, (list, dict, bool)) or val is None
                    else str(val))
                row += [f'<span class="key">{esc(key)}</span>', f'<span class="mono">{esc(shown)}</span>']
            cells.append(row + ["", ""] * (2 - len(items[k:k + 2])))
        parts.append("<h3>Hyperparameters</h3>" + html_table(["Parameter", "Value", "Parameter", "Value"],
                                                          cells, cls="kv"))
    else:
        parts.append("<h3>Hyperparameters</h3>" + not_recorded("no job parameters in the summary"))
    parts.append("</header>")
    return "".join(parts)


def section_rules(s: TrainingSummary) -> str:
    rules = [r for r in as_list(s.rules) if isinstance(r, RuleResult)]
    if not rules:
        return not_recorded("no rules were evaluated")
    order = {"issuesfound": 0, "error": 1, "noissuesfound": 2, "notapplicable": 3}
    norm = [str(r.status or "").replace(" ", "").lower() for r in rules]
    n_issues = sum(1 for n in norm if n == "issuesfound")
    n_err = sum(1 for n in norm if n == "error")
    ranked = sorted(range(len(rules)), key=lambda i: order.get(norm[i], 4))
    rows, rcls = [], []
    for i in ranked:
        r = rules[i]
        ev = r.evidence
        full = json.dumps(ev, default=str) if ev not in (None, "", {}, []) else ""
        rows.append([
            f"<strong>{esc(r.name or 'unnamed rule')}</strong>",
            esc(r.kind or "—"),
            badge(r.status, "unknown"),
            esc(r.message or ""),
            esc(r.advice or ""),
            f'<span class="mono evidence" title="{esc(full)}">{esc(compact_evidence(ev))}</span>',
        ])
        rcls.append({"issuesfound": "row-bad", "error": "row-warn"}.get(norm[i], ""))
    cls = "bad" if n_issues else "ok"
    extra = f", {n_err} rule{'s' if n_err != 1 else ''} failed to run" if n_err else ""
    head = (f'<p class="rule-summary {cls}" data-issues="{n_issues}"><strong>{n_issues}</strong> '
            f"issue{'s' if n_issues != 1 else ''} found by {len(rules)} rule"
            f"{'s' if len(rules) != 1 else ''}{extra}.</p>")
    return head + html_table(["Rule", "Kind", "Status", "What was seen", "What to do", "Evidence"],
                             rows, cls="rules", row_classes=rcls)


def _best_line(s: TrainingSummary) -> list[tuple[float, str, str]]:
    be, _, _ = _best(s)
    return [(be, f"best epoch {fmt_num(be)}", "#616e7c")] if be is not None else []


def _epoch_series(s: TrainingSummary, key: str) -> tuple[list[float], list[Any]]:
    rows = _epochs(s)
    return [float(e.epoch) for e in rows], [getattr(e, key) for e in rows]


def _spans_decades(values, decades: float = 2.0) -> bool:
    """True when positive values span more than ``decades`` powers of ten: one early spike (BatchNorm
    statistics settling in a from-scratch run) would otherwise flatten every other point."""
    positive = [float(v) for v in values if is_finite(v) and float(v) > 0]
    return len(positive) > 1 and max(positive) / min(positive) > 10 ** decades


def section_loss(s: TrainingSummary) -> str:
    parts = []
    ex, tr = _epoch_series(s, "train_loss")
    _, va = _epoch_series(s, "val_loss")
    if any(is_finite(v) for v in tr + va):
        parts.append(line_chart([Series("train loss", ex, tr, PALETTE[0]),
                                 Series("validation loss", ex, va, PALETTE[1])],
                                vlines=_best_line(s), title="Loss per epoch", x_label="epoch",
                                y_label="loss", log_y=_spans_decades(tr + va)))
    else:
        parts.append(not_recorded("no per-epoch loss"))
    steps = as_dict(s.steps)
    sx, sy = as_list(steps.get("step")), as_list(steps.get("loss"))
    if not sx and sy:
        sx = list(range(1, len(sy) + 1))
    if any(is_finite(v) for v in sy):
        dx, dy = downsample(sx, sy, MAX_PLOT_POINTS, "minmax")
        n = sum(1 for x, y in zip(sx, sy) if is_finite(x) and is_finite(y))
        note = (f"{n:,} steps, shown as {len(dx)} points (lowest and highest loss of each bucket kept)"
                if len(dx) < n else f"{n:,} steps")
        parts.append(f'<h3>Training loss per step <small>({esc(note)})</small></h3>')
        parts.append(line_chart([Series("train loss per step", dx, dy, "#8fb3d9", width=1.2,
                                        markers=False)],
                                title="Training loss per step", x_label="step", y_label="loss",
                                height=220))
    else:
        parts.append("<h3>Training loss per step</h3>" + not_recorded("no per-step loss"))
    return "".join(parts)


def section_accuracy(s: TrainingSummary) -> str:
    parts = []
    ex, tr = _epoch_series(s, "train_acc")
    _, va = _epoch_series(s, "val_acc")
    test = _test(s)
    hl = []
    if test and is_finite(test.test_acc):
        hl.append((float(test.test_acc), f"test {fmt_pct(test.test_acc)}", "#2f855a"))
    if any(is_finite(v) for v in tr + va) or hl:
        parts.append(line_chart([Series("train accuracy", ex, tr, PALETTE[0]),
                                 Series("validation accuracy", ex, va, PALETTE[1])],
                                hlines=hl, vlines=_best_line(s), title="Accuracy per epoch", x_label="epoch",
                                y_label="accuracy", y_format=lambda v: fmt_pct(v, 0)))
        if not hl:
            parts.append('<p class="muted">Test accuracy not recorded.</p>')
    else:
        parts.append(not_recorded("no accuracy values"))
    rows = _epochs(s)
    if rows:
        be, _, _ = _best(s)
        body, rcls = [], []
        for e in rows:
            body.append([esc(fmt_num(e.epoch)), esc(fmt_num(e.train_loss)), esc(fmt_pct(e.train_acc)),
                         esc(fmt_num(e.val_loss)), esc(fmt_pct(e.val_acc)), esc(fmt_num(e.seconds))])
            rcls.append("row-best" if be is not None and to_float(e.epoch) == be else "")
        opened = " open" if len(rows) <= 15 else ""
        parts.append(f"<details{opened}><summary>Per-epoch numbers (best epoch highlighted)</summary>"
                     + html_table(["Epoch", "Train loss", "Train acc", "Val loss", "Val acc", "Seconds"],
                                  body, num_cols=range(6), cls="compact", row_classes=rcls)
                     + "</details>")
    return "".join(parts)


def section_per_class(s: TrainingSummary) -> str:
    entries = []
    no_data = 0
    for e in as_list(s.per_class):
        if not isinstance(e, dict):
            continue
        c, t = to_float(e.get("correct")), to_float(e.get("total"))
        name = e.get("class") or e.get("label") or "?"
        if c is None or t is None or not math.isfinite(c) or not (math.isfinite(t) and t > 0):
            no_data += 1
            continue
        entries.append((c / t, -t, str(name), c, t))
    if not entries:
        return not_recorded("no per-class results" + (f" ({no_data} classes without examples)" if no_data else ""))
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
    return head + hbar_chart(items, max_value=1.0, color_fn=accuracy_colour,
                             title="Per-class accuracy") + "".join(tail)


def section_confusion(s: TrainingSummary) -> str:
    conf = as_dict(s.confusion)
    classes = [str(c) for c in as_list(conf.get("classes"))]
    matrix = as_list(conf.get("matrix"))
    if not classes or not matrix:
        return not_recorded("no confusion matrix")
    idx, pairs = top_confusions(classes, matrix)
    if not idx:
        return '<p class="ok-text">No misclassifications: every prediction was correct.</p>'
    sub = [[(as_list(matrix[i])[j] if i < len(matrix) and j < len(as_list(matrix[i])) else 0)
            for j in idx] for i in idx]
    names = [classes[i] for i in idx]
    total_err = sum(float(v) for i, row in enumerate(matrix[:len(classes)])
                    for j, v in enumerate(as_list(row)[:len(classes)])
                    if i != j and is_finite(v) and float(v) > 0)
    parts = [f"<p>{esc(fmt_num(total_err))} misclassified examples in a {len(classes)}-class "
             f"matrix. The {len(idx)} classes involved in the most errors:</p>",
             heatmap(names, names, sub, title="Confusions among the most-confused classes"),
             '<p class="muted">Rows: true class; columns: predicted class. Green: correct '
             "predictions (diagonal); red: errors, darker = more. Errors involving classes "
             "outside this subset are counted in the table below but not drawn.</p>",
             "<h3>Top confused pairs</h3>"]
    rows = [[esc(classes[i]), esc(classes[j]), esc(fmt_num(c)),
             esc(fmt_pct(c / rt)) if rt else "—"] for i, j, c, rt in pairs]
    parts.append(html_table(["True class", "Predicted as", "Count", "Share of true class"], rows,
                        num_cols=(2, 3), cls="pairs"))
    return "".join(parts)


def section_gradients(s: TrainingSummary) -> str:
    g = as_dict(s.gradients)
    groups = as_dict(g.get("groups"))
    steps = as_list(g.get("step"))
    if not groups:
        return not_recorded("no gradient norms")
    series, bad_total, bad_by = [], 0, []
    n_values = 0
    for k, (name, vals) in enumerate(groups.items()):
        vals = as_list(vals)
        xs = steps[:len(vals)] if len(steps) >= len(vals) else list(range(1, len(vals) + 1))
        good_x, good_y, bad_x = [], [], []
        for x, v in zip(xs, vals):
            if not is_finite(x):
                continue
            if is_finite(v) and float(v) > 0:
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


def section_step_time(s: TrainingSummary) -> str:
    st = as_dict(s.steps)
    data, comp = as_list(st.get("data_seconds")), as_list(st.get("compute_seconds"))
    sx = as_list(st.get("step")) or list(range(1, max(len(data), len(comp)) + 1))
    trip = [(float(x), float(d), float(c)) for x, d, c in zip(sx, data, comp)
            if is_finite(x) and is_finite(d) and is_finite(c) and float(d) >= 0 and float(c) >= 0]
    if not trip:
        return not_recorded("no per-step timings")
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


def section_system(s: TrainingSummary) -> str:
    sy = as_dict(s.system)
    t = as_list(sy.get("t"))
    if not t:
        return not_recorded("no system samples")
    dur = max((float(v) for v in t if is_finite(v)), default=0.0)
    scale, unit = (60.0, "minutes") if dur > 1200 else (1.0, "seconds")
    tx = [float(v) / scale if is_finite(v) else v for v in t]

    def ser(key: str, name: str, col: str) -> Series | None:
        vals = as_list(sy.get(key))
        if not any(is_finite(v) for v in vals):
            return None
        dx, dy = downsample(tx, vals, MAX_PLOT_POINTS)
        return Series(name, dx, dy, col, width=1.6, markers=False)
    util = [x for x in (ser("cpu_percent", "CPU %", PALETTE[0]),
                        ser("gpu_util", "GPU utilisation %", PALETTE[2])) if x]
    mem = [x for x in (ser("rss_mb", "process RSS (MB)", PALETTE[1]),
                       ser("gpu_mem_mb", "GPU memory (MB)", PALETTE[5])) if x]
    parts = []
    multi = any(is_finite(v) and float(v) > 100 for v in as_list(sy.get("cpu_percent")))
    parts.append(f'<p class="muted">{len(t):,} samples over {esc(fmt_duration(dur))}.'
                 + (" CPU % counts one fully busy core as 100 %, so it exceeds 100 with several "
                    "cores busy." if multi else "")
                 + ("" if sy.get("gpu_util") else " GPU: not recorded (no GPU or no NVML).") + "</p>")
    parts.append(line_chart(util, title="Utilisation", x_label=f"{unit} since start",
                            y_label="percent", y_min=0, height=220) if util else not_recorded("no CPU/GPU utilisation"))
    parts.append(line_chart(mem, title="Memory", x_label=f"{unit} since start", y_label="MB",
                            y_min=0, height=220) if mem else not_recorded("no memory samples"))
    return "".join(parts)


def section_profiler(s: TrainingSummary) -> str:
    p = as_dict(s.profiler)
    if not p:
        return not_recorded("the profiler did not run")
    parts = []
    trace = p.get("trace_file")
    steps = [fmt_num(x) for x in as_list(p.get("steps"))]
    parts.append(f"<p>Profiled steps: {esc(', '.join(steps)) if steps else NOT_RECORDED}.</p>")
    if trace:
        parts.append(f'<p>Trace file: <span class="mono">{esc(trace)}</span>. To inspect it, open '
                     '<span class="mono">chrome://tracing</span> in Chrome or Chromium and load '
                     "the file, or drag it into the Perfetto UI "
                     '(<span class="mono">ui.perfetto.dev</span>).</p>')
    else:
        parts.append(f"<p>Trace file: {NOT_RECORDED}.</p>")
    ops = [o for o in as_list(p.get("top_ops")) if isinstance(o, dict)]
    if ops:
        has_cuda = any(is_finite(o.get("cuda_ms")) and float(o["cuda_ms"]) > 0 for o in ops)
        head = ["Operator", "Calls", "CPU total (ms)", "Self CPU (ms)"] + (["CUDA (ms)"] if has_cuda else [])
        rows = []
        for o in ops[:MAX_PROFILER_OPS]:
            r = [f'<span class="mono">{esc(o.get("name") or "?")}</span>', esc(fmt_num(o.get("calls"))),
                 esc(fmt_num(o.get("cpu_ms"))), esc(fmt_num(o.get("self_cpu_ms")))]
            rows.append(r + ([esc(fmt_num(o.get("cuda_ms")))] if has_cuda else []))
        parts.append(html_table(head, rows, num_cols=range(1, len(head)), cls="compact"))
        if len(ops) > MAX_PROFILER_OPS:
            parts.append(f'<p class="muted">{len(ops) - MAX_PROFILER_OPS} more operators in the trace.</p>')
    else:
        parts.append(not_recorded("no operator table"))
    return "".join(parts)


def section_dataset(s: TrainingSummary) -> str:
    d = as_dict(s.dataset)
    if not d:
        return not_recorded("no dataset information")
    parts = [f'<p>Fingerprint: <span class="mono">{esc(d["fingerprint"])}</span></p>'
             if d.get("fingerprint") else f"<p>Fingerprint: {NOT_RECORDED}.</p>"]
    counts = {str(k): as_dict(v) for k, v in as_dict(d.get("class_counts")).items()}
    if counts:
        splits = list(counts)
        srows = []
        for sp in splits:
            vals = [float(v) for v in counts[sp].values() if is_finite(v)]
            if vals:
                lo, hi = min(vals), max(vals)
                ratio = "∞ (a class has 0 images)" if lo == 0 else f"{hi / lo:.2f}×"
                srows.append([esc(sp), str(len(vals)), esc(fmt_num(sum(vals))), esc(fmt_num(lo)),
                              esc(fmt_num(hi)), f'<span class="imbalance">{esc(ratio)}</span>'])
            else:
                srows.append([esc(sp), "0", "0", "—", "—", "—"])
        parts.append(html_table(["Split", "Classes", "Images", "Min / class", "Max / class",
                             "Imbalance (max/min)"], srows, num_cols=range(1, 6), cls="compact"))
        names = sorted({c for sp in splits for c in counts[sp]})
        rows = []
        for c in names:
            cells = [esc(c)]
            for sp in splits:
                v = counts[sp].get(c)
                cells.append('<span class="zero">0</span>' if to_float(v) == 0 else
                             esc(fmt_num(v)) if v is not None else '<span class="zero">—</span>')
            rows.append(cells)
        opened = " open" if len(names) <= 12 else ""
        parts.append(f"<details{opened}><summary>Images per class and split ({len(names)} classes)"
                     f'</summary><div class="scroll">'
                     + html_table(["Class"] + [esc(sp) for sp in splits], rows,
                              num_cols=range(1, len(splits) + 1), cls="compact")
                     + "</div></details>")
    else:
        parts.append(f"<p>Class counts: {NOT_RECORDED}.</p>")
    skipped = [x for x in as_list(d.get("skipped_images"))]
    if skipped:
        rows = []
        for x in skipped[:MAX_SKIPPED_LISTED]:
            x = as_dict(x) if isinstance(x, dict) else {"path": x}
            rows.append([f'<span class="mono">{esc(x.get("path") or "?")}</span>',
                         esc(x.get("reason") or "")])
        more = (f'<p class="muted">… and {len(skipped) - MAX_SKIPPED_LISTED} more.</p>'
                if len(skipped) > MAX_SKIPPED_LISTED else "")
        parts.append(f'<h3>Skipped images <span class="badge b-warn">{len(skipped)}</span></h3>'
                     + html_table(["Path", "Reason"], rows, cls="compact") + more)
    elif "skipped_images" in d:
        parts.append("<h3>Skipped images</h3><p>None: every image decoded.</p>")
    else:
        parts.append(f"<h3>Skipped images</h3>{not_recorded()}")
    return "".join(parts)


SECTIONS: list[tuple[str, str, Callable[[TrainingSummary], str]]] = [
    ("rules", "Rules", section_rules),
    ("loss", "Loss", section_loss),
    ("accuracy", "Accuracy", section_accuracy),
    ("per-class", "Per-class accuracy", section_per_class),
    ("confusions", "Largest confusions", section_confusion),
    ("gradients", "Gradient norms", section_gradients),
    ("step-time", "Step time", section_step_time),
    ("utilisation", "Utilisation", section_system),
    ("profiler", "Profiler", section_profiler),
    ("dataset", "Dataset", section_dataset),
]
