"""The self-contained HTML training report: training/report.py and its sections, charts and formatting."""
from __future__ import annotations

import math
import os
import re

import pytest

from training.charts import MAX_PLOT_POINTS, Series, downsample, line_chart
from training.formatting import fmt_duration, fmt_num, fmt_pct
from training.report import render_report, write_report
from training.report_sections import MAX_CLASS_BARS, top_confusions
from training.summary import EpochResult, RuleResult, TestResult, TrainingSummary

NAN, INF = float("nan"), float("inf")
SECTION_IDS = ["rules", "loss", "accuracy", "per-class", "confusions", "gradients",
               "step-time", "utilisation", "profiler", "dataset"]


# --------------------------------------------------------------------------- helpers
def polyline(svg: str, name: str) -> list[tuple[float, float]]:
    """The (x, y) points of the polyline drawn for series ``name``."""
    m = re.search(r'<polyline data-series="%s" points="([^"]*)"' % re.escape(name), svg)
    assert m, f"no polyline for series {name!r}"
    return [tuple(map(float, p.split(","))) for p in m.group(1).split()]


def frame(svg: str) -> tuple[float, float, float, float]:
    """The plot area (x, y, width, height) of a line chart."""
    m = re.search(r'<rect class="frame" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" '
                  r'height="([\d.]+)"', svg)
    assert m
    return tuple(float(v) for v in m.groups())


def section(page: str, sid: str) -> str:
    m = re.search(r'<section id="%s">(.*?)</section>' % re.escape(sid), page, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


def sample_summary() -> TrainingSummary:
    classes = ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier"]
    return TrainingSummary(
        title="Training report: dogbreeds-train-abc123",
        job={"arch": "resnet18", "finetune": "head", "epochs": 3, "lr": 0.001},
        status="Completed", device="cpu", started_at="2024-11-22T04:30:12Z",
        seconds=123.4,
        dataset={"fingerprint": "abc", "class_counts": {
            "train": dict(zip(classes, [40, 20, 30])), "valid": dict(zip(classes, [5, 5, 5]))},
            "skipped_images": [{"path": "train/001.A/x.jpg", "reason": "image data is corrupt"}]},
        epochs=[EpochResult(epoch=e, train_loss=1.5 / e, train_acc=0.3 * e, val_loss=1.6 / e,
                            val_acc=0.25 * e, seconds=3.0) for e in (1, 2, 3)],
        best_epoch=3,
        test=TestResult(test_loss=0.5, test_acc=0.7),
        steps={"step": list(range(1, 31)), "loss": [2 - s / 20 for s in range(1, 31)],
               "data_seconds": [0.01] * 30, "compute_seconds": [0.03] * 30},
        gradients={"step": [1, 10, 20], "groups": {"stem": [0.1, 0.05, 0.02],
                                                   "head": [1.0, 0.5, 0.3]}},
        system={"t": [0, 1, 2], "cpu_percent": [50, 60, 55], "rss_mb": [800, 810, 820],
                "gpu_util": None, "gpu_mem_mb": None},
        per_class=[{"class": c, "label": c[4:], "correct": k + 5, "total": 10}
                   for k, c in enumerate(classes)],
        confusion={"classes": classes, "matrix": [[5, 3, 2], [1, 6, 3], [0, 2, 7]]},
        rules=[RuleResult(name="Overfitting", kind="training", status="IssuesFound",
                          message="val loss rose", advice="stop earlier",
                          evidence={"epoch": 3, "values": [1, 2, 3]})],
        profiler={"trace_file": "profiler-trace.json", "steps": [5, 6, 7],
                  "top_ops": [{"name": "aten::conv2d", "calls": 60, "cpu_ms": 120.5,
                               "self_cpu_ms": 10.1, "cuda_ms": 0.0}]},
    )


# --------------------------------------------------------------------------- self-contained
def test_page_is_self_contained_and_renders_every_section():
    page = render_report(sample_summary())
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()
    assert "<link" not in page.lower() and "@import" not in page and "url(" not in page
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))
    assert "<style>" in page and page.count("<svg") >= 7
    # every section present, in the documented order, none broken
    positions = [page.index(f'<section id="{sid}">') for sid in SECTION_IDS]
    assert positions == sorted(positions)
    assert "Could not render" not in page
    assert "profiler-trace.json" in section(page, "profiler")
    assert "chrome://tracing" in page and "Perfetto" in page


