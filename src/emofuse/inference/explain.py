"""Pictures of a prediction, in the spirit of Figure 3 of Aguilar et al. 2019.

Each word is a chip: its background is shaded by the context attention weight (§3.3; full
shade at twice the uniform weight 1/W), and under it a two-colour bar splits the word into its
acoustic share z and lexical share 1 - z (the GMU gate of Eq. 1, averaged over channels).
Models without a GMU show only what they have (FG_CME: its two excitation gates; an
acoustic-only model: the attention over frames drawn on the waveform). Above the words,
one bar per class gives the probabilities; below, the waveform with the word boundaries.

`render_html` gives one self-contained HTML file (inline CSS, the waveform as a base64 PNG);
`render_fragment` the same block without <html>, for the web page; `render_png` one PNG of
all three parts drawn with matplotlib (Agg, no display needed).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from emofuse.inference.predictor import Prediction

ACOUSTIC = "#1f77b4"  # acoustic share
LEXICAL = "#ff7f0e"  # lexical share
ATTENTION = (46, 160, 67)  # RGB of the attention shade
PROBABILITY = "#6a51a3"

CSS = """
.emofuse-explanation{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#222;max-width:1100px}
.emofuse-explanation h2{margin:.2em 0;font-size:1.6em}
.emofuse-explanation .ef-meta{color:#555;font-size:.9em;margin-bottom:.8em}
.emofuse-explanation .ef-probs{display:grid;grid-template-columns:8em 1fr 4.5em;gap:.25em .6em;align-items:center;margin:.6em 0 1em}
.emofuse-explanation .ef-bar{height:1em;background:#eee;border-radius:3px;overflow:hidden}
.emofuse-explanation .ef-bar>span{display:block;height:100%;background:""" + PROBABILITY + """}
.emofuse-explanation .ef-top{font-weight:700}
.emofuse-explanation .ef-words{display:flex;flex-wrap:wrap;gap:.4em;margin:.6em 0}
.emofuse-explanation .ef-chip{border:1px solid #ccc;border-radius:6px;padding:.3em .45em;min-width:3.2em;text-align:center}
.emofuse-explanation .ef-w{font-size:1.15em;font-weight:600}
.emofuse-explanation .ef-t{font-size:.72em;color:#555}
.emofuse-explanation .ef-share{display:flex;height:.55em;border-radius:2px;overflow:hidden;margin-top:.25em}
.emofuse-explanation .ef-ac{background:""" + ACOUSTIC + """}
.emofuse-explanation .ef-lx{background:""" + LEXICAL + """}
.emofuse-explanation .ef-gates{font-size:.72em;color:#333}
.emofuse-explanation .ef-legend{font-size:.8em;color:#444;margin:.3em 0}
.emofuse-explanation .ef-legend i{display:inline-block;width:1em;height:.7em;margin:0 .25em 0 .8em;vertical-align:middle}
.emofuse-explanation img{max-width:100%;border:1px solid #ddd}
.emofuse-explanation .ef-unused{opacity:.45}
"""


def _shade(weight: float) -> str:
    r, g, b = ATTENTION
    return f"rgba({r},{g},{b},{0.08 + 0.6 * max(0.0, min(1.0, weight)):.3f})"


def _attention_scale(prediction: Prediction) -> float:
    """Attention weight that gets the full shade: twice the uniform weight 1/W, so uniform
    attention is a mid shade and a word the model singles out stands out."""
    n = sum("attention" in w.values for w in prediction.words if w.used)
    return 2.0 / n if n else 1.0


def _word_chip(word, top_attention: float) -> str:
    v = word.values
    style = f' style="background:{_shade(v["attention"] / top_attention)}"' if "attention" in v else ""
    title = "; ".join(f"{k} {val:.3f}" for k, val in v.items()) or "no per-word values"
    parts = [
        f'<div class="ef-chip{"" if word.used else " ef-unused"}"{style} title="{html.escape(title)}">',
        f'<div class="ef-w">{html.escape(word.text)}</div>',
        f'<div class="ef-t">{word.span(" s")}</div>',
    ]
    if "gate" in v:
        z = max(0.0, min(1.0, v["gate"]))
        parts.append(f'<div class="ef-share"><span class="ef-ac" style="width:{100 * z:.1f}%"></span>'
                     f'<span class="ef-lx" style="width:{100 * (1 - z):.1f}%"></span></div>')
    gates = []
    if "attention" in v:
        gates.append(f"att {v['attention']:.2f}")
    if "gate" in v:
        gates.append(f"ac {v['gate']:.2f}")
    if "acoustic_gate" in v:
        gates.append(f"E<sup>a</sup> {v['acoustic_gate']:.2f}")
    if "semantic_gate" in v:
        gates.append(f"E<sup>s</sup> {v['semantic_gate']:.2f}")
    if "attention_center" in v:
        gates.append(f"@{v['attention_center']:.2f}s")
    if gates:
        parts.append(f'<div class="ef-gates">{" · ".join(gates)}</div>')
    parts.append("</div>")
    return "".join(parts)


def waveform_png(prediction: Prediction, width: float = 11.0, height: float = 2.2, dpi: int = 100) -> bytes:
    """The waveform (min/max envelope) with word boundaries and labels; attention shades the
    words, frame attention (acoustic-only models) is drawn as a line. PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    ax = fig.add_axes((0.05, 0.2, 0.93, 0.7))
    _draw_waveform(ax, prediction)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _draw_waveform(ax, prediction: Prediction) -> None:
    env = prediction.envelope
    if env is None or len(env) == 0:
        env = np.zeros((1, 2), dtype=np.float32)
    t = (np.arange(len(env)) + 0.5) * 0.01
    top = _attention_scale(prediction)
    timed = [w for w in prediction.words if w.timed]  # text-only models' words have no times
    for w in timed:
        if "attention" in w.values:
            r, g, b = ATTENTION
            ax.axvspan(w.start, w.end, color=(r / 255, g / 255, b / 255), alpha=0.08 + 0.5 * min(1.0, w.values["attention"] / top), lw=0)
    ax.fill_between(t, env[:, 0], env[:, 1], color="#444", lw=0.4)
    peak = float(np.abs(env).max()) or 1.0
    ax.set_ylim(-1.15 * peak, 1.35 * peak)
    ax.set_xlim(0, max(prediction.duration, t[-1]))
    for w in timed:
        ax.axvline(w.start, color="#c00", lw=0.7, alpha=0.7)
        ax.axvline(w.end, color="#c00", lw=0.7, alpha=0.3, ls="--")
        ax.text((w.start + w.end) / 2, 1.2 * peak, w.text, ha="center", va="center", fontsize=9, clip_on=True)
    for key, series in prediction.frame_maps.items():
        values = np.asarray(series, dtype=np.float64)
        if values.size and values.max() > 0:
            twin = ax.twinx()
            twin.plot((np.arange(values.size) + 0.5) * prediction.hop, values, color=ACOUSTIC, lw=1.0, label=key)
            twin.set_ylim(0, values.max() * 1.1)
            twin.set_yticks([])
            twin.legend(loc="upper right", fontsize=8, frameon=False)
    ax.set_xlabel("seconds", fontsize=9)
    ax.set_yticks([])
    ax.tick_params(labelsize=8)


def render_fragment(prediction: Prediction, include_waveform: bool = True) -> str:
    """The explanation as an HTML block (with its own scoped <style>), no <html> wrapper."""
    p = prediction
    ranked = sorted(p.probabilities.items(), key=lambda kv: -kv[1])
    rows = []
    for name, value in p.probabilities.items():
        top = ' class="ef-top"' if name == p.label else ""
        rows.append(f'<div{top}>{html.escape(name)}</div><div class="ef-bar"><span style="width:{100 * value:.1f}%">'
                    f'</span></div><div{top}>{100 * value:.1f}%</div>')
    meta = [f"{html.escape(Path(p.file).name)}", f"{p.duration:.2f} s", f"model {html.escape(p.model)}"]
    if p.words:
        meta.append(f"word times: {html.escape(p.word_source)}")
    if p.fallbacks:
        meta.append("fallbacks: " + html.escape("; ".join(p.fallbacks)))
    if p.truncated:
        meta.append("truncated to the model's max_frames/max_words")
    out = [f'<style>{CSS}</style><div class="emofuse-explanation">',
           f'<h2 class="ef-label">{html.escape(p.label)} <small>{100 * ranked[0][1]:.0f}%</small></h2>',
           f'<div class="ef-meta">{" · ".join(meta)}</div>',
           f'<div class="ef-probs">{"".join(rows)}</div>']
    if p.words:
        keys = {k for w in p.words for k in w.values}
        legend = []
        if "gate" in keys:
            legend.append(f'<i style="background:{ACOUSTIC}"></i>acoustic share (GMU z)'
                          f'<i style="background:{LEXICAL}"></i>lexical share (1 − z)')
        if "attention" in keys:
            legend.append(f'<i style="background:{_shade(1.0)}"></i>shade: attention weight (full shade = twice the uniform weight)')
        if keys & {"acoustic_gate", "semantic_gate"}:
            legend.append("E<sup>a</sup>, E<sup>s</sup>: FG_CME excitation gates")
        if not keys:
            legend.append("this model gives no per-word values")
        top = _attention_scale(p)
        out.append(f'<div class="ef-legend">{"".join(legend)}</div>')
        out.append(f'<div class="ef-words">{"".join(_word_chip(w, top) for w in p.words)}</div>')
    else:
        out.append('<div class="ef-legend">acoustic-only model: no words are needed or shown</div>')
    if include_waveform:
        png = base64.b64encode(waveform_png(p)).decode("ascii")
        out.append(f'<img class="ef-wave" alt="waveform with word boundaries" src="data:image/png;base64,{png}">')
    out.append("</div>")
    return "".join(out)


def render_html(predictions: Prediction | Sequence[Prediction], title: str = "emofuse explanation") -> str:
    """A self-contained HTML page with one explanation per prediction."""
    if isinstance(predictions, Prediction):
        predictions = [predictions]
    body = "<hr>".join(render_fragment(p) for p in predictions)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"></head>'
            f'<body style="margin:1.5em">{body}</body></html>\n')


def render_png(prediction: Prediction, path: str | Path, dpi: int = 100) -> Path:
    """One PNG with probabilities, word chips (attention shade, acoustic/lexical bar), waveform."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    p = prediction
    fig = Figure(figsize=(11, 6.2), dpi=dpi)
    ax_p = fig.add_axes((0.12, 0.72, 0.84, 0.22))
    names = list(p.probabilities)
    values = [p.probabilities[c] for c in names]
    colours = [PROBABILITY if c == p.label else "#bcb0d9" for c in names]
    ax_p.barh(range(len(names)), values, color=colours)
    ax_p.set_yticks(range(len(names)), names, fontsize=9)
    ax_p.invert_yaxis()
    ax_p.set_xlim(0, 1)
    ax_p.tick_params(labelsize=8)
    for i, v in enumerate(values):
        ax_p.text(min(v + 0.01, 0.93), i, f"{100 * v:.1f}%", va="center", fontsize=8)
    ax_p.set_title(f"{Path(p.file).name}: {p.label} ({p.model}, word times: {p.word_source})", fontsize=10)

    ax_w = fig.add_axes((0.02, 0.36, 0.96, 0.28))
    ax_w.set_axis_off()
    ax_w.set_xlim(0, 1)
    ax_w.set_ylim(0, 1)
    if p.words:
        top = _attention_scale(p)
        n = len(p.words)
        per_row = min(n, 14)
        rows = int(np.ceil(n / per_row))
        width, height = 1.0 / per_row, 1.0 / rows
        for i, w in enumerate(p.words):
            x, y = (i % per_row) * width, 1.0 - (i // per_row + 1) * height
            shade = (0.97, 0.97, 0.97)
            if "attention" in w.values:
                a = 0.08 + 0.6 * min(1.0, w.values["attention"] / top)
                shade = tuple(1 - a * (1 - c / 255) for c in ATTENTION)
            ax_w.add_patch(Rectangle((x + 0.004, y + 0.05 * height), width - 0.008, 0.9 * height,
                                     facecolor=shade, edgecolor="#bbb", lw=0.6))
            ax_w.text(x + width / 2, y + 0.62 * height, w.text, ha="center", va="center", fontsize=9, weight="bold")
            ax_w.text(x + width / 2, y + 0.4 * height, w.span("s"), ha="center", va="center", fontsize=6)
            if "gate" in w.values:
                z = max(0.0, min(1.0, w.values["gate"]))
                bar_x, bar_w = x + 0.012, width - 0.024
                ax_w.add_patch(Rectangle((bar_x, y + 0.12 * height), bar_w * z, 0.12 * height, facecolor=ACOUSTIC, lw=0))
                ax_w.add_patch(Rectangle((bar_x + bar_w * z, y + 0.12 * height), bar_w * (1 - z), 0.12 * height,
                                         facecolor=LEXICAL, lw=0))
    else:
        ax_w.text(0.5, 0.5, "acoustic-only model: no words are needed", ha="center", va="center", fontsize=10)

    ax_a = fig.add_axes((0.04, 0.07, 0.94, 0.24))
    _draw_waveform(ax_a, p)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
