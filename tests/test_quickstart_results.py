"""The quickstart's combined metrics.json and its printed table carry the audio checks (issue #19):
the share of clips outside the reference's 1-99% loudness range and the clips at full scale."""

from __future__ import annotations

import re

from presto_ray.eval.loudness import LOUDNESS_KEYS
from presto_ray.quickstart.results import COLUMNS, ENTRY_KEYS, combine, table


def evaluation(name: str, method: str, case: str, outside: float, full: int) -> dict:
    metrics = {"method": method, "model": f"runs/{name}", "sampler": "heun", "steps": 4, "cfg_scale": 4.0,
               "n_samples": 32, "kad": 5.0, "kad_ci": [4.0, 6.0], "loudness_db_median": -28.0,
               "loudness_db_range": [-40.0, -2.0], "reference_loudness_db_range": [-44.0, -24.0],
               "loudness_outside_share": outside, "full_scale_share": 0.001 * full, "clips_at_full_scale": full,
               "floor_kad": 0.2, "floor_kad_ci": [0.0, 0.4], "n_floor": 20, "floor_loudness_outside_share": 0.05}
    return {"name": name, "case": case, "train_steps": 10, "control_of": None, "metrics": metrics}


def test_combine_keeps_the_loudness_checks_and_the_table_shows_them():
    latency = {"entries": [{"model": f"runs/{m}", "case": c, **{k: 1.0 for k in ("nfe", "block_fraction", "text_s",
               "sampling_s", "decode_s", "total_s", "sampling_speedup", "total_speedup")}}
                           for m, c in (("teacher", "default"), ("presto-s", "4 steps"))]}
    doc = combine([evaluation("teacher", "teacher", "default", 0.0625, 0),
                   evaluation("presto-s", "presto-s", "4 steps", 0.5, 3)], latency)
    teacher, student = doc["entries"]
    assert tuple(student) == ENTRY_KEYS and set(LOUDNESS_KEYS) <= set(ENTRY_KEYS)
    assert (student["loudness_outside_share"], student["clips_at_full_scale"]) == (0.5, 3)
    assert student["reference_loudness_db_range"] == [-44.0, -24.0] and student["full_scale_share"] == 0.003
    assert doc["floor"]["loudness_outside_share"] == 0.05
    titles = [t for _, t, _ in COLUMNS]
    assert titles.index("loud out") == titles.index("full-scale clips") - 1
    rows = [re.split(r"\s{2,}", line.strip()) for line in table(doc).splitlines()]  # cells: 2+ spaces apart
    assert rows[0] == titles
    cells = {r[0]: (r[titles.index("loud out")], r[titles.index("full-scale clips")]) for r in rows[2:]}
    assert cells["teacher default"] == ("6%", "0") and cells["presto-s 4 steps"] == ("50%", "3")
    assert cells["data vs data (noise floor)"] == ("5%", "-")  # the data's own share outside; no clip count
