"""An HTML contact sheet of the extreme-pose test views for a 1-5 human rating study.

In: :class:`facegs.evaluate.compare.EvalResults`. Out: ``contact_sheet.html`` (+ images) with RGB,
ground truth and every checkpoint's prediction per selected view, and a rating form that exports
its answers as JSON (nothing is sent anywhere).
"""

from __future__ import annotations

import hashlib
import html
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import cv2
import numpy as np

from facegs.core.imageio import encode_rgb
from facegs.core.labels import CANONICAL, get_label_set
from facegs.core.storage import atomic_write_bytes
from facegs.core.viz import overlay
from facegs.evaluate.compare import EvalResults, pose_or_none
from facegs.evaluate.confusion import ConfusionMatrix
from facegs.evaluate.tables import pct
from facegs.evaluate.testsets import read_pair
from facegs.parser.predict import predict_images
from facegs.train.data import ViewItem


def select_examples(results: EvalResults, base: str, extreme_yaw: float = 60.0, n_examples: int = 12,
                    n_frontal: int = 3) -> list[tuple[str, int]]:
    """Views for the contact sheet: ``[(section, item index)]``.

    With poses: up to ``n_examples`` views with |yaw| >= ``extreme_yaw``, spread evenly over them
    sorted by |yaw| descending (the most extreme first), then the ``n_frontal`` views closest to
    frontal (smallest |yaw| + |pitch|) for reference. Views of unknown pose: ``n_examples +
    n_frontal`` views spread evenly over the base checkpoint's per-view mIoU (worst first).
    """
    items = results.test_items

    def spread(idx: list[int], n: int) -> list[int]:
        if n <= 0 or not idx:
            return []
        if len(idx) <= n:
            return idx
        return [idx[i] for i in np.unique(np.round(np.linspace(0, len(idx) - 1, n)).astype(int))]

    posed = [i for i, it in enumerate(items) if pose_or_none(it.yaw) is not None]
    unposed = [i for i, it in enumerate(items) if pose_or_none(it.yaw) is None]
    key = lambda i: (-abs(items[i].yaw), items[i].subject_id, items[i].view_id)  # noqa: E731
    extreme = sorted([i for i in posed if abs(items[i].yaw) >= extreme_yaw], key=key)
    chosen = [("extreme", i) for i in spread(extreme, n_examples)]
    rest = sorted([i for i in posed if abs(items[i].yaw) < extreme_yaw],
                  key=lambda i: (abs(items[i].yaw) + abs(pose_or_none(items[i].pitch) or 0.0), items[i].subject_id,
                                 items[i].view_id))
    chosen += [("frontal", i) for i in rest[:n_frontal]]
    if unposed:
        pv = results.per_view[base]
        order = sorted(unposed, key=lambda i: (pv[i].miou if math.isfinite(pv[i].miou) else -1.0, i))
        chosen += [("unknown pose", i) for i in spread(order, n_examples + n_frontal)]
    return chosen


def _legend_html() -> str:
    ls = get_label_set(CANONICAL)
    return " ".join(f'<span class="sw"><i style="background:rgb({r},{g},{b})"></i>{html.escape(c)}</span>'
                    for c, (r, g, b) in zip(ls.classes[1:], ls.palette[1:].tolist()))


_CSS = """
body{font-family:system-ui,sans-serif;margin:16px;color:#222}
table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:center;font-size:13px}
th.sec{background:#eee;text-align:left}
img{width:TILEpx;height:TILEpx;image-rendering:pixelated;display:block;margin:auto}
.info{text-align:left;white-space:nowrap}
.name{font-weight:600}.score{color:#555}
body.blind .name,body.blind .score{visibility:hidden}
.rate label{margin:0 2px;font-size:12px}
.sw{display:inline-block;margin:0 8px 2px 0;font-size:12px}
.sw i{display:inline-block;width:11px;height:11px;margin-right:3px;vertical-align:middle;border:1px solid #999}
textarea{width:100%;height:140px;font-family:monospace;font-size:12px}
"""


