"""What the music21 corpus collections tell about their pieces: style family, caption noun,
composer and region per collection (sub-collections that differ listed apart), dance and form
names found in titles, and English region names for the Essen folk songs' German locales."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class CollectionInfo:
    """What the corpus collection tells about its pieces: style family (a key of
    instruments.STYLES), the caption noun, and composer / region when the collection fixes them."""

    style: str
    noun: str
    composer: str | None = None
    region: str | None = None


def _c(style: str, noun: str, composer: str | None = None, region: str | None = None) -> CollectionInfo:
    return CollectionInfo(style, noun, composer, region)


COLLECTIONS: dict[str, CollectionInfo] = {
    "bach": _c("chorale", "chorale", "J. S. Bach"),
    "palestrina": _c("renaissance", "Renaissance mass movement", "Palestrina"),
    "josquin": _c("renaissance", "Renaissance polyphonic song", "Josquin des Prez"),
    "monteverdi": _c("renaissance", "madrigal", "Claudio Monteverdi"),
    "lusitano": _c("renaissance", "madrigal", "Vicente Lusitano"),
    "luca": _c("renaissance", "Renaissance mass movement"),
    "trecento": _c("renaissance", "medieval Italian song"),
    "ciconia": _c("renaissance", "medieval motet", "Johannes Ciconia"),
    "beethoven": _c("chamber", "string quartet movement", "Beethoven"),
    "haydn": _c("chamber", "string quartet movement", "Haydn"),
    "mozart": _c("chamber", "string quartet movement", "Mozart"),
    "corelli": _c("chamber", "trio sonata movement", "Arcangelo Corelli"),
    "schumann_robert": _c("keyboard", "art song", "Robert Schumann"),
    "schumann_clara": _c("keyboard", "piano piece", "Clara Schumann"),
    "chopin": _c("keyboard", "piano piece", "Chopin"),
    "joplin": _c("keyboard", "ragtime piece", "Scott Joplin"),
    "cpebach": _c("keyboard", "keyboard piece", "C. P. E. Bach"),
    "schubert": _c("keyboard", "art song", "Franz Schubert"),
    "verdi": _c("keyboard", "aria", "Giuseppe Verdi"),
    "handel": _c("keyboard", "aria", "Handel"),
    "weber": _c("keyboard", "concertino", "Carl Maria von Weber"),
    "webern": _c("keyboard", "sacred song", "Anton Webern"),
    "schoenberg": _c("keyboard", "piano piece", "Arnold Schoenberg"),
    "beach": _c("keyboard", "art song", "Amy Beach"),
    "liliuokalani": _c("keyboard", "song", "Liliuokalani"),
    "johnson_j_r": _c("keyboard", "hymn", "J. Rosamond Johnson"),
    "essenFolksong": _c("folk_song", "folk song"),
    "miscFolk": _c("folk_song", "folk tune"),
    "oneills1850": _c("fiddle_tune", "dance tune", region="Ireland"),
    "ryansMammoth": _c("fiddle_tune", "fiddle tune"),
    "nottingham-dataset": _c("fiddle_tune", "folk dance tune"),
    "airdsAirs": _c("fiddle_tune", "air"),
}
PATH_COLLECTIONS = (  # sub-collections that differ from their collection
    (re.compile(r"^schumann_robert/opus41"), _c("chamber", "string quartet movement", "Robert Schumann")),
    (re.compile(r"^schumann_clara/opus17"), _c("chamber", "piano trio movement", "Clara Schumann")),
)
UNKNOWN_COLLECTION = _c("keyboard", "piece")

TUNE_TYPES = ("slip jig", "set dance", "jig", "reel", "hornpipe", "strathspey", "polka", "waltz",
              "march", "mazurka", "schottische", "quadrille", "lament", "fling", "minuet", "gavotte",
              "polonaise", "lullaby", "rag", "air")
TUNE_TYPE_STYLES = frozenset({"folk_song", "fiddle_tune", "keyboard"})  # nouns taken from titles
TRADITIONAL_STYLES = frozenset({"folk_song", "fiddle_tune"})  # their ABC "C:" field holds origins, not composers

REGIONS = {  # Essen folk-song locales are German; first token found wins
    "Deutschland": "Germany", "BRD": "Germany", "DDR": "Germany", "China": "China",
    "Lothringen": "Lorraine", "Luxemburg": "Luxembourg", "Frankreich": "France", "Elsass": "Alsace",
    "Polen": "Poland", "Jugoslawien": "Yugoslavia", "Schweiz": "Switzerland",
    "Niederlande": "the Netherlands", "Oesterreich": "Austria", "Irland": "Ireland",
    "UdSSR": "the Soviet Union", "Russland": "Russia", "Ungarn": "Hungary",
    "Tschechoslowakei": "Czechoslovakia", "Rumaenien": "Romania", "Taiwan": "Taiwan",
    "Schweden": "Sweden", "Italien": "Italy", "Ukraine": "Ukraine", "Amerika": "America",
    "USA": "America", "Nord - Amerika": "America", "SCOTCH": "Scotland", "SCOTCH.": "Scotland",
    "Schottland": "Scotland", "Daenemark": "Denmark", "England": "England", "Kroatien": "Croatia",
    "Mexiko": "Mexico", "Norwegen": "Norway", "Slowakei": "Slovakia", "Slowenien": "Slovenia",
    "Tirol": "Tyrol", "Steiermark": "Austria", "Boehmen": "Bohemia", "Schlesien": "Silesia",
}


def collection_info(path: str) -> CollectionInfo:
    """CollectionInfo for a corpus-relative path such as ``bach/bwv101.7.mxl``."""
    for pattern, info in PATH_COLLECTIONS:
        if pattern.match(path):
            return info
    return COLLECTIONS.get(path.split("/", 1)[0], UNKNOWN_COLLECTION)


def region_from_locale(locale: str | None) -> str | None:
    """English region name from a music21 ``localeOfComposition`` (Essen: German words)."""
    if not locale:
        return None
    for token in re.split(r"[,;/()]", locale):
        name = REGIONS.get(token.strip())
        if name:
            return name
    return None


def tune_type(*texts: str | None) -> str | None:
    """Dance or form name ("reel", "waltz") found as a word in a title or file stem."""
    for text in texts:
        if not text:
            continue
        words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text).replace("_", " ").lower()
        for name in TUNE_TYPES:
            if re.search(rf"\b{name}s?\b", words):
                return name
    return None
