"""The musical material of the demo corpus: instruments (General MIDI programs and the
tag each one gives), tempo and dynamics classes, scales, chord loops, rhythms, the frame
of one piece (`Piece`: tempo, key, progression, bars) and the writers of its parts
(melody, chords, arpeggios, bass lines, strums, drones, drum patterns) as notes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

TICKS_PER_BEAT = 480
BEATS_PER_BAR = 4


@dataclass(frozen=True)
class Instrument:
    name: str
    program: int  # General MIDI program, bank 0
    tag: str


INSTRUMENTS = {
    i.name: i
    for i in (
        Instrument("piano", 0, "piano"),
        Instrument("string ensemble", 48, "strings"),
        Instrument("slow strings", 49, "strings"),
        Instrument("cello", 42, "strings"),
        Instrument("violin", 40, "violin"),
        Instrument("fiddle", 110, "violin"),
        Instrument("flute", 73, "flute"),
        Instrument("nylon guitar", 24, "guitar"),
        Instrument("steel guitar", 25, "guitar"),
        Instrument("overdrive guitar", 29, "guitar"),
        Instrument("distortion guitar", 30, "guitar"),
        Instrument("banjo", 105, "banjo"),
        Instrument("sitar", 104, "sitar"),
        Instrument("saw lead", 81, "synth"),
        Instrument("square lead", 80, "synth"),
        Instrument("warm pad", 89, "synth"),
        Instrument("fantasia pad", 88, "synth"),
        Instrument("halo pad", 94, "synth"),
        Instrument("acoustic bass", 32, "bass"),
        Instrument("picked bass", 34, "bass"),
        Instrument("synth bass", 38, "bass"),
    )
}
# Drum kits are bank-128 presets of FluidR3_GM, chosen by a program change on channel 10.
DRUM_KITS = {"standard": 0, "power": 16, "electronic": 24, "tr-808": 25, "brush": 40}

TEMPO_RANGES = {"slow": (60, 76), "medium": (96, 118), "fast": (150, 172)}


@dataclass(frozen=True)
class Dynamics:
    velocity: tuple[int, int]  # note-on velocity range: timbre follows playing strength
    level_dbfs: float  # RMS level of the mastered clip (mono mix)


DYNAMICS = {
    "loud": Dynamics((98, 118), -14.0),
    "medium": Dynamics((68, 88), -23.0),
    "quiet": Dynamics((34, 52), -32.0),
}
DYNAMICS_ORDER = ("loud", "medium", "quiet")
LEVEL_JITTER_DB = 1.5

SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "bhairav": (0, 1, 4, 5, 7, 8, 11),  # the raga scale of the sitar pieces
}
# Chord loops as scale degrees (0 = tonic), one chord per bar.
PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 3), (0, 3, 0, 4), (5, 3, 0, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2)),
    "dorian": ((0, 3, 0, 3), (0, 6, 3, 0)),
    "bhairav": ((0, 0, 1, 0), (0, 3, 1, 0), (0, 0, 6, 0)),
}
# Melody rhythms (note lengths in beats, one bar each): the note density is what makes
# "fast" and "slow" audible beyond the tempo itself.
RHYTHMS = {
    "slow": ((4,), (2, 2), (3, 1), (2, 1, 1), (1, 1, 2)),
    "medium": ((1, 1, 1, 1), (1, 0.5, 0.5, 1, 1), (0.5, 0.5, 1, 0.5, 0.5, 1), (1.5, 0.5, 1, 1)),
    "fast": ((0.5,) * 8, (0.25,) * 8 + (0.5,) * 4, (0.5, 0.25, 0.25) * 4, (0.25,) * 16),
}
# Accompaniment pulse in beats.
PULSE = {"slow": 1.0, "medium": 0.5, "fast": 0.5}
NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


@dataclass
class Part:
    """One instrument track: notes are (start tick, length in ticks, pitch, velocity)."""

    name: str
    instrument: str  # key of INSTRUMENTS, or "drums"
    notes: list[tuple[int, int, int, int]] = field(default_factory=list)
    volume: int = 100
    reverb: int = 40
    kit: str = "standard"

    @property
    def is_drums(self) -> bool:
        return self.instrument == "drums"


@dataclass
class Piece:
    """The shared musical frame every part of one clip is written against."""

    rng: np.random.Generator
    tempo: int
    tempo_class: str
    dynamics: str
    root: int  # pitch class of the tonic
    scale_name: str
    progression: tuple[int, ...]
    bars: int

    @property
    def scale(self) -> tuple[int, ...]:
        return SCALES[self.scale_name]

    @property
    def bar_ticks(self) -> int:
        return BEATS_PER_BAR * TICKS_PER_BEAT

    def chord(self, bar: int) -> int:
        return self.progression[bar % len(self.progression)]

    def pitch(self, degree: int, octave: int) -> int:
        """MIDI pitch of a scale degree (any integer) counted from the tonic in `octave`."""
        return 12 * (octave + 1) + self.root + 12 * (degree // 7) + self.scale[degree % 7]

    def velocity(self, offset: int = 0) -> int:
        low, high = DYNAMICS[self.dynamics].velocity
        return int(np.clip(self.rng.integers(low, high + 1) + offset, 1, 127))

    def ticks(self, beats: float) -> int:
        return int(round(beats * TICKS_PER_BEAT))


def melody(piece: Piece, octave: int, span: int = 9, legato: float = 0.92, vel: int = 6) -> list:
    """A random walk over the scale that lands on chord tones on the beats."""
    rng = piece.rng
    bank = RHYTHMS[piece.tempo_class]
    # A four-bar rhythmic phrase, repeated, sounds composed rather than random.
    phrase = [bank[int(rng.integers(len(bank)))] for _ in range(4)]
    degree = int(rng.integers(2, span - 2))
    notes = []
    for bar in range(piece.bars):
        chord = piece.chord(bar)
        beat = 0.0
        for length in phrase[bar % 4]:
            step = int(rng.choice((-2, -1, -1, 0, 1, 1, 2, 3, -3)))
            degree = min(max(degree + step, 0), span)
            if float(beat).is_integer():
                # nearest chord tone (root, third or fifth of the bar's chord)
                for delta in (0, 1, -1, 2, -2):
                    if (degree + delta - chord) % 7 in (0, 2, 4) and 0 <= degree + delta <= span:
                        degree += delta
                        break
            start = bar * piece.bar_ticks + piece.ticks(beat)
            accent = 8 if beat == 0 else 0
            notes.append(
                (
                    start,
                    piece.ticks(length * legato),
                    piece.pitch(degree, octave),
                    piece.velocity(vel + accent),
                )
            )
            beat += length
    return notes


def chord_tones(piece: Piece, bar: int, octave: int, size: int = 3) -> list[int]:
    chord = piece.chord(bar)
    return [piece.pitch(chord + 2 * i, octave) for i in range(size)]


def block_chords(
    piece: Piece, octave: int, pulse: float, length: float, vel: int = -6, size: int = 3
) -> list:
    """The bar's chord struck every `pulse` beats (pulse 4 = once a bar, held)."""
    notes = []
    for bar in range(piece.bars):
        for hit in range(int(BEATS_PER_BAR / pulse)):
            start = bar * piece.bar_ticks + piece.ticks(hit * pulse)
            velocity = piece.velocity(vel)
            for pitch in chord_tones(piece, bar, octave, size):
                notes.append((start, piece.ticks(length), pitch, velocity))
    return notes