_JS = r"""
(function(){
  var KEY = 'facegs-ratings:' + document.body.dataset.report;
  function collect(){
    var out = [];
    document.querySelectorAll('input.r:checked').forEach(function(el){
      var row = el.closest('tr').dataset;
      out.push({row: +row.row, subject_id: row.subject, view_id: row.view,
                yaw: row.yaw === '' ? null : +row.yaw, pitch: row.pitch === '' ? null : +row.pitch,
                checkpoint: el.dataset.ckpt, rating: +el.value});
    });
    return out;
  }
  function doc(){
    return {format: 'facegs.ratings', version: 1, report: document.body.dataset.report,
            rater: document.getElementById('rater').value, exported: new Date().toISOString(),
            scale: '1 = unusable .. 5 = perfect', blind: document.body.classList.contains('blind'),
            ratings: collect()};
  }
  function save(){
    try { localStorage.setItem(KEY, JSON.stringify({rater: document.getElementById('rater').value,
                                                     ratings: collect()})); } catch (e) {}
    document.getElementById('count').textContent = collect().length;
  }
  window.exportRatings = function(){
    var text = JSON.stringify(doc(), null, 1);
    document.getElementById('out').value = text;
    var a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([text], {type: 'application/json'}));
    a.download = 'ratings.json';
    document.body.appendChild(a); a.click(); a.remove();
  };
  window.toggleBlind = function(el){ document.body.classList.toggle('blind', el.checked); };
  try {
    var st = JSON.parse(localStorage.getItem(KEY) || 'null');
    if (st) {
      document.getElementById('rater').value = st.rater || '';
      st.ratings.forEach(function(r){
        var el = document.querySelector('tr[data-row="' + r.row + '"] input.r[data-ckpt="' + r.checkpoint +
                                        '"][value="' + r.rating + '"]');
        if (el) el.checked = true;
      });
    }
  } catch (e) {}
  document.addEventListener('change', save);
  save();
})();
"""


def _fmt_pose(v: float) -> str:
    return "?" if pose_or_none(v) is None else f"{v:+.1f}°"


