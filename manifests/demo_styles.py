"""The seven styles of the demo corpus, each an arrangement of parts over a `Piece`
(which instruments play what), and the cycling of style, tempo class, dynamics class and
encoding with a clip's index, so that any 7 consecutive clips hold every style."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from manifests.demo_score import (
    DYNAMICS_ORDER,
    PULSE,
    Part,
    Piece,
    arpeggio,
    bass_line,
    block_chords,
    drone,
    drums,
    melody,
    power_chords,
    strummed,
)


@dataclass(frozen=True)
class Style:
    name: str
    genre: str
    tempo_classes: tuple[str, ...]  # cycled through by index
    scales: tuple[str, ...]
    arrange: Callable[[Piece], list[Part]]
    extra_tags: tuple[str, ...] = ()
    tempo_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)


def pick(rng: np.random.Generator, options: Sequence[str], p: Sequence[float] | None = None) -> str:
    return str(options[int(rng.choice(len(options), p=p))])


def arrange_piano(piece: Piece) -> list[Part]:
    pulse = PULSE[piece.tempo_class]
    if piece.tempo_class == "slow" and piece.rng.random() < 0.5:
        left = block_chords(piece, 3, 2.0, 2.0, vel=-10)
    else:
        left = arpeggio(piece, 3, pulse, vel=-10)
    return [
        Part("left hand", "piano", left, volume=100),
        Part("right hand", "piano", melody(piece, 5), volume=110),
    ]


def arrange_strings(piece: Piece) -> list[Part]:
    fast = piece.tempo_class == "fast"
    ensemble = block_chords(piece, 4, 0.5, 0.45) if fast else block_chords(piece, 4, 4.0, 4.0)
    lead = pick(piece.rng, ("violin", "flute"), (0.6, 0.4))
    cello_pulse = {"slow": 4.0, "medium": 2.0, "fast": 1.0}[piece.tempo_class]
    return [
        Part("ensemble", "string ensemble", ensemble, volume=90, reverb=70),
        Part("melody", lead, melody(piece, 5), volume=115, reverb=60),
        Part("bass", "cello", bass_line(piece, 2, cello_pulse), volume=95, reverb=60),
    ]


def arrange_rock(piece: Piece) -> list[Part]:
    pulse = PULSE[piece.tempo_class]
    parts = [
        Part("rhythm guitar", "distortion guitar", power_chords(piece, 3, pulse), volume=84),
        Part("bass", "picked bass", bass_line(piece, 2, pulse), volume=100),
        Part(
            "drums",
            "drums",
            drums(piece, "rock"),
            volume=127,
            kit=pick(piece.rng, ("standard", "power")),
        ),
    ]
    if piece.rng.random() < 0.4:
        parts.append(Part("lead guitar", "overdrive guitar", melody(piece, 4), volume=88))
    return parts


def arrange_techno(piece: Piece) -> list[Part]:
    fast = piece.tempo_class == "fast"
    pulse = 0.25 if fast else 0.5
    lead = pick(piece.rng, ("saw lead", "square lead"))
    parts = [
        Part("bass", "synth bass", bass_line(piece, 2, pulse, offbeat=True), volume=105),
        Part("arpeggio", lead, arpeggio(piece, 4, pulse, vel=0, legato=0.6), volume=85),
        Part(
            "drums",
            "drums",
            drums(piece, "techno fast" if fast else "techno"),
            volume=115,
            kit=pick(piece.rng, ("tr-808", "electronic")),
        ),
    ]
    if piece.rng.random() < 0.5:
        parts.append(Part("pad", "warm pad", block_chords(piece, 4, 4.0, 4.0), volume=70))
    return parts


def arrange_ambient(piece: Piece) -> list[Part]:
    rng = piece.rng
    pad = pick(rng, ("warm pad", "fantasia pad", "halo pad", "slow strings"))
    parts = [Part("pad", pad, block_chords(piece, 4, 4.0, 4.3, size=4), volume=105, reverb=110)]
    if rng.random() < 0.6:
        lead = pick(rng, ("piano", "flute"), (0.6, 0.4))
        parts.append(Part("melody", lead, melody(piece, 5), volume=105, reverb=100))
    return parts


def arrange_country(piece: Piece) -> list[Part]:
    rng = piece.rng
    fast = piece.tempo_class == "fast"
    bass_pulse = 1.0 if fast else 2.0
    parts = [
        Part(
            "guitar",
            "steel guitar",
            strummed(piece, 3, (1, 3) if not fast else (1, 2, 3), 0.9),
            volume=100,
        ),
        Part("bass", "acoustic bass", bass_line(piece, 2, bass_pulse, fifths=True), volume=105),
    ]
    fiddle, banjo = rng.random() < 0.55, rng.random() < 0.55
    if fiddle or not banjo:
        parts.append(Part("melody", "fiddle", melody(piece, 5), volume=110))
    if banjo:
        parts.append(
            Part("banjo", "banjo", arpeggio(piece, 4, 0.5, vel=-2, legato=1.0), volume=100)
        )
    if rng.random() < 0.3:
        parts.append(Part("piano", "piano", strummed(piece, 4, (1.5, 3.5), 0.4), volume=95))
    if rng.random() < 0.65:
        kit = pick(rng, ("brush", "standard"))
        parts.append(Part("drums", "drums", drums(piece, "country"), volume=118, kit=kit))
    return parts


def arrange_folk(piece: Piece) -> list[Part]:
    rng = piece.rng
    # The scale was drawn with the lead in mind: bhairav means a sitar leads.
    lead = "sitar" if piece.scale_name == "bhairav" else pick(rng, ("flute", "banjo"))
    parts = [
        Part("melody", lead, melody(piece, 4 if lead == "sitar" else 5), volume=115, reverb=60)
    ]
    if lead == "sitar" and rng.random() < 0.5:
        parts.append(Part("drone", "sitar", drone(piece, 3, 2.0), volume=85, reverb=70))
    else:
        pulse = PULSE[piece.tempo_class]
        parts.append(Part("guitar", "nylon guitar", arpeggio(piece, 3, pulse, vel=-8), volume=85))
    if rng.random() < 0.5:
        parts.append(Part("hand drums", "drums", drums(piece, "hand drums"), volume=127))
    return parts


STYLES = (
    Style(
        "piano solo",
        "classical",
        ("slow", "medium", "fast"),
        ("major", "minor"),
        arrange_piano,
        ("solo",),
    ),
    Style(
        "classical strings",
        "classical",
        ("medium", "fast", "slow"),
        ("major", "minor"),
        arrange_strings,
    ),
    Style("rock band", "rock", ("fast", "slow", "medium"), ("major", "minor"), arrange_rock),
    Style(
        "techno",
        "techno",
        ("fast", "medium"),
        ("minor",),
        arrange_techno,
        tempo_ranges={"medium": (120, 128), "fast": (140, 150)},
    ),
    Style(
        "ambient pads",
        "ambient",
        ("slow",),
        ("major", "minor"),
        arrange_ambient,
        tempo_ranges={"slow": (50, 64)},
    ),
    Style("country", "country", ("medium", "slow", "fast"), ("major",), arrange_country),
    Style(
        "folk with sitar",
        "folk",
        ("slow", "fast", "medium"),
        ("bhairav", "bhairav", "dorian"),
        arrange_folk,
    ),
)
STYLE_NAMES = tuple(s.name for s in STYLES)


def style_of(index: int) -> Style:
    return STYLES[index % len(STYLES)]


def classes_of(index: int) -> tuple[str, str]:
    """(tempo class, dynamics class) of a clip: cycled so that small corpora hold them all
    and the two never move in lockstep."""
    style = style_of(index)
    k = index // len(STYLES)  # how many earlier clips share this style
    s = index % len(STYLES)
    tempo = style.tempo_classes[(k + s) % len(style.tempo_classes)]
    dynamics = DYNAMICS_ORDER[(k + s + k // 3) % len(DYNAMICS_ORDER)]
    return tempo, dynamics


def encoding_of(index: int) -> str:
    """Half the corpus is encoded like MagnaTagATune, half like the Million Song Dataset."""
    return "mtat" if index % 2 == 0 else "msd"