# --------------------------------------------------------------------------- line chart
def test_line_chart_plots_only_finite_points_with_larger_values_higher():
    ys = [1.0, 3.0, 2.0, NAN, 5.0, INF, None]
    svg = line_chart([Series("loss", list(range(1, 8)), ys)], mark_skipped=True)
    pts = polyline(svg, "loss")
    assert len(pts) == 4  # 1, 3, 2, 5
    fx, fy, fw, fh = frame(svg)
    xs = [p[0] for p in pts]
    assert xs == sorted(xs) and xs[0] == pytest.approx(fx)  # first step at the left edge
    y1, y3, y2, y5 = (p[1] for p in pts)
    assert y5 < y3 < y2 < y1  # larger value -> smaller SVG y
    assert y1 == pytest.approx(fy + fh, abs=0.1)  # 1 is the lowest tick: bottom of the plot
    assert y5 == pytest.approx(fy, abs=0.1)  # 5 is the highest tick: top of the plot
    assert (y1 - y3) == pytest.approx(y3 - y5, abs=0.1)  # linear scale
    assert svg.count('class="skip"') == 3  # NaN, inf and None are marked


def test_downsample_caps_points_and_keeps_extremes():
    n = 10_000
    ys = [math.sin(i / 50.0) for i in range(n)]
    ys[1234], ys[7777] = 99.0, -42.0
    ys[5000] = NAN
    xs, ds = downsample(range(1, n + 1), ys)
    assert 0 < len(ds) <= MAX_PLOT_POINTS
    assert max(ds) == 99.0 and min(ds) == -42.0
    assert xs[ds.index(99.0)] == 1235 and xs[ds.index(-42.0)] == 7778
    assert all(a < b for a, b in zip(xs, xs[1:]))
    assert xs[0] == 1 and xs[-1] == n  # the x range is kept
    assert all(math.isfinite(v) for v in ds)
    # short series are returned unchanged (minus non-finite values)
    assert downsample([1, 2, 3], [1.0, NAN, 3.0]) == ([1.0, 3.0], [1.0, 3.0])


def test_report_downsamples_a_10000_step_loss_and_keeps_the_spike():
    n = 10_000
    loss = [2.0 * math.exp(-i / 3000) + 0.05 * math.sin(i) for i in range(n)]
    loss[4321] = 9.0
    page = render_report(TrainingSummary(title="t", steps={"step": list(range(1, n + 1)), "loss": loss}))
    sec = section(page, "loss")
    pts = polyline(sec, "train loss per step")
    assert len(pts) <= MAX_PLOT_POINTS
    assert "10,000 steps" in sec
    svg = sec[sec.index("<svg"):]
    fx, fy, fw, fh = frame(svg)
    top = min(pts, key=lambda p: p[1])  # the highest point drawn is the spike at step 4322
    assert top[0] == pytest.approx(fx + (4322 - 1) / (n - 1) * fw, abs=0.15)
    y_ticks = [float(v) for v in re.findall(r'text-anchor="end">([\d.]+)</text>', svg)]
    lo, hi = min(y_ticks), max(y_ticks)
    assert lo <= min(loss) and 9.0 <= hi
    assert top[1] == pytest.approx(fy + (hi - 9.0) / (hi - lo) * fh, abs=0.1)
    bottom = max(pts, key=lambda p: p[1])  # and the lowest loss is drawn lowest
    assert bottom[1] == pytest.approx(fy + (hi - min(loss)) / (hi - lo) * fh, abs=0.1)


# --------------------------------------------------------------------------- gradients
def test_gradient_norms_skip_and_mark_nonfinite_values_on_a_log_scale():
    summary = TrainingSummary(title="t", gradients={"step": [10, 20, 30, 40, 50], "groups": {
        "stem": [1e-3, NAN, 1e-2, 0.0, 1e-1],
        "head": [INF, 1.0, -1.0, 10.0, 100.0]}})
    sec = section(render_report(summary), "gradients")
    stem, head = polyline(sec, "stem"), polyline(sec, "head")
    assert len(stem) == 3 and len(head) == 3
    assert 'data-skipped="4"' in sec
    assert sec.count('class="skip"') == 4
    assert "stem: 2" in sec and "head: 2" in sec
    assert "log scale" in sec
    # log scale: 1e-3, 1e-2, 1e-1 are equally spaced in y, and so are 1, 10, 100
    (_, a), (_, b), (_, c) = stem
    assert a - b == pytest.approx(b - c, abs=0.15) and a > b > c
    (_, d), (_, e), (_, f) = head
    assert d - e == pytest.approx(e - f, abs=0.15)
    assert b - c == pytest.approx(d - e, abs=0.15)  # one decade is one decade everywhere


