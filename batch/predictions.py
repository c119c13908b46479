"""A batch's per-image ``.out`` files summarised as one ``predictions.csv`` (Contract 3).

Each ``.out`` body is the inference handler's reply (Contract 2): ``{"predictions": [{"label",
"probability", ...}, ...]}``. Pure functions over bodies already read: the control plane lists and
reads the objects and writes the result.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Iterable, Optional, Tuple, Union

CSV_HEADER = ("image_key", "top_label", "probability", "top_k", "error")

Body = Union[str, bytes, bytearray, None]


def _format_probability(value: float) -> str:
    return f"{value:.4f}"


def summarise(body: Optional[str]) -> Tuple[str, str, str, str]:
    """``(top_label, probability, top_k, error)`` from one ``.out`` body; ``error`` is "" when it
    parsed, and says what was wrong (the other three then empty) when it did not. Never raises."""
    try:
        document = json.loads(body)
    except (TypeError, ValueError) as exc:
        return "", "", "", f"not JSON: {exc}"
    predictions = document.get("predictions") if isinstance(document, dict) else None
    if not isinstance(predictions, list) or not predictions:
        return "", "", "", "no predictions list in the output"
    pairs = []
    for i, p in enumerate(predictions):
        label = p.get("label") if isinstance(p, dict) else None
        probability = p.get("probability") if isinstance(p, dict) else None
        if (not isinstance(label, str) or isinstance(probability, bool)
                or not isinstance(probability, (int, float))):
            return "", "", "", f"prediction {i} lacks a label or a numeric probability"
        pairs.append((label, float(probability)))
    pairs.sort(key=lambda pair: -pair[1])   # stable: ties keep the handler's order
    top_label, top_probability = pairs[0]
    top_k = ";".join(f"{label}:{_format_probability(prob)}" for label, prob in pairs)
    return top_label, _format_probability(top_probability), top_k, ""


def predictions_csv(rows: Iterable[Tuple[str, Body]], unclassified: Iterable[Tuple[str, str]] = ()) -> str:
    """One CSV from ``(image_key, .out body)`` rows.

    Columns: ``image_key,top_label,probability,top_k,error``; ``top_k`` is
    ``label:prob;label:prob`` (probabilities with 4 decimals, highest first); ``error`` is empty
    for a good row and says what was wrong with a malformed ``.out`` (whose other columns are
    empty). ``unclassified`` rows are ``(image_key, error)`` for inputs without an output (a transform
    that failed or was stopped before them). Rows are sorted by image key; never raises on a bad body.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    summarised = [(image_key, *summarise(body.decode("utf-8", "replace")
                                         if isinstance(body, (bytes, bytearray)) else body))
                  for image_key, body in rows]
    summarised += [(image_key, "", "", "", error) for image_key, error in unclassified]
    writer.writerows(sorted(summarised, key=lambda row: row[0]))
    return out.getvalue()