def arpeggio(piece: Piece, octave: int, pulse: float, vel: int = -6, legato: float = 1.5) -> list:
    """Chord tones up and down, one every `pulse` beats, ringing over each other."""
    shape = (0, 1, 2, 3, 2, 1)
    notes = []
    for bar in range(piece.bars):
        chord = piece.chord(bar)
        for i in range(int(BEATS_PER_BAR / pulse)):
            degree = chord + 2 * shape[i % len(shape)]
            start = bar * piece.bar_ticks + piece.ticks(i * pulse)
            notes.append(
                (
                    start,
                    piece.ticks(pulse * legato),
                    piece.pitch(degree, octave),
                    piece.velocity(vel),
                )
            )
    return notes


def bass_line(
    piece: Piece, octave: int, pulse: float, fifths: bool = False, offbeat: bool = False
) -> list:
    """Roots every `pulse` beats; `fifths` alternates root and fifth (boom-chick),
    `offbeat` plays only between the beats (techno)."""
    notes = []
    for bar in range(piece.bars):
        chord = piece.chord(bar)
        for i in range(int(BEATS_PER_BAR / pulse)):
            beat = i * pulse
            if offbeat and float(beat).is_integer():
                continue
            degree = chord + 4 if fifths and i % 2 else chord
            start = bar * piece.bar_ticks + piece.ticks(beat)
            notes.append(
                (start, piece.ticks(pulse * 0.9), piece.pitch(degree, octave), piece.velocity(4))
            )
    return notes