# --------------------------------------------------------------------------- escaping
def test_user_strings_are_escaped_everywhere():
    evil = "<script>alert(1)</script>"
    s = sample_summary()
    s.title = f"run {evil} & co"
    s.job["note"] = evil
    s.failure_reason = evil
    s.per_class.append({"class": evil, "correct": 0, "total": 4})
    s.confusion = {"classes": ["a", evil], "matrix": [[3, 4], [5, 1]]}
    s.dataset["class_counts"]["train"][evil] = 7
    s.dataset["skipped_images"].append({"path": evil, "reason": evil})
    s.rules.append(RuleResult(name=evil, kind="training", status="Error", message=evil,
                              advice=evil, evidence={"why": evil}))
    s.profiler["top_ops"].append({"name": evil, "calls": 1})
    page = render_report(s)
    assert evil not in page
    assert "<script" not in page.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert page.count(escaped) >= 10
    for sid in ("per-class", "confusions", "dataset", "rules", "profiler"):
        assert escaped in section(page, sid), sid
    assert "<title>run &lt;script&gt;alert(1)&lt;/script&gt; &amp; co</title>" in page


# --------------------------------------------------------------------------- rules
def test_rule_table_shows_each_status_and_counts_issues():
    rules = [
        RuleResult(name="LossNotDecreasing", kind="training", status="IssuesFound",
                   message="flat for 200 steps", advice="raise lr"),
        RuleResult(name="Overfitting", kind="training", status="NoIssuesFound", message="ok"),
        RuleResult(name="LowGPUUtilization", kind="system", status="NotApplicable"),
        RuleResult(name="CPUBottleneck", kind="system", status="Error", message="psutil missing"),
        RuleResult(name="DataLoaderBottleneck", kind="system", status="IssuesFound",
                   message="40% waiting", evidence={"share": 0.4, "steps": list(range(20))}),
    ]
    sec = section(render_report(TrainingSummary(title="t", rules=rules)), "rules")
    assert 'data-issues="2"' in sec and "<strong>2</strong> issues found by 5 rules" in sec
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", sec.split("<tbody>")[1], re.S)
    assert len(rows) == len(rules)
    for r in rules:
        row = next(row for row in rows if f"<strong>{r.name}</strong>" in row)
        assert f">{r.status}</span>" in row
    # rules with issues come first; evidence is compacted
    assert "LossNotDecreasing" in rows[0] and "DataLoaderBottleneck" in rows[1]
    assert "steps=[0, 1, 2, 3, 4, 5, … +14]" in rows[1]
    none_found = section(render_report(TrainingSummary(title="t", rules=rules[1:2])), "rules")
    assert 'data-issues="0"' in none_found


# --------------------------------------------------------------------------- confusions
def test_confusion_section_picks_the_most_confused_classes_of_a_large_matrix():
    n = 30
    classes = [f"{i:03d}.breed_{i}" for i in range(n)]
    m = [[10 if i == j else 0 for j in range(n)] for i in range(n)]
    for i in range(n):  # background noise: one error per class into its neighbour
        m[i][(i + 1) % n] += 1
    heavy = {(3, 17): 25, (17, 3): 12, (5, 9): 20, (22, 8): 15, (11, 26): 9}
    for (i, j), c in heavy.items():
        m[i][j] += c
    idx, pairs = top_confusions(classes, m, k=10)
    expected = {3, 17, 5, 9, 22, 8, 11, 26}
    assert expected <= set(idx) and len(idx) == 10
    assert idx[:2] == [3, 17]  # 3 and 17 are involved in 25 + 12 (+ noise) errors
    assert pairs[0][:3] == (3, 17, 25.0) and pairs[1][:3] == (5, 9, 20.0)

    sec = section(render_report(TrainingSummary(title="t", confusion={"classes": classes, "matrix": m})),
                  "confusions")
    heat_rows = re.findall(r'class="label hm-row"[^>]*>([^<]*)</text>', sec)
    assert len(heat_rows) == 10 and {classes[i] for i in expected} <= set(heat_rows)
    first = re.search(r"<tbody><tr>(.*?)</tr>", sec.split("Top confused pairs")[1], re.S).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", first)
    assert cells[:3] == ["003.breed_3", "017.breed_17", "25"]
    assert cells[3] == fmt_pct(25 / 36)  # share of the true class's 10 + 1 + 25 examples
    total_errors = n + sum(heavy.values())
    assert f"{total_errors} misclassified examples in a 30-class matrix" in sec


