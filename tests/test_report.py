"""report.html's latency picture: every model apart in a legend, FAD on a log axis when it spans
more than a decade."""

from __future__ import annotations

import matplotlib.pyplot as plt

from presto_ray.eval.report import latency_figure, latency_plot


def _entries():
    # two students a few ms and a few FAD points apart: annotated labels would overlap
    return [{"method": "teacher", "case": "default", "sampling_s": 1.088},
            {"method": "teacher", "case": "4 steps", "sampling_s": 0.106},
            {"method": "presto-s", "case": "4 steps", "sampling_s": 0.027},
            {"method": "cd", "case": "4 steps", "sampling_s": 0.0274}]


def test_latency_vs_fad_puts_each_model_in_the_legend_with_its_own_marker():
    fads = {"teacher default": 63.2, "teacher 4 steps": 496.0, "presto-s 4 steps": 27.5, "cd 4 steps": 26.1}
    fig = latency_figure(_entries(), {k: {"fad": v} for k, v in fads.items()})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(fads)
    assert not ax.texts  # no labels drawn on the points
    points = [tuple(c.get_offsets()[0]) for c in ax.collections]
    assert points == [(e["sampling_s"] * 1000, fads[f"{e['method']} {e['case']}"]) for e in _entries()]
    assert len({c.get_paths()[0].vertices.tobytes() for c in ax.collections}) == 4  # four markers
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"  # 26 .. 496 spans more than x10
    plt.close(fig)
    fig = latency_figure(_entries()[2:], {"presto-s 4 steps": {"fad": 27.5}, "cd 4 steps": {"fad": 26.1}})
    assert fig.axes[0].get_yscale() == "linear"
    plt.close(fig)


def test_without_fad_the_plot_is_latency_bars_and_encodes_as_png():
    fig = latency_figure(_entries(), {})
    bars = fig.axes[0].patches
    assert [round(b.get_width(), 1) for b in bars] == [1088.0, 106.0, 27.0, 27.4]
    plt.close(fig)
    assert latency_plot(_entries(), {}).startswith("data:image/png;base64,")
