"""``report``: metrics.json, latency.json, training curves and audio folded into one self-contained
report.html (tables, a latency-vs-quality plot, training curves, and per audio folder a mel
spectrogram strip beside the players with the model's loudness checks).

Images and audio are embedded as data URIs, so the file can be mailed or opened from a bucket.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path

import numpy as np

from presto_ray.data import storage

log = logging.getLogger("presto_ray.report")

LATENCY_COLUMNS = [("method", "method"), ("case", "case"), ("steps", "steps"), ("nfe", "NFE"),
                   ("block_fraction", "blocks run"), ("text_s", "text ms"), ("sampling_s", "sampling ms"),
                   ("decode_s", "decode ms"), ("total_s", "total ms"), ("sampling_speedup", "sampling speed-up"),
                   ("total_speedup", "end-to-end speed-up"), ("rtf", "real-time factor")]
METRIC_KEYS = ["kad", "kad_ci", "mmd", "fad", "density", "recall", "coverage", "tempo_err_bpm", "instrument_acc",
               "key_acc", "loudness_db_median", "loudness_outside_share", "full_scale_share", "clips_at_full_scale",
               "latent_out_of_range_share", "n_samples"]
SPECTROGRAM_RANGE_DB = 80.0
"""Every spectrogram strip of a report shares one colour scale: from its loudest mel bin down this
many dB, so a louder model looks brighter."""


def _fmt(key: str, value) -> str:
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"[{value[0]:.3g}, {value[1]:.3g}]"
    if value is None:
        return "n too small" if key == "fad" else "-"
    if isinstance(value, float):
        if key.endswith("_s"):
            return f"{1000 * value:.1f}"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return html.escape(str(value))


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(k, r.get(k, ''))}</td>" for k, _ in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


MARKERS = "osD^v<>pPX*h"
"""One marker per point of the latency plot (with the colour cycle, every model stays apart)."""


def latency_plot(entries: list[dict], metrics: dict[str, dict], floor: dict | None = None) -> str:
    """:func:`latency_figure` as a PNG data URL."""
    return _png(latency_figure(entries, metrics, floor))


def latency_figure(entries: list[dict], metrics: dict[str, dict], floor: dict | None = None):
    """Sampling latency per case (bars), or latency vs KAD with its 95% interval as error bars (the
    Pareto picture) when metrics.json files give a KAD for the same model + case labels, with the
    noise floor (``floor``: kad, kad_ci) as a band; a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    points = [(e["sampling_s"] * 1000, metrics[k]["kad"], metrics[k].get("kad_ci"), k) for e in entries
              if (k := f"{e['method']} {e['case']}") in metrics and metrics[k].get("kad") is not None]
    if points:
        # students sit close together (similar latency and KAD): a legend, not labels on the points
        for i, (x, y, ci, label) in enumerate(points):
            yerr = [[y - ci[0]], [ci[1] - y]] if ci else None
            ax.errorbar(x, y, yerr=yerr, fmt=MARKERS[i % len(MARKERS)], markersize=6, capsize=3, label=label)
        if floor and floor.get("kad") is not None:
            lo, hi = floor.get("kad_ci") or (floor["kad"], floor["kad"])
            ax.axhspan(lo, hi, color="0.85", zorder=0, label="data vs data (noise floor)")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        ax.set_xscale("log")
        ax.set_xlabel("sampling latency, batch 1 (ms)")
        ax.set_ylabel("KAD x1000 (lower is better)")
        ax.set_title("quality vs latency (95% intervals)")
    else:
        labels = [f"{e['method']}\n{e['case']}" for e in entries]
        ax.barh(labels, [1000 * e["sampling_s"] for e in entries])
        ax.set_xscale("log")
        ax.set_xlabel("sampling latency, batch 1 (ms, log scale)")
        ax.invert_yaxis()
    return fig


def training_curves(run: Path, tags: tuple[str, ...] = ("loss", "eval_loss", "loss_dm", "loss_fake",
                                                        "loss_cd", "loss_st")) -> str | None:
    """A plot of the run's TensorBoard scalars (rank 0's event files), or None when there are none."""
    events = sorted((run / "tensorboard").glob("events.out.tfevents.*")) if (run / "tensorboard").is_dir() else []
    if not events:
        return None
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[tuple[int, float]]] = {}
    for file in events:
        acc = EventAccumulator(str(file))
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            name = tag.split("/")[-1]
            if name in tags:
                series.setdefault(name, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], label=name)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(run.name)
    return _png(fig)


