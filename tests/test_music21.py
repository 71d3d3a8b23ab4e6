"""The music21 + FluidSynth source: real corpus pieces rendered by the fluidsynth binary with
FluidR3_GM (short 4 s crops at 16 kHz), captions, splits, seeds and bad input."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from presto_ray.data import music21 as m
from presto_ray.data.captions import CaptionFacts, TEMPLATES, instrument_phrase, make_caption
from presto_ray.data.instruments import INSTRUMENTS, assign_instruments, octave_shift

SR = 16000
SECONDS = 4.0


@pytest.fixture(scope="module")
def pieces():
    return {p.piece_id: p for p in m.list_pieces()}


def _spec(piece, seed=0, k=0, **kw):
    return m.RenderSpec(piece, "train", k, seed, SR, SECONDS, **kw)


def _onset_count(y: np.ndarray, sr: int) -> int:
    """Note attacks in y [n]: peaks of positive log-spectral flux (10 ms hop), >= 50 ms apart."""
    hop, n_fft = sr // 100, 1024
    frames = 1 + (len(y) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(y[idx] * np.hanning(n_fft), axis=1))
    flux = np.maximum(np.diff(np.log1p(100 * spec), axis=0), 0).sum(axis=1)
    thr = flux.mean() + 0.5 * flux.std()
    kept: list[int] = []
    for i in range(1, len(flux) - 1):
        if flux[i] > thr and flux[i] >= flux[i - 1] and flux[i] > flux[i + 1] and (not kept or i - kept[-1] >= 5):
            kept.append(i)
    return len(kept)


@pytest.mark.parametrize("piece_id", ["bach.bwv101.7", "essenFolksong.han1-100", "ryansMammoth.AcaciaReel",
                                      "palestrina.Agnus_02"])
def test_rendered_piece_is_real_audio_with_matching_caption(pieces, piece_id, tmp_path):
    import pretty_midi

    record, reason = m.render_item(_spec(pieces[piece_id], seed=3), keep_midi=tmp_path)
    assert reason is None, reason
    audio = record["audio"]
    assert audio.dtype == np.float32 and audio.shape == (int(SECONDS * SR),) and record["sample_rate"] == SR
    assert np.isfinite(audio).all()
    assert float(np.sqrt(np.mean(audio ** 2))) > 0.005  # about -46 dBFS: clearly not silence
    assert np.abs(audio).max() <= 0.99
    caption = record["caption"].lower()
    assert record["instruments"]
    for name in record["instruments"]:
        assert name in caption, (name, caption)
    bpm = record["bpm"]
    assert bpm == int(bpm) and f"{int(bpm)} bpm" in caption
    meta = record["metadata"]
    for fact in ("key", "meter"):
        if meta[fact]:
            assert meta[fact].lower() in caption, (fact, caption)
    assert record["id"] == f"{piece_id}-r0" and record["piece_id"] == piece_id
    assert 0.0 <= record["seconds_start"] <= record["seconds_total"] - SECONDS + 1e-6
    # the MIDI that was rendered carries the recorded tempo and the recorded instruments
    midi = pretty_midi.PrettyMIDI(str(tmp_path / f"{record['id']}.mid"))
    _, tempi = midi.get_tempo_changes()
    assert len(tempi) == 1 and tempi[0] == pytest.approx(bpm * meta["beat_quarter_length"], rel=1e-3)
    assert meta["qpm"] == pytest.approx(bpm * meta["beat_quarter_length"])
    assert {i.program for i in midi.instruments} == {INSTRUMENTS[n].program for n in record["instruments"]}


def test_bpm_sets_the_note_rate_of_the_audio(tmp_path):
    """A steady eighth-note melody on piano: doubling the BPM doubles the attacks per second."""
    abc = "X:1\nT:Scale study\nM:4/4\nL:1/8\nK:C\n" + "|".join(["CDEF GABc", "dcBA GFED"] * 8) + "|]\n"
    (tmp_path / "scale.abc").write_text(abc)
    piece = m.piece_from_file(tmp_path / "scale.abc")
    counts = {}
    for bpm in (60.0, 120.0):
        record, reason = m.render_item(_spec(piece, bpm=bpm, instruments=("piano",)))
        assert reason is None and record["bpm"] == bpm and f"{int(bpm)} BPM" in record["caption"]
        counts[bpm] = _onset_count(record["audio"], SR)
    # 4/4, beat = quarter: SECONDS * bpm / 60 beats, two eighths per beat (the attack at t=0 has no flux)
    for bpm, count in counts.items():
        expected = SECONDS * bpm / 60 * 2
        assert expected - 2 <= count <= expected + 1, counts
    assert 1.7 <= counts[120.0] / counts[60.0] <= 2.3, counts


def test_same_seed_same_rendering_and_other_seeds_differ(pieces):
    piece = pieces["essenFolksong.han1-100"]
    a, _ = m.render_item(_spec(piece, seed=11))
    b, _ = m.render_item(_spec(piece, seed=11))
    for key in ("instruments", "bpm", "caption", "seconds_start", "metadata"):
        assert a[key] == b[key], key
    assert np.array_equal(a["audio"], b["audio"])
    choices = set()
    for seed in range(5):
        rec, reason = m.render_item(_spec(piece, seed=seed))
        assert reason is None
        choices.add((tuple(rec["instruments"]), rec["bpm"], rec["caption"]))
    assert len(choices) >= 4
    other_k, _ = m.render_item(_spec(piece, seed=11, k=1))
    assert (other_k["instruments"], other_k["bpm"]) != (a["instruments"], a["bpm"])


def test_malformed_and_missing_pieces_are_skipped_with_a_reason(pieces, tmp_path):
    source = m.corpus_root() / "trecento" / "Fava_Dicant_nunc_iudei.xml"
    text = source.read_text(errors="replace")
    broken = tmp_path / "broken.xml"
    broken.write_text(text[: len(text) // 2])  # truncated MusicXML
    record, reason = m.render_item(_spec(m.piece_from_file(broken)))
    assert record is None and reason.startswith("parse failed"), reason
    garbage = tmp_path / "garbage.abc"
    garbage.write_text("X:1\nT:nothing\nK:C\n%% no notes at all\n")
    record, reason = m.render_item(_spec(m.piece_from_file(garbage)))
    assert record is None and reason, reason
    record, reason = m.render_item(_spec(m.piece_from_file(tmp_path / "absent.mxl")))
    assert record is None and reason.startswith("missing file")


def test_short_piece_is_played_again_up_to_max_repeats(tmp_path):
    (tmp_path / "short.abc").write_text("X:1\nT:Two bars\nM:4/4\nL:1/4\nK:G\nGABc|dBGD|]\n")
    piece = m.piece_from_file(tmp_path / "short.abc")
    # 8 quarters at 120 BPM = 4 s per play; a 10 s crop needs 3 plays
    record, reason = m.render_item(m.RenderSpec(piece, "train", 0, 0, SR, 10.0, bpm=120.0, instruments=("piano",)))
    assert reason is None and record["metadata"]["repeats"] == 3
    assert record["seconds_total"] == pytest.approx(12.0) and record["audio"].shape == (10 * SR,)
    last = record["audio"][8 * SR:9 * SR]  # inside the third play
    assert np.sqrt(np.mean(last ** 2)) > 0.005
    record, reason = m.render_item(m.RenderSpec(piece, "train", 0, 0, SR, 10.0, max_repeats=2, bpm=120.0))
    assert record is None and reason.startswith("too short")


def test_enumeration_and_splits_are_deterministic_disjoint_and_proportional(pieces):
    listed = m.list_pieces()
    assert len(listed) > 10000 and listed is m.list_pieces()  # cached in-process
    assert [p.piece_id for p in listed] == sorted(pieces)
    # duplicate formats collapse to one piece, variants of one chorale share a group
    assert "beethoven.opus18no1.movement3" in pieces and sum(p.startswith("beethoven.opus18no1.movement3")
                                                             for p in pieces) == 1
    assert pieces["bach.bwv248.9-s"].group == pieces["bach.bwv248.9-1"].group == "bach.bwv248.9"
    assert pieces["josquin.adieuMesAmours"].number is None and pieces["josquin.adieuMesAmours"].num_parts >= 3
    fractions = (0.8, 0.1, 0.1)
    first = [m.split_of(p.group, fractions, split_seed=7) for p in listed]
    assert first == [m.split_of(p.group, fractions, split_seed=7) for p in listed]
    share = Counter(first)
    for name, f in zip(m.SPLITS, fractions):
        assert abs(share[name] / len(listed) - f) < 0.01, share
    other_seed = [m.split_of(p.group, fractions, split_seed=8) for p in listed]
    assert 0.1 < np.mean([a != b for a, b in zip(first, other_seed)]) < 0.5

    plan = m.plan_items(4000, fractions, seed=1, split_seed=7)
    assert plan == m.plan_items(4000, fractions, seed=1, split_seed=7)
    assert Counter(s.split for s in plan) == {"train": 3200, "valid": 400, "test": 400}
    split_by_group: dict[str, set] = {}
    for s in plan:
        split_by_group.setdefault(s.piece.group, set()).add(s.split)
        assert s.split == m.split_of(s.piece.group, fractions, split_seed=7)
    assert all(len(v) == 1 for v in split_by_group.values())
    assert len({s.item_id for s in plan}) == len(plan)
    reseeded = m.plan_items(4000, fractions, seed=2, split_seed=7)
    assert [s.piece.piece_id for s in reseeded] != [s.piece.piece_id for s in plan]
    assert {s.piece.group: s.split for s in reseeded}.items() <= {p.group: sp for p, sp in zip(listed, first)}.items()
    # every style family is drawn, not only the 8,500 Essen songs
    styles = Counter(m.collection_info(s.piece.path).style for s in plan[:1000])
    assert set(styles) == {"folk_song", "fiddle_tune", "renaissance", "chorale", "chamber", "keyboard"}
    assert styles["folk_song"] < 600
    # pick_pieces: distinct pieces of one split, prefix-stable in n
    picked = m.pick_pieces("valid", 50, seed=1, fractions=fractions, split_seed=7)
    assert len({p.piece_id for p in picked}) == 50
    assert picked[:10] == m.pick_pieces("valid", 10, seed=1, fractions=fractions, split_seed=7)
    # a split with fewer pieces than items renders them again with the next render index
    small = [p for p in listed if p.collection == "chopin"] + [p for p in listed if p.collection == "joplin"]
    again = m.plan_items(5, (1.0, 0.0, 0.0), seed=0, pieces=small)
    assert [s.render_index for s in again] == [0, 0, 1, 1, 2]
    with pytest.raises(ValueError, match="summing to 1"):
        m.split_of("x", (0.5, 0.2, 0.2))


def test_spec_survives_a_ray_row_round_trip(pieces):
    spec = _spec(pieces["bach.bwv101.7"], seed=4, k=2, bpm=90.0, instruments=("church organ",))
    assert m.RenderSpec.from_row(spec.to_row()) == spec
    plain = _spec(pieces["essenFolksong.han1-100"])
    assert m.RenderSpec.from_row(plain.to_row()) == plain
    # Ray Data turns all-None columns into NaN and ints into numpy scalars
    row = plain.to_row() | {"bpm": np.float32("nan"), "instruments": np.float64("nan"), "soundfont": None,
                            "seed": np.int64(0), "piece_number": np.float64(100.0)}
    assert m.RenderSpec.from_row(row) == plain
    whole = m.piece_from_file(m.corpus_root() / "bach" / "bwv101.7.mxl")
    assert m.RenderSpec.from_row(_spec(whole).to_row() | {"piece_number": np.float64("nan")}).piece.number is None


def test_missing_tools_fail_with_the_package_to_install(tmp_path):
    assert m.find_soundfont().endswith("FluidR3_GM.sf2")
    with pytest.raises(FileNotFoundError, match="fluid-soundfont-gm"):
        m.find_soundfont(tmp_path / "nope.sf2")
    with pytest.raises(FileNotFoundError, match="install the fluidsynth package"):
        m.find_fluidsynth("no-such-fluidsynth-binary")


def test_instruments_follow_the_voices_and_fit_their_range():
    rng = np.random.default_rng(0)
    for _ in range(20):  # soprano, alto, tenor, bass given in a shuffled score order
        names = assign_instruments("chamber", [55.0, 72.0, 43.0, 64.0], rng)
        assert len(names) == 4 and all(n in INSTRUMENTS for n in names)
        if names[1] == "violin" and names[2] == "cello":
            break
    else:
        pytest.fail("the string quartet never came up in 20 draws")
    assert octave_shift(np.array([84, 86, 88]), "cello") == -12  # smallest move that fits
    assert octave_shift(np.array([88, 91, 95]), "cello") == -24
    assert octave_shift(np.array([60, 64, 67]), "piano") == 0


def test_captions_name_instruments_and_bpm_in_every_template():
    assert instrument_phrase(["violin", "violin", "viola", "cello"]) == "two violins, viola and cello"
    assert instrument_phrase(["piano", "piano"]) == "piano"
    full = CaptionFacts(("flute", "oboe", "clarinet", "bassoon"), 96, "chorale", "F# minor", "4/4",
                        "J. S. Bach", "Germany", "Wer nur den lieben Gott")
    bare = CaptionFacts(("fiddle",), 120, "reel")
    texts = set()
    for facts in (full, bare):
        for template in TEMPLATES:
            text = template(facts)
            texts.add(text)
            assert "96 BPM" in text if facts is full else "120 BPM" in text
            assert all(name in text.lower() for name in facts.voices)
            assert "None" not in text
    for template in TEMPLATES:
        assert all(x in template(full) for x in ("F# minor", "4/4", "J. S. Bach", "Germany")), template(full)
    assert len(texts) == 2 * len(TEMPLATES) - 1  # without a title the title template is the first one
    assert "97.5 BPM" in TEMPLATES[0](CaptionFacts(("harp",), 97.5, "air"))  # a BPM override is not rounded
    drawn = {make_caption(full, np.random.default_rng(s)) for s in range(30)}
    assert len(drawn) >= 4 and all(re.search(r"\b96 BPM\b", t) for t in drawn)
