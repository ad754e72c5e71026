"""Procedural composition for the demo corpus: one short piece per (seed, index), as MIDI.

A clip's tags are read off its own arrangement (style, the instruments that play, tempo
class, dynamics class), never guessed afterwards, so they are true of the audio by
construction. The classes are far apart on purpose (slow is 50-76 BPM in long notes,
fast is 140-172 BPM in eighths and sixteenths; loud and quiet are 18 dB apart once
mastered) so that a small CNN trained for minutes can learn every tag.

Style, tempo class and dynamics class cycle with the index (see `classes_of`), so any 7
consecutive clips hold every style and even a 14-clip corpus holds loud, quiet, fast,
slow, drums and no drums; the rest (key, progression, melody, optional instruments,
exact tempo and level) comes from a numpy Generator seeded with (seed, index).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mido
import numpy as np

TICKS_PER_BEAT = 480
BEATS_PER_BAR = 4
CLIP_SECONDS = 30.0
# Notes ring a little past the cut at 30 s, so the clip ends inside the music; nothing
# later is written (FluidSynth would spend time rendering it).
COMPOSE_SECONDS = 30.5
DRUM_CHANNEL = 9

GENRES = ("classical", "rock", "techno", "ambient", "country", "folk")
INSTRUMENT_TAGS = (
    "piano",
    "strings",
    "violin",
    "flute",
    "guitar",
    "banjo",
    "sitar",
    "synth",
    "bass",
    "drums",
)
TAGS = GENRES + INSTRUMENT_TAGS + ("no drums", "solo", "fast", "slow", "loud", "quiet")


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


# ---- part writers ----------------------------------------------------------------


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


# ---- styles ----------------------------------------------------------------------


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


# ---- MIDI ------------------------------------------------------------------------


def midi_bytes(parts: Sequence[Part], tempo: int, end_tick: int) -> bytes:
    """A type-1 MIDI file, one track per part; every channel is silenced at `end_tick`."""
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    conductor = mido.MidiTrack()
    conductor.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo)))
    conductor.append(mido.MetaMessage("time_signature", numerator=BEATS_PER_BAR, denominator=4))
    midi.tracks.append(conductor)
    channels = iter(c for c in range(16) if c != DRUM_CHANNEL)
    pans = (64, 40, 88, 52, 76, 30, 98)
    for n, part in enumerate(parts):
        channel = DRUM_CHANNEL if part.is_drums else next(channels)
        program = DRUM_KITS[part.kit] if part.is_drums else INSTRUMENTS[part.instrument].program
        track = mido.MidiTrack()
        track.append(mido.MetaMessage("track_name", name=part.name))
        track.append(mido.Message("program_change", channel=channel, program=program))
        for control, value in (
            (7, part.volume),
            (10, 64 if part.is_drums else pans[n % len(pans)]),
            (91, part.reverb),
        ):
            track.append(
                mido.Message("control_change", channel=channel, control=control, value=value)
            )
        # note-offs sort before note-ons at the same tick so repeated notes retrigger
        events = []
        for start, length, pitch, velocity in part.notes:
            events.append((start, 1, pitch, velocity))
            events.append((start + max(length, 1), 0, pitch, 0))
        events.sort()
        now = 0
        for tick, is_on, pitch, velocity in events:
            kind = "note_on" if is_on else "note_off"
            track.append(
                mido.Message(kind, channel=channel, note=pitch, velocity=velocity, time=tick - now)
            )
            now = tick
        # FluidSynth renders until the last voice has died away (reverb tails, long
        # releases: up to 10 s); "all sound off" ends the file where the clip ends.
        track.append(
            mido.Message(
                "control_change", channel=channel, control=120, value=0, time=end_tick - now
            )
        )
        track.append(mido.MetaMessage("end_of_track", time=0))
        midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def tags_of(style: Style, parts: Sequence[Part], tempo_class: str, dynamics: str) -> list[str]:
    tags = {style.genre, *style.extra_tags}
    for part in parts:
        tags.add("drums" if part.is_drums else INSTRUMENTS[part.instrument].tag)
    if "drums" not in tags:
        tags.add("no drums")
    tags.update(t for t in (tempo_class, dynamics) if t in TAGS)
    return [t for t in TAGS if t in tags]


def compose(index: int, seed: int = 0) -> tuple[bytes, list[str], dict]:
    """The MIDI bytes, tags (in `TAGS` order) and a JSON-ready description of one clip.

    Deterministic: the same (index, seed) gives the same bytes on every machine."""
    if index < 0 or seed < 0:
        raise ValueError("index and seed must be non-negative")
    rng = np.random.default_rng([seed, index])
    style = style_of(index)
    tempo_class, dynamics = classes_of(index)
    low, high = style.tempo_ranges.get(tempo_class, TEMPO_RANGES[tempo_class])
    tempo = int(rng.integers(low, high + 1))
    scale_name = pick(rng, style.scales)
    progressions = PROGRESSIONS[scale_name]
    piece = Piece(
        rng=rng,
        tempo=tempo,
        tempo_class=tempo_class,
        dynamics=dynamics,
        root=int(rng.integers(12)),
        scale_name=scale_name,
        progression=progressions[int(rng.integers(len(progressions)))],
        bars=math.ceil(COMPOSE_SECONDS * tempo / 60 / BEATS_PER_BAR),
    )
    parts = style.arrange(piece)
    end = int(COMPOSE_SECONDS * tempo / 60 * TICKS_PER_BEAT)
    last_start = int(CLIP_SECONDS * tempo / 60 * TICKS_PER_BEAT)
    for part in parts:
        part.notes = [(t, min(n, end - t), p, v) for t, n, p, v in part.notes if t < last_start]
    level = DYNAMICS[dynamics].level_dbfs + float(rng.uniform(-LEVEL_JITTER_DB, LEVEL_JITTER_DB))
    tags = tags_of(style, parts, tempo_class, dynamics)
    info = {
        "index": index,
        "seed": seed,
        "style": style.name,
        "tempo": tempo,
        "tempo_class": tempo_class,
        "dynamics": dynamics,
        "level_dbfs": round(level, 2),
        "tonality": f"{NOTE_NAMES[piece.root]} {scale_name}",
        "encoding": encoding_of(index),
        "programs": [
            {
                "part": p.name,
                "instrument": f"drum kit {p.kit}" if p.is_drums else p.instrument,
                "program": DRUM_KITS[p.kit] if p.is_drums else INSTRUMENTS[p.instrument].program,
                "bank": 128 if p.is_drums else 0,
            }
            for p in parts
        ],
    }
    return midi_bytes(parts, tempo, end), tags, info
