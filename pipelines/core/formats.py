"""Which files are audio: one list of suffixes for every command (folder scan, `tag`), and
a check by content for the rest.

The suffix list is only a fast path. A file with another suffix is audio when libsndfile
opens it or ffmpeg (locked down, `core/ffmpeg.py`) finds an audio stream in it; what is
neither is skipped with a reason. Names known to be something else (images, text,
playlists: never followed) and macOS `._*` resource forks are skipped without opening.
"""

from __future__ import annotations

import os
import stat

import soundfile as sf

from pipelines.core import ffmpeg

AUDIO_SUFFIXES = frozenset(
    (
        ".mp3 .mp2 .mp1 .mpa .wav .w64 .flac .ogg .oga .opus .spx .m4a .m4b .aac .adts .alac "
        ".aif .aiff .aifc .au .snd .caf .wma .asf .webm .mka .wv .ape .ac3 .eac3 .dts .amr "
        ".tta .tak .mpc .dsf .voc .3ga"
    ).split()
)
NOT_AUDIO_SUFFIXES = frozenset(
    (
        ".jpg .jpeg .png .gif .bmp .tif .tiff .webp .heic .svg .ico .txt .md .rtf .pdf .doc "
        ".docx .nfo .log .json .xml .html .htm .csv .tsv .yaml .yml .ini .cfg .db .sqlite "
        ".lrc .sfv .md5 .sha1 .sha256 .torrent .zip .rar .7z .gz .tar .py .sh .exe .dll "
        ".ds_store .parquet .npy .accurip"
    ).split()
)
PLAYLIST_SUFFIXES = frozenset(".m3u .m3u8 .pls .cue .xspf .asx .wpl .ffconcat".split())


def has_audio_suffix(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in AUDIO_SUFFIXES


def audio_files(paths) -> list:
    """The files named, and the audio files (by suffix) under the folders named, sorted;
    a missing path or a folder without audio is a one-line UserError."""
    from pathlib import Path

    from pipelines.core.errors import UserError

    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and has_audio_suffix(p.name))
            if not found:
                raise UserError(f"no audio files under {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"no such file or directory: {path}")
    if not files:
        raise UserError("no audio files given")
    return files


def skip_by_name(name: str) -> str | None:
    """Why a file is skipped from its name alone, or None when it must be looked at."""
    if name.startswith("._"):
        return "macOS resource fork (._*)"
    suffix = os.path.splitext(name)[1].lower() or (name.lower() if name.startswith(".") else "")
    if suffix in PLAYLIST_SUFFIXES:
        return f"playlist ({suffix}), not followed"
    if suffix in NOT_AUDIO_SUFFIXES:
        return f"not audio ({suffix})"
    return None


def audio_by_content(path: str) -> tuple[bool, str]:
    """(True, "") when the regular file at `path` decodes as audio (libsndfile, else
    ffmpeg locked down); else (False, why)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return False, exc.strerror or str(exc)
    if not stat.S_ISREG(st.st_mode):
        return False, "not a regular file"
    if st.st_size == 0:
        return False, "empty file"
    try:
        if sf.info(path).frames > 0:
            return True, ""
    except (sf.LibsndfileError, RuntimeError, ValueError):
        pass
    ok, why = ffmpeg.has_audio(path)
    return ok, "" if ok else f"no decodable audio ({why})"[:200]