# --------------------------------------------------------------------------- per class
def test_per_class_bars_worst_first_and_hidden_count():
    per_class = [{"class": f"c{i:02d}", "correct": i % 10, "total": 10} for i in range(50)]
    per_class.append({"class": "empty", "correct": 0, "total": 0})
    sec = section(render_report(TrainingSummary(title="t", per_class=per_class)), "per-class")
    labels = re.findall(r'<text class="label" [^>]*>([^<]*)</text>', sec)
    assert len(labels) == MAX_CLASS_BARS
    assert set(labels[:5]) == {"c00", "c10", "c20", "c30", "c40"}  # the 0 % classes first
    accs = [float(v) for v in re.findall(r'<text class="value"[^>]*>([\d.]+)%', sec)]
    assert accs == sorted(accs) and accs[0] == 0.0
    assert "10 better-scoring classes not shown" in sec
    assert "1 class without evaluation examples" in sec


# --------------------------------------------------------------------------- almost empty
def test_almost_empty_failed_summary_renders_placeholders():
    page = render_report(TrainingSummary(title="Training report: crashed-job", status="Failed"))
    assert "<h1>Training report: crashed-job</h1>" in page
    assert '<span class="badge b-bad">Failed</span>' in page
    assert "Could not render" not in page
    for sid in SECTION_IDS:
        assert "not recorded" in section(page, sid), sid
    header = page[page.index("<header>"):page.index("</header>")]
    assert header.count("not recorded") >= 7  # device, start, duration, accuracies, epochs...
    # nothing at all, or junk, still gives a page
    assert "not recorded" in render_report(TrainingSummary())
    assert "not recorded" in render_report(None)


def test_malformed_values_do_not_break_sections():
    page = render_report(TrainingSummary(
        title="t", status="Stopped", epochs="oops", test="junk",
        steps={"step": [1, 2, 3], "loss": [None, "x", NAN], "data_seconds": [None]},
        gradients={"step": [1, 2], "groups": {"stem": [NAN, INF]}},
        system={"t": [0, 1], "cpu_percent": None, "rss_mb": [1, "a"]},
        per_class=[{"class": "a"}, 5], confusion={"classes": ["a", "b"], "matrix": [[1]]},
        rules=[RuleResult(name="R", kind="", status=""), "junk"], profiler={"top_ops": [None]},
        dataset={"class_counts": {"train": {"a": 0, "b": 4}}, "skipped_images": ["p.jpg"]},
    ))
    assert "Could not render" not in page
    assert '<span class="badge b-warn">Stopped</span>' in page
    assert "∞ (a class has 0 images)" in section(page, "dataset")
    assert "p.jpg" in section(page, "dataset")
    grads = section(page, "gradients")
    assert 'data-skipped="2"' in grads and "<polyline" not in grads


# --------------------------------------------------------------------------- numbers, step time
def test_number_formatting():
    assert fmt_num(0.000123456) == "0.0001235"
    assert fmt_num(3.14159265) == "3.142"
    assert fmt_num(123456.7) == "123,457"
    assert fmt_num(42.0) == "42"
    assert fmt_num(NAN) == "NaN" and fmt_num(None) == "—"
    assert fmt_pct(0.8123) == "81.2%" and fmt_pct(81.23) == "81.2%"
    assert fmt_duration(3725) == "1 h 2 min 5 s"


def test_step_time_share_of_data_wait():
    steps = {"step": list(range(1, 101)), "data_seconds": [0.01] * 50 + [0.03] * 50,
             "compute_seconds": [0.03] * 100}
    sec = section(render_report(TrainingSummary(title="t", steps=steps)), "step-time")
    share = float(re.search(r'data-share="([\d.]+)"', sec).group(1))
    assert share == pytest.approx(2.0 / 5.0)  # (0.5 + 1.5) / (2 + 3)
    assert ">40.0%<" in sec and "20 ms" in sec  # mean data wait 20 ms per step


# --------------------------------------------------------------------------- writing
def test_write_report_is_atomic_and_overwrites(tmp_path):
    target = tmp_path / "out" / "report.html"
    target.parent.mkdir()
    target.write_text("old")
    s = sample_summary()
    result = write_report(s, target)
    assert result == target
    assert target.read_text(encoding="utf-8") == render_report(s)
    assert os.listdir(target.parent) == ["report.html"]  # no temp file left behind
    assert target.stat().st_mode & 0o644 == 0o644


def test_loss_chart_switches_to_log_scale_when_one_epoch_dwarfs_the_rest():
    def epoch(n, train_loss, val_loss):
        return EpochResult(epoch=n, train_loss=train_loss, train_acc=NAN, val_loss=val_loss, val_acc=NAN,
                           seconds=1.0)
    spiky = TrainingSummary(epochs=[epoch(1, 1.8, 1571.0), epoch(2, 0.8, 0.9)])
    tame = TrainingSummary(epochs=[epoch(1, 1.8, 2.0), epoch(2, 0.8, 0.9)])
    assert "loss (log scale)" in render_report(spiky)
    assert "loss (log scale)" not in render_report(tame)