def mel_db(wav: Path) -> tuple[np.ndarray, float]:
    """A WAV mixed to mono: its mel power spectrogram [64, frames] in dB (1024-point FFT, hop 256)
    and its loudness (dB, :func:`presto_ray.eval.loudness.rms_db`)."""
    import soundfile as sf
    import torch
    import torchaudio

    from presto_ray.eval.loudness import rms_db

    audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    mono = torch.from_numpy(audio.mean(1))
    mel = torchaudio.transforms.MelSpectrogram(rate, n_fft=1024, hop_length=256, n_mels=64)(mono)
    return 10.0 * np.log10(mel.numpy().astype(np.float64) + 1e-10), float(rms_db([mono.numpy()])[0])


def spectrogram_strip(mels: list[np.ndarray], top_db: float) -> str:
    """The clips' mel spectrograms ([n_mels, frames] each, dB) side by side in one image, numbered
    from 1 like the players beside it, on the colour scale ``top_db`` - :data:`SPECTROGRAM_RANGE_DB`
    .. ``top_db``; a PNG data URL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gap = np.full((mels[0].shape[0], 4), np.nan)  # a blank between clips
    strip = np.concatenate([part for m in mels for part in (m, gap)][:-1], axis=1)
    starts = np.cumsum([0] + [m.shape[1] + gap.shape[1] for m in mels[:-1]])
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="white")
    fig, ax = plt.subplots(figsize=(min(12.0, 0.6 + 2.0 * len(mels)), 1.8))
    shown = ax.imshow(strip, origin="lower", aspect="auto", cmap=cmap, vmin=top_db - SPECTROGRAM_RANGE_DB, vmax=top_db,
                      interpolation="nearest")
    ax.set_xticks(starts + np.array([m.shape[1] for m in mels]) / 2, [str(i + 1) for i in range(len(mels))])
    ax.set_yticks([])
    ax.set_ylabel("mel", fontsize=8)
    fig.colorbar(shown, ax=ax, pad=0.01, fraction=0.03).set_label("dB", fontsize=8)
    return _png(fig)


def loudness_line(row: dict | None) -> str:
    """One line on a model's audio checks from its metrics (empty when it has none): median
    loudness, the share of clips outside the reference's 1-99% range, clips at full scale."""
    if not row or row.get("loudness_db_median") is None:
        return ""
    ref = row.get("reference_loudness_db_range") or [float("nan")] * 2
    clips, n = row.get("clips_at_full_scale"), row.get("n_samples")
    return (f"<p class=\"loudness\">loudness (RMS, dB re full scale): median {row['loudness_db_median']:.1f} dB; "
            f"{100 * row['loudness_outside_share']:.0f}% of clips outside the reference's 1-99% range "
            f"[{ref[0]:.1f}, {ref[1]:.1f}] dB; {clips}{f' of {n}' if n else ''} clips with samples at full scale "
            f"({100 * row.get('full_scale_share', 0.0):.2f}% of samples)</p>")


