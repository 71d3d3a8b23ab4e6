"""report.html rendered in a headless browser (issue #19): the page loads, every image (the latency
plot and one spectrogram strip per audio folder) decodes, every player has its audio, and each
model's section carries its loudness line."""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from presto_ray.eval.report import write_report

RATE = 16000


def chromium() -> str | None:
    """The system's headless Chromium (Debian's chromium-headless-shell), or None."""
    found = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    return found or next(iter(sorted(glob.glob("/usr/lib/chromium*/chromium-headless-shell"))), None)


def entry(name: str, method: str, case: str, kad: float, db: float, outside: float, full: int) -> dict:
    return {"label": f"{method} {case}", "name": name, "method": method, "case": case, "kad": kad,
            "kad_ci": [kad - 1, kad + 1], "n_samples": 2, "loudness_db_median": db, "loudness_db_range": [db - 3, db + 3],
            "reference_loudness_db_range": [-40.0, -20.0], "loudness_outside_share": outside,
            "full_scale_share": 0.01 * full, "clips_at_full_scale": full}


def quickstart_like(root: Path) -> Path:
    """A quickstart-shaped output (metrics.json with named entries and the floor, latency.json,
    audio/<name>/ with two WAVs each and audio/reference/) folded into report.html."""
    doc = {"floor": {"kad": 0.5, "kad_ci": [0.0, 1.0], "n": 2, "loudness_outside_share": 0.0},
           "entries": [entry("teacher", "teacher", "default", 10.0, -30.0, 0.0, 0),
                       entry("presto-s", "presto-s", "4 steps", 5.0, -8.0, 1.0, 2)]}
    latency = {"hardware": {"cpu": "test"},
               "entries": [{"method": "teacher", "case": "default", "sampling_s": 1.0},
                           {"method": "presto-s", "case": "4 steps", "sampling_s": 0.1}]}
    (root / "metrics.json").write_text(json.dumps(doc))
    (root / "latency.json").write_text(json.dumps(latency))
    rng = np.random.default_rng(0)
    t = np.arange(RATE) / RATE
    for name, amplitude in (("reference", 0.05), ("teacher", 0.05), ("presto-s", 1.0)):
        for i, hz in enumerate((220.0, 330.0)):
            wav = amplitude * np.sin(2 * np.pi * hz * t) + 0.01 * rng.standard_normal(RATE)
            (root / "audio" / name).mkdir(parents=True, exist_ok=True)
            sf.write(str(root / "audio" / name / f"{i:03d}_clip.wav"), np.clip(wav, -1, 1), RATE, subtype="PCM_16")
    return write_report(root / "report.html", latency=[root / "latency.json"], metrics=[root / "metrics.json"],
                        audio=[root / "audio" / n for n in ("reference", "teacher", "presto-s")])


def test_report_renders_in_a_headless_browser_with_every_image_decoded(tmp_path):
    executable = chromium()
    if executable is None:
        pytest.skip("no Chromium binary: install the apt package chromium-headless-shell")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the browser is the system's)")
    report = quickstart_like(tmp_path)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page()
            page.goto(report.as_uri(), wait_until="load", timeout=15000)
            assert page.title() == "presto_ray report"
            images = page.eval_on_selector_all("img", "els => els.map(i => [i.alt, i.complete, i.naturalWidth])")
            players = page.eval_on_selector_all("audio", "els => els.map(a => a.getAttribute('src') || '')")
            durations = page.evaluate("""() => Promise.all([...document.querySelectorAll('audio')].map(a =>
                a.readyState >= 1 ? a.duration : new Promise(done => {
                    a.addEventListener('loadedmetadata', () => done(a.duration));
                    a.addEventListener('error', () => done(-1)); a.load(); })))""")
            sections = page.eval_on_selector_all(
                "section.audio", "els => els.map(s => [s.querySelector('h2').textContent, s.querySelectorAll("
                "'.clips > img.strip').length, s.querySelectorAll('.clips > .players audio').length, "
                "(s.querySelector('.loudness') || {}).textContent || ''])")
        finally:
            browser.close()
    # the latency-vs-KAD plot and one spectrogram strip per audio folder, every one decoded
    assert [alt for alt, _, _ in images] == ["latency plot", "mel spectrograms of reference",
                                             "mel spectrograms of teacher", "mel spectrograms of presto-s"]
    assert all(complete and width > 0 for _, complete, width in images), images
    assert len(players) == 6 and all(src.startswith("data:audio/wav;base64,") for src in players)
    assert durations == pytest.approx([1.0] * 6, abs=0.01)  # every player's WAV decodes: 1 s each
    # each folder: its strip beside its two players; a model's loudness line from its metrics entry
    assert [s[:3] for s in sections] == [["Audio: reference", 1, 2], ["Audio: teacher", 1, 2],
                                         ["Audio: presto-s", 1, 2]]
    assert sections[0][3] == ""  # the reference has no metrics entry
    assert "median -30.0 dB" in sections[1][3] and "0% of clips outside" in sections[1][3]
    assert "100% of clips outside the reference's 1-99% range [-40.0, -20.0] dB" in sections[2][3]
    assert "2 of 2 clips with samples at full scale" in sections[2][3]
