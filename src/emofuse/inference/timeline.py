"""The timeline of a long recording: a strip coloured by emotion over its waveform.

One self-contained HTML page (inline CSS, SVG and a few lines of script; nothing fetched):
per file, an SVG strip whose width is the recording, the waveform drawn from the
`LongPrediction` envelope (at most `long.ENVELOPE_POINTS` min/max bins, so a one-hour file
stays a small page), and one rectangle per segment, coloured by its label and shaded by its
probability. Clicking a segment (or its row in the list below) shows its word-level
explanation, the same block `inference.explain.render_fragment` draws for a short file,
without the waveform picture (the strip is the waveform). A summary gives the share of
speech time in each emotion and links the strongest segments.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np

from emofuse.inference.explain import CSS, render_fragment
from emofuse.inference.long import LongPrediction
from emofuse.inference.predictor import Prediction

# Colours per emotion (Tableau 10); an unknown class takes the next free one.
EMOTION_COLOURS = {"angry": "#d62728", "happy": "#ff7f0e", "neutral": "#7f7f7f", "sad": "#1f77b4",
                   "fear": "#9467bd", "disgust": "#8c564b", "surprise": "#e377c2", "calm": "#17becf",
                   "joy": "#ff7f0e", "anger": "#d62728", "sadness": "#1f77b4", "frustrated": "#bcbd22",
                   "excited": "#2ca02c"}
SPARE = ["#2ca02c", "#bcbd22", "#17becf", "#9467bd", "#8c564b", "#e377c2"]
WIDTH = 1000.0  # SVG user units across the recording
HEIGHT = 80.0

TIMELINE_CSS = """
.ef-timeline{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#222;max-width:1100px;margin-bottom:2em}
.ef-timeline svg{width:100%;height:120px;border:1px solid #ddd;background:#fafafa}
.ef-timeline .ef-seg{cursor:pointer}
.ef-timeline .ef-seg:hover,.ef-timeline .ef-seg.ef-on{stroke:#000;stroke-width:1.5}
.ef-timeline .ef-key i{display:inline-block;width:1em;height:.7em;margin:0 .25em 0 .8em;vertical-align:middle}
.ef-timeline table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
.ef-timeline td,.ef-timeline th{padding:.1em .6em;text-align:left}
.ef-timeline tr.ef-row{cursor:pointer}
.ef-timeline tr.ef-row:hover{background:#eef}
.ef-timeline .ef-detail{border-top:1px solid #ccc;margin-top:.6em;padding-top:.4em}
.ef-timeline .ef-list{max-height:18em;overflow:auto}
"""

SCRIPT = """
function efShow(id){
  var el=document.getElementById(id); if(!el) return;
  var box=el.closest('.ef-timeline');
  box.querySelectorAll('.ef-panel').forEach(function(p){p.hidden=true;});
  box.querySelectorAll('.ef-seg').forEach(function(r){r.classList.toggle('ef-on',r.dataset.panel===id);});
  el.hidden=false;
}
document.addEventListener('click',function(e){
  var t=e.target.closest('[data-panel]'); if(t){e.preventDefault(); efShow(t.dataset.panel);}
});
"""


def colours(classes: Sequence[str]) -> dict[str, str]:
    spare = iter(c for c in SPARE if c not in {EMOTION_COLOURS.get(k) for k in classes})
    return {c: EMOTION_COLOURS.get(c.lower()) or next(spare, "#444") for c in classes}


def _waveform_path(envelope: np.ndarray | None) -> str:
    """An SVG path of the min/max envelope: along the maxima, back along the minima."""
    if envelope is None or len(envelope) == 0:
        return ""
    peak = float(np.abs(envelope).max()) or 1.0
    n = len(envelope)
    x = (np.arange(n) + 0.5) * WIDTH / n
    mid, half = HEIGHT / 2, HEIGHT / 2 * 0.95
    top = mid - envelope[:, 1] / peak * half
    bottom = mid - envelope[:, 0] / peak * half
    points = [f"{a:.1f},{b:.1f}" for a, b in zip(x, top)] + [f"{a:.1f},{b:.1f}" for a, b in zip(x[::-1], bottom[::-1])]
    return "M" + " L".join(points) + " Z"


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    h, m = divmod(int(m), 60)
    return f"{h}:{m:02d}:{s:05.2f}" if h else f"{m}:{s:05.2f}"


def render_timeline(result: LongPrediction, key: str = "t0") -> str:
    """One file's timeline block (module docstring), ids prefixed by `key`."""
    palette = colours(result.classes)
    span = max(result.duration, max((s.end for s in result.segments), default=0.0), 1e-6)
    summary = result.summary()
    out = [f'<section class="ef-timeline"><h2>{html.escape(Path(result.file).name)}</h2>',
           f'<div class="ef-meta">{_clock(result.duration)} · {len(result.segments)} segments '
           f'({html.escape(result.detector)}) · model {html.escape(result.model)}'
           + (f" · fallbacks: {html.escape('; '.join(result.fallbacks))}" if result.fallbacks else "") + "</div>",
           '<div class="ef-key">' + "".join(
               f'<i style="background:{palette[c]}"></i>{html.escape(c)} {100 * summary["share"][c]:.1f}%'
               for c in result.classes) + " <small>(share of speech time)</small></div>",
           f'<svg viewBox="0 0 {WIDTH:.0f} {HEIGHT:.0f}" preserveAspectRatio="none" role="img" '
           f'aria-label="emotion timeline">']
    for i, s in enumerate(result.segments):
        x, w = s.start / span * WIDTH, max((s.end - s.start) / span * WIDTH, 0.5)
        fill = palette.get(s.label, "#000") if s.label else "#000"
        opacity = 0.25 + 0.5 * s.confidence if s.label else 0.15
        title = f"{_clock(s.start)}–{_clock(s.end)} {s.label or 'not predicted'}" + (
            f" {100 * s.confidence:.0f}%" if s.label else "")
        out.append(f'<rect class="ef-seg" data-panel="{key}-s{i}" x="{x:.2f}" y="0" width="{w:.2f}" '
                   f'height="{HEIGHT:.0f}" fill="{fill}" fill-opacity="{opacity:.2f}"><title>{html.escape(title)}</title></rect>')
    path = _waveform_path(result.envelope)
    if path:
        out.append(f'<path d="{path}" fill="#333" stroke="none" pointer-events="none"/>')
    out.append("</svg>")
    strongest = ", ".join(
        f'<a href="#" data-panel="{key}-s{result.segments.index(s)}">{_clock(s.start)} {html.escape(s.label)} '
        f'{100 * s.confidence:.0f}%</a>'
        for s in sorted([s for s in result.segments if s.label], key=lambda s: -s.confidence)[:5])
    if strongest:
        out.append(f"<div>strongest: {strongest}</div>")
    out.append('<div class="ef-list"><table><tr><th>start</th><th>end</th><th>emotion</th><th>p</th><th>words</th></tr>')
    for i, s in enumerate(result.segments):
        words = " ".join(w.text for w in s.words) or html.escape("; ".join(s.warnings))
        out.append(f'<tr class="ef-row" data-panel="{key}-s{i}"><td>{_clock(s.start)}</td><td>{_clock(s.end)}</td>'
                   f'<td>{html.escape(s.label or "-")}</td><td>{100 * s.confidence:.0f}%</td>'
                   f'<td>{html.escape(words[:120]) if s.words else words}</td></tr>')
    out.append("</table></div>")
    for i, s in enumerate(result.segments):
        out.append(f'<div class="ef-detail ef-panel" id="{key}-s{i}" hidden>'
                   f"<div><b>{_clock(s.start)}–{_clock(s.end)}</b></div>")
        if s.prediction is not None:
            # the page's head holds the CSS once: an hour has hundreds of segments
            out.append(render_fragment(s.prediction, include_waveform=False).replace(f"<style>{CSS}</style>", "", 1))
        if s.warnings:
            out.append(f'<div class="ef-meta">{html.escape("; ".join(s.warnings))}</div>')
        out.append("</div>")
    out.append("</section>")
    return "".join(out)


def render_timeline_html(results: Sequence[LongPrediction], short: Sequence[Prediction] = (),
                         title: str = "emofuse timeline") -> str:
    """A self-contained page: a timeline per long recording, then today's explanation of each short one."""
    body = [render_timeline(r, f"t{i}") for i, r in enumerate(results)]
    body += [render_fragment(p) for p in short]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<style>{TIMELINE_CSS}{CSS}</style></head>"
            f'<body style="margin:1.5em">{"<hr>".join(body)}<script>{SCRIPT}</script></body></html>\n')
