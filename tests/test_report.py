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


def test_kad_against_generator_updates_draws_each_method_and_the_control_band():
    from presto_ray.eval.updates import generator_updates, updates_figure

    assert [generator_updates("presto-s", 2, s) for s in (1, 2, 3, 600)] == [1, 1, 2, 300]  # iterations 0, 2, 4, ...
    assert generator_updates("cd", 5, 300) == 300 and generator_updates("dmd2", 5, 10000) == 2000
    curves = {"presto-s": [{"generator_updates": 50, "kad": 9.0, "kad_ci": [8.0, 10.5]},
                           {"generator_updates": 300, "kad": 4.0, "kad_ci": [3.5, 4.5]}],
              "cd": [{"generator_updates": 300, "kad": 6.0, "kad_ci": [5.0, 7.0]}]}
    fig = updates_figure(curves, {"teacher 4 steps ping-pong (undistilled) (0 updates)": {"kad": 12.0,
                                                                                          "kad_ci": [11.0, 13.0]}})
    ax = fig.axes[0]
    presto_s, cd = ax.containers
    assert list(presto_s.lines[0].get_xdata()) == [50, 300] and list(presto_s.lines[0].get_ydata()) == [9.0, 4.0]
    assert [list(seg[:, 1]) for seg in presto_s.lines[2][0].get_segments()] == [[8.0, 10.5], [3.5, 4.5]]
    assert list(cd.lines[0].get_ydata()) == [6.0]
    (band,) = ax.patches
    ys = band.get_path().transformed(band.get_patch_transform()).vertices[:, 1]
    assert (min(ys), max(ys)) == pytest.approx((11.0, 13.0))
    assert ax.get_xlabel() == "generator updates"
    plt.close(fig)


def test_an_evaluate_folder_shows_its_loudness_line_and_a_spectrogram_strip_beside_its_players(tmp_path):
    import json

    import numpy as np
    import soundfile as sf

    from presto_ray.eval.report import write_report

    out = tmp_path / "eval"  # evaluate's layout: out/metrics.json beside out/audio/
    (out / "audio").mkdir(parents=True)
    for i in range(3):
        sf.write(str(out / "audio" / f"{i:03d}_x.wav"), 0.1 * np.sin(np.arange(8000) * (0.05 + 0.02 * i)), 8000)
    (out / "metrics.json").write_text(json.dumps({
        "model": "runs/t", "method": "teacher", "kad": 3.0, "n_samples": 3, "loudness_db_median": -23.04,
        "loudness_db_range": [-23.1, -23.0], "reference_loudness_db_range": [-30.0, -25.0],
        "loudness_outside_share": 1.0, "full_scale_share": 0.0, "clips_at_full_scale": 0}))
    page = write_report(tmp_path / "r.html", metrics=[out / "metrics.json"], audio=[out / "audio"]).read_text()
    assert ("median -23.0 dB; 100% of clips outside the reference's 1-99% range [-30.0, -25.0] dB; 0 of 3 clips "
            "with samples at full scale (0.00% of samples)") in page
    assert page.count('<img class="strip"') == 1 and page.count("<audio controls") == 3
    assert "1: 000_x (-23.0 dB)" in page  # each player numbered as in the strip, with its loudness
    for key in ("loudness_db_median", "loudness_outside_share", "full_scale_share", "clips_at_full_scale"):
        assert f"<th>{key}</th>" in page
