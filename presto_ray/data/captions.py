"""Text captions for rendered pieces, built from what was chosen and what music21 knows.

Every caption names each instrument used and the tempo as ``<bpm> BPM`` (``f"{bpm:g}"``); key, meter, style,
composer, region and (sometimes) the title are added when known. Several templates, chosen with
a seeded RNG, keep the text from being one fixed pattern, e.g.
"a chorale by J. S. Bach for flute, oboe, clarinet and bassoon, in F# minor, 4/4, 96 BPM".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from presto_ray.data.instruments import INSTRUMENTS

_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


@dataclass(frozen=True)
class CaptionFacts:
    """What a caption may say. ``voices``: instrument name per sounding part (duplicates count
    players of countable instruments); ``noun``: what the piece is ("chorale", "reel");
    the other fields are None when unknown."""

    voices: tuple[str, ...]
    bpm: float
    noun: str
    key: str | None = None
    meter: str | None = None
    composer: str | None = None
    region: str | None = None
    title: str | None = None


def _plural(name: str) -> str:
    if name.endswith(("ss", "ch", "x")):
        return name + "es"
    if name.endswith("s"):
        return name
    return name + "s"


def instrument_phrase(voices: tuple[str, ...] | list[str]) -> str:
    """["violin", "violin", "viola", "cello"] -> "two violins, viola and cello". Instruments that
    are not countable (piano, organ, choir, string section) are named once."""
    counts = Counter(voices)
    items = []
    for name in dict.fromkeys(voices):
        n = counts[name]
        countable = INSTRUMENTS[name].countable if name in INSTRUMENTS else True
        if n > 1 and countable:
            items.append(f"{_NUMBERS[n] if n < len(_NUMBERS) else n} {_plural(name)}")
        else:
            items.append(name)
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _subject(f: CaptionFacts) -> str:
    """"a folk song from Germany", "a chorale by J. S. Bach"."""
    out = _article(f.noun)
    if f.composer:
        out += f" by {f.composer}"
    if f.region:
        out += f" from {f.region}"
    return out


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _t_for(f: CaptionFacts) -> str:
    extras = "".join(f", {x}" for x in (f"in {f.key}" if f.key else None, f.meter) if x)
    return f"{_subject(f)} for {instrument_phrase(f.voices)}{extras}, {f.bpm:g} BPM"


def _t_playing(f: CaptionFacts) -> str:
    out = f"{_cap(instrument_phrase(f.voices))} playing {_subject(f)}"
    if f.key:
        out += f" in {f.key}"
    out += f" at {f.bpm:g} BPM"
    if f.meter:
        out += f", in {f.meter} time"
    return out


def _t_tempo_first(f: CaptionFacts) -> str:
    parts = [f"{f.bpm:g} BPM {f.noun}"]
    if f.composer:
        parts[0] += f" by {f.composer}"
    if f.region:
        parts[0] += f" from {f.region}"
    parts.append(instrument_phrase(f.voices))
    parts += [x for x in (f.key, f.meter) if x]
    return "; ".join(parts)


def _t_arranged(f: CaptionFacts) -> str:
    out = f"{_cap(_subject(f))} arranged for {instrument_phrase(f.voices)}."
    details = ", ".join(x for x in (f.key, f"{f.meter} meter" if f.meter else None) if x)
    if details:
        out += f" {_cap(details)}."
    return out + f" Tempo {f.bpm:g} BPM."


def _t_tags(f: CaptionFacts) -> str:
    tags = [f.noun, instrument_phrase(f.voices), f"{f.bpm:g} BPM"]
    tags += [x for x in (f.key, f.meter, f.composer, f.region) if x]
    return ", ".join(tags)


def _t_title(f: CaptionFacts) -> str:
    head = f'"{f.title}", ' if f.title else ""
    return head + _t_for(f)


TEMPLATES: tuple[Callable[[CaptionFacts], str], ...] = (
    _t_for, _t_playing, _t_tempo_first, _t_arranged, _t_tags, _t_title,
)


def make_caption(facts: CaptionFacts, rng: np.random.Generator) -> str:
    """One caption for ``facts``; the template is drawn from ``rng`` (one integer draw)."""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    if template is _t_title and not facts.title:
        template = _t_for
    return template(facts)
