"""An independent length estimate for MPEG audio: count the frames.

libsndfile takes an MP3's length from its Xing/Info header, or without one from the first
frame's bitrate, and stops reading there; on a VBR file without a Xing header, or after a
damaged region, it returns less audio than the file holds and raises nothing. Walking the
frame headers costs a few milliseconds for a 30-second preview and does not depend on
either decoder, so a short decode is caught instead of stored as if complete.

A frame counts only when the next frame follows where its length says (or the data ends,
or a trailing ID3v1/APE tag starts), so garbage that happens to start with a sync word
is not counted; after a damaged region the walk resyncs at the next such chain.
"""

from __future__ import annotations

_BITRATES = {  # kbit/s by (version is MPEG-1, layer); index 1..14
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_TRAILERS = (b"TAG", b"APETAGEX", b"LYRICS")


def _frame_table():
    """For header bytes 1 and 2 (as one 16-bit index): frame length in bytes (0: not a
    valid header), samples per frame, sample rate."""
    lengths, samples, rates = [0] * 65536, [0] * 65536, [0] * 65536
    for b1 in range(0xE0, 0x100):
        version, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
        if version == 1 or layer_bits == 0:
            continue
        layer, mpeg1 = 4 - layer_bits, version == 3
        for b2 in range(256):
            bitrate_index, rate_index, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
            if bitrate_index in (0, 15) or rate_index == 3:
                continue
            bitrate = _BITRATES[(mpeg1, layer)][bitrate_index - 1] * 1000
            rate = _RATES[version][rate_index]
            if layer == 1:
                length, count = (12 * bitrate // rate + padding) * 4, 384
            elif layer == 2 or mpeg1:
                length, count = 144 * bitrate // rate + padding, 1152
            else:
                length, count = 72 * bitrate // rate + padding, 576
            i = (b1 << 8) | b2
            lengths[i], samples[i], rates[i] = length, count, rate
    return lengths, samples, rates


_LENGTHS, _SAMPLES, _RATES_OF = _frame_table()


def _id3v2_size(data: bytes) -> int:
    if len(data) < 10 or data[:3] != b"ID3":
        return 0
    size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
    return 10 + size + (10 if data[5] & 0x10 else 0)


def _header(data: bytes, pos: int) -> int:
    """The 16-bit table index of a valid frame header at `pos`, else 0."""
    if data[pos] != 0xFF:
        return 0
    i = (data[pos + 1] << 8) | data[pos + 2]
    return i if _LENGTHS[i] else 0


def mpeg_frames(data: bytes, stop_after: int | None = None) -> tuple[int, int] | None:
    """(decodable samples per channel, sample rate) of MPEG-1/2/2.5 audio in `data`, or
    None when fewer than two chained frames are found. `stop_after` ends the walk once
    that many samples are counted (enough for a decode capped by --max-seconds)."""
    n = len(data)
    pos = _id3v2_size(data)
    total = frames = rate = 0
    first = True
    while pos + 4 <= n:
        i = _header(data, pos)
        if i:
            nxt = pos + _LENGTHS[i]
            chained = nxt == n or data[nxt : nxt + 8].startswith(_TRAILERS)
            if not chained and nxt + 4 <= n:
                j = _header(data, nxt)
                chained = bool(j) and (j & 0xFE0C) == (i & 0xFE0C)  # same version/layer/rate
            if chained and (not rate or _RATES_OF[i] == rate):
                rate = _RATES_OF[i]
                # The Xing/Info/VBRI frame of a VBR file carries no audio.
                if not (first and (b"Xing" in data[pos:nxt] or b"Info" in data[pos:nxt])):
                    total += _SAMPLES[i]
                first = False
                frames += 1
                pos = nxt
                if stop_after is not None and total >= stop_after:
                    break
                continue
        pos = data.find(b"\xff", pos + 1)
        if pos < 0:
            break
    return (total, rate) if frames >= 2 else None
