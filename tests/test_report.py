"""report.html's latency picture: every model apart in a legend with its KAD interval, the noise
floor as a band."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from presto_ray.eval.report import latency_figure, latency_plot


def _entries():
    # two students a few ms and a few FAD points apart: annotated labels would overlap
    return [{"method": "teacher", "case": "default", "sampling_s": 1.088},
            {"method": "teacher", "case": "4 steps", "sampling_s": 0.106},
            {"method": "presto-s", "case": "4 steps", "sampling_s": 0.027},
            {"method": "cd", "case": "4 steps", "sampling_s": 0.0274}]


def test_latency_vs_kad_puts_each_model_in_the_legend_with_its_own_marker_and_interval():
    kads = {"teacher default": 6.3, "teacher 4 steps": 49.6, "presto-s 4 steps": 2.75, "cd 4 steps": -0.4}
    cis = {k: [v - 1.0, v + 2.0] for k, v in kads.items()}
    floor = {"kad": 0.1, "kad_ci": [-0.5, 0.7]}
    fig = latency_figure(_entries(), {k: {"kad": v, "kad_ci": cis[k]} for k, v in kads.items()}, floor)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["data vs data (noise floor)"] + list(kads)
    assert not ax.texts  # no labels drawn on the points
    lines = [c for c in ax.containers]  # one errorbar container per model
    assert len(lines) == 4
    for container, e in zip(lines, _entries()):
        label = f"{e['method']} {e['case']}"
        x, y = container.lines[0].get_data()
        assert (x[0], y[0]) == (e["sampling_s"] * 1000, kads[label])
        segment = container.lines[2][0].get_segments()[0]  # the vertical bar: the 95% interval
        assert [segment[0][1], segment[1][1]] == cis[label]
    assert len({c.lines[0].get_marker() for c in lines}) == 4  # four markers
    (band,) = ax.patches  # the floor's interval, across the plot
    ys = band.get_path().transformed(band.get_patch_transform()).vertices[:, 1]
    assert (min(ys), max(ys)) == pytest.approx((-0.5, 0.7))
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"  # KAD may be negative: linear axis
    plt.close(fig)


def test_without_kad_the_plot_is_latency_bars_and_encodes_as_png():
    fig = latency_figure(_entries(), {})
    bars = fig.axes[0].patches
    assert [round(b.get_width(), 1) for b in bars] == [1088.0, 106.0, 27.0, 27.4]
    plt.close(fig)
    assert latency_plot(_entries(), {}).startswith("data:image/png;base64,")