def audio_section(folder: Path, clips: list[tuple[Path, np.ndarray, float]], top_db: float, row: dict | None) -> str:
    """A folder's heading, its model's :func:`loudness_line`, and its clips (WAV, mel dB and
    loudness of :func:`mel_db`) as a spectrogram strip beside their players, each player captioned
    with its number in the strip, its name and its loudness."""
    name = html.escape(folder.name)
    head = f"<section class=\"audio\"><h2>Audio: {name}</h2>{loudness_line(row)}"
    if not clips:
        return head + "<p>no WAV files</p></section>"
    players = "".join(f"<figure><figcaption>{i + 1}: {html.escape(wav.stem)} ({db:.1f} dB)</figcaption>"
                      f"<audio controls preload=\"metadata\" src=\"data:audio/wav;base64,"
                      f"{base64.b64encode(wav.read_bytes()).decode()}\"></audio></figure>"
                      for i, (wav, _, db) in enumerate(clips))
    strip = spectrogram_strip([mel for _, mel, _ in clips], top_db)
    return (f"{head}<div class=\"clips\"><img class=\"strip\" src=\"{strip}\" alt=\"mel spectrograms of {name}\">"
            f"<div class=\"players\">{players}</div></div></section>")


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}
.clips{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.strip{max-width:100%}
.players figure{margin:0 0 6px 0}figcaption{font-size:12px}audio{width:320px;display:block}.loudness{margin:.3em 0}"""


def write_report(out: str | Path, *, latency: list[str | Path] = (), metrics: list[str | Path] = (),
                 runs: list[str | Path] = (), audio: list[str | Path] = (), title: str = "presto_ray report") -> Path:
    """Write report.html to ``out`` from latency.json files, metrics.json files (each holding a
    "model"/"case" label or a list under "entries"), run folders (training curves) and audio
    folders (WAV files). An audio folder shows the loudness of the metrics entry whose ``name`` is
    the folder's name (the quickstart's audio/<name>/) or of the metrics.json beside it (evaluate's
    out/audio/). Missing inputs are errors that name the file."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    entries: list[dict] = []
    hardware = []
    for file in map(Path, latency):
        if not file.is_file():
            raise FileNotFoundError(f"latency file '{file}' does not exist")
        doc = json.loads(file.read_text())
        entries += doc.get("entries", [])
        hardware.append(doc.get("hardware", {}))
    metric_rows: dict[str, dict] = {}
    by_folder: dict[Path, dict] = {}  # an evaluate metrics.json and its audio/ folder
    floor, curves = None, {}
    for file in map(Path, metrics):
        if not file.is_file():
            raise FileNotFoundError(f"metrics file '{file}' does not exist")
        doc = json.loads(file.read_text())
        floor = floor or doc.get("floor")
        curves.update(doc.get("curves") or {})
        if "entries" not in doc:
            by_folder[file.resolve().parent / "audio"] = doc
        for row in doc.get("entries", [doc]):
            label = row.get("label") or f"{row.get('method', row.get('model', file.stem))} {row.get('case', '')}".strip()
            metric_rows[label] = row
    if entries:
        parts.append("<h2>Latency (batch 1, one clip)</h2>")
        parts.append(_table(entries, LATENCY_COLUMNS))
        for hw in hardware:
            parts.append(f"<p>hardware: {html.escape(json.dumps(hw))}</p>")
    if metric_rows:
        parts.append("<h2>Quality</h2>")
        rows = [{"label": k, **v} for k, v in metric_rows.items()]
        if floor and floor.get("kad") is not None:
            rows.append({"label": "data vs data (noise floor)", "kad": floor["kad"], "kad_ci": floor.get("kad_ci"),
                         "loudness_outside_share": floor.get("loudness_outside_share"), "n_samples": floor.get("n")})
        parts.append(_table(rows, [("label", "model")] + [(k, k) for k in METRIC_KEYS if any(k in r for r in rows)]))
    if entries:
        parts.append(f"<h2>Latency vs quality</h2><img src=\"{latency_plot(entries, metric_rows, floor)}\" alt=\"latency plot\">")
    if curves:
        from presto_ray.eval.updates import updates_figure

        controls = {f"{r['label']} (0 updates)": r for r in metric_rows.values()
                    if r.get("control_of") in curves and r.get("kad") is not None and r.get("cfg_scale") is None}
        parts.append("<h2>Quality against generator updates</h2>"
                     f"<img src=\"{_png(updates_figure(curves, controls))}\" alt=\"KAD against generator updates\">")
    trained = [(Path(r), training_curves(Path(r))) for r in runs]
    if any(c for _, c in trained):
        parts.append("<h2>Training curves</h2>")
        parts += [f"<img src=\"{c}\" alt=\"training curves of {html.escape(r.name)}\">" for r, c in trained if c]
    folders = list(map(Path, audio))
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"audio folder '{folder}' does not exist")
    clips = [[(w, *mel_db(w)) for w in sorted(f.glob("*.wav"))] for f in folders]
    top_db = max((float(np.max(mel)) for cs in clips for _, mel, _ in cs), default=0.0)
    by_name = {r["name"]: r for r in metric_rows.values() if r.get("name")}  # the quickstart's audio/<name>/
    for folder, cs in zip(folders, clips):
        parts.append(audio_section(folder, cs, top_db, by_name.get(folder.name) or by_folder.get(folder.resolve())))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    storage.write_bytes_atomic(str(out), page.encode())
    log.info("wrote %s", out)
    return out