def power_chords(piece: Piece, octave: int, pulse: float) -> list:
    """Root, fifth and octave: the rock guitar's chord, chugging every `pulse` beats."""
    notes = []
    for bar in range(piece.bars):
        root = piece.pitch(piece.chord(bar), octave)
        for i in range(int(BEATS_PER_BAR / pulse)):
            start = bar * piece.bar_ticks + piece.ticks(i * pulse)
            velocity = piece.velocity(0)
            for pitch in (root, root + 7, root + 12):
                notes.append((start, piece.ticks(pulse * 0.9), pitch, velocity))
    return notes


def strummed(piece: Piece, octave: int, beats: Sequence[float], length: float) -> list:
    """Chords struck on the given beats of each bar, strings a few ms apart like a strum."""
    notes = []
    for bar in range(piece.bars):
        tones = chord_tones(piece, bar, octave, 4)
        for beat in beats:
            start = bar * piece.bar_ticks + piece.ticks(beat)
            velocity = piece.velocity(-4)
            for n, pitch in enumerate(tones):
                notes.append((start + 12 * n, piece.ticks(length), pitch, velocity))
    return notes


def drone(piece: Piece, octave: int, pulse: float) -> list:
    """Tonic, fifth and octave re-plucked every `pulse` beats, like a tanpura."""
    notes = []
    tonic = piece.pitch(0, octave)
    for bar in range(piece.bars):
        for i in range(int(BEATS_PER_BAR / pulse)):
            start = bar * piece.bar_ticks + piece.ticks(i * pulse)
            velocity = piece.velocity(-10)
            for n, pitch in enumerate((tonic, tonic + 7, tonic + 12)):
                notes.append((start + 20 * n, piece.ticks(pulse * 1.5), pitch, velocity))
    return notes


# GM percussion keys.
KICK, SIDE_STICK, SNARE, CLAP, CLOSED_HAT, OPEN_HAT, CRASH = 36, 37, 38, 39, 42, 46, 49
HI_BONGO, LOW_BONGO, OPEN_CONGA, LOW_CONGA = 60, 61, 63, 64

# Drum patterns: key -> positions on the bar's sixteenth-note grid.
DRUM_PATTERNS = {
    "rock": {KICK: (0, 8, 10), SNARE: (4, 12), CLOSED_HAT: tuple(range(0, 16, 2))},
    "techno": {KICK: (0, 4, 8, 12), CLAP: (4, 12), OPEN_HAT: (2, 6, 10, 14)},
    "techno fast": {
        KICK: (0, 4, 8, 12),
        CLAP: (4, 12),
        OPEN_HAT: (2, 6, 10, 14),
        CLOSED_HAT: tuple(range(16)),
    },
    "country": {KICK: (0, 8), SIDE_STICK: (4, 12), CLOSED_HAT: tuple(range(0, 16, 2))},
    "hand drums": {
        LOW_CONGA: (0, 6, 8),
        HI_BONGO: (2, 4, 10, 12, 14),
        OPEN_CONGA: (3, 11),
        LOW_BONGO: (7, 15),
    },
}


def drums(piece: Piece, pattern: str) -> list:
    notes = []
    for bar in range(piece.bars):
        for key, positions in DRUM_PATTERNS[pattern].items():
            for pos in positions:
                start = bar * piece.bar_ticks + pos * TICKS_PER_BEAT // 4
                accent = 10 if pos % 4 == 0 else 0
                notes.append((start, TICKS_PER_BEAT // 4, key, piece.velocity(accent)))
        if pattern == "rock" and bar % 4 == 0:
            notes.append((bar * piece.bar_ticks, TICKS_PER_BEAT, CRASH, piece.velocity(4)))
    return notes
