"""Procedural composition for the demo corpus: one short piece per (seed, index), as MIDI
(the material is in `demo_score.py`, the styles in `demo_styles.py`).

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
from collections.abc import Sequence

import mido
import numpy as np

from manifests.demo_score import (
    BEATS_PER_BAR,
    DRUM_KITS,
    DYNAMICS,
    INSTRUMENTS,
    LEVEL_JITTER_DB,
    NOTE_NAMES,
    PROGRESSIONS,
    TEMPO_RANGES,
    TICKS_PER_BEAT,
    Part,
    Piece,
)
from manifests.demo_styles import Style, classes_of, encoding_of, pick, style_of

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