def write_rating_sheet(results: EvalResults, out_dir: str | os.PathLike, base: str, extreme_yaw: float = 60.0,
                        n_examples: int = 12, n_frontal: int = 3, tile: int = 192, alpha: float = 0.55) -> Path:
    """``out_dir/contact_sheet.html`` + PNGs in ``out_dir/contact_sheet/``: per selected view (see
    :func:`select_examples`) the RGB, the ground-truth overlay and every checkpoint's prediction
    overlay, with yaw/pitch and per-view mIoU (and its delta vs base), plus 1-5 rating radio buttons
    per checkpoint. Ratings are kept in the browser's localStorage and exported as JSON
    (``ratings.json``) by an inline script; a checkbox hides names and scores for blind rating.
    Self-contained: relative image paths, no external resources. Returns the HTML path."""

    out = Path(out_dir)
    img_dir = out / "contact_sheet"
    img_dir.mkdir(parents=True, exist_ok=True)
    names = list(results)
    chosen = select_examples(results, base, extreme_yaw, n_examples, n_frontal)
    idx = sorted({i for _, i in chosen})
    pairs = {i: read_pair(results.test_items[i]) for i in idx}
    preds: dict[int, dict[str, np.ndarray]] = {i: {} for i in idx}
    for name, parser in results.parsers.items():
        for i, probs in zip(idx, predict_images(parser, [pairs[i][0] for i in idx], results.flip_tta)):
            preds[i][name] = probs.argmax(dim=0).numpy().astype(np.uint8)

    def save_png(arr: np.ndarray, fname: str) -> str:
        h, w = arr.shape[:2]
        s = min(1.0, 2 * tile / max(h, w))  # keep at most 2x the display size
        if s < 1.0:
            arr = cv2.resize(arr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        atomic_write_bytes(img_dir / fname, encode_rgb(arr, ".png"))
        return f"contact_sheet/{fname}"

    titles = {"extreme": f"Extreme poses (|yaw| ≥ {extreme_yaw:g}°)", "frontal": "Near-frontal reference views",
              "unknown pose": "Views of unknown pose (spread over the base checkpoint's per-view mIoU)"}
    rows: list[str] = []
    section = None
    for k, (sec, i) in enumerate(chosen):
        if sec != section:
            section = sec
            rows.append(f'<tr><th class="sec" colspan="{3 + len(names)}">{html.escape(titles[sec])}</th></tr>')
        rows.append(_sheet_row(k, results.test_items[i], *pairs[i], preds[i], names, base, save_png, alpha))
    key = "\n".join([*names, *(f"{results.test_items[i].subject_id}/{results.test_items[i].view_id}"
                                for _, i in chosen)])
    report_id = f"{out.resolve().name}-{hashlib.sha1(key.encode('utf-8')).hexdigest()[:8]}"  # localStorage key
    doc = _sheet_page(rows, names, base, report_id, results.flip_tta, tile)
    path = out / "contact_sheet.html"
    atomic_write_bytes(path, doc.encode("utf-8"))
    return path


def _sheet_row(k: int, it: ViewItem, rgb: np.ndarray, gt: np.ndarray, preds: Mapping[str, np.ndarray], names: list[str],
               base: str, save_png: Callable[[np.ndarray, str], str], alpha: float) -> str:
    """One table row: the view, its RGB, the ground truth and each checkpoint's prediction with its
    per-view mIoU (delta vs base) and 1-5 rating buttons."""
    e = html.escape
    stem = f"{k:03d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', it.subject_id)}_{re.sub(r'[^A-Za-z0-9_.-]', '_', it.view_id)}"
    cells = [f'<td class="info"><b>{e(it.subject_id)}</b><br>{e(it.view_id)}<br>yaw {_fmt_pose(it.yaw)}'
             f'<br>pitch {_fmt_pose(it.pitch)}</td>',
             f'<td><img src="{save_png(rgb, stem + "_rgb.png")}" alt="RGB"><div>RGB</div></td>',
             f'<td><img src="{save_png(overlay(rgb, gt, CANONICAL, alpha), stem + "_gt.png")}" alt="GT">'
             f'<div>ground truth</div></td>']
    K = get_label_set(CANONICAL).num_classes
    miou = {n: ConfusionMatrix(K).update(preds[n], gt).miou() for n in names}
    for n in names:
        src = save_png(overlay(rgb, preds[n], CANONICAL, alpha), f"{stem}_{n}.png")
        d = "" if n == base else f" ({pct(miou[n] - miou[base], signed=True)})"
        radios = "".join(f'<label><input type="radio" class="r" name="r{k}_{e(n)}" data-ckpt="{e(n)}" '
                         f'value="{v}">{v}</label>' for v in range(1, 6))
        cells.append(f'<td><img src="{src}" alt="{e(n)}"><div class="name">{e(n)}</div>'
                     f'<div class="score">mIoU {pct(miou[n])}{d}</div><div class="rate">{radios}</div></td>')
    pose = lambda v: "" if pose_or_none(v) is None else f"{v:.3f}"  # noqa: E731
    return (f'<tr data-row="{k}" data-subject="{e(it.subject_id)}" data-view="{e(it.view_id)}" '
            f'data-yaw="{pose(it.yaw)}" data-pitch="{pose(it.pitch)}">{"".join(cells)}</tr>')


def _sheet_page(rows: list[str], names: list[str], base: str, report_id: str, flip_tta: bool, tile: int) -> str:
    """The self-contained HTML page around the rows (styles and the rating script inline)."""
    e = html.escape
    rid = e(report_id)
    head = "".join(f"<th>{e(h)}</th>" for h in ["view", "image", "ground truth", *names])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>facegs parser comparison: {rid}</title>
<style>{_CSS.replace("TILE", str(tile))}</style></head>
<body data-report="{rid}">
<h1>Face parser comparison at extreme head poses</h1>
<p>Overlays of the canonical <code>celebamask19</code> classes (background untinted). Yaw +90° = camera on the
subject's left; pitch &gt; 0 = camera above. Per-view mIoU in percent (all classes present in the view, background
included); in brackets the difference to the base checkpoint <b>{e(base)}</b>. Flip TTA: {"on" if flip_tta else "off"}.</p>
<p>{_legend_html()}</p>
<p>Rate each prediction 1 (unusable) … 5 (perfect). Rater: <input id="rater" size="16">
<label><input type="checkbox" onchange="toggleBlind(this)"> hide names and scores (blind rating)</label>
<button onclick="exportRatings()">Export ratings (JSON)</button> <span id="count">0</span> ratings
(saved in this browser).</p>
<table><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
<p>Exported JSON (also downloaded as <code>ratings.json</code>):</p>
<textarea id="out" readonly></textarea>
<script>{_JS}</script>
</body></html>
"""
