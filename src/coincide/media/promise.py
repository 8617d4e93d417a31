"""How much audio a media file's header promises, to tell a truncated file from a short one.

A file cut short (a copy or a download that stopped, a recorder that lost power) still opens and
decodes up to the cut; its header, written before the cut, states the length the file was meant
to have. For most formats FFmpeg reports that length as the stream's duration (FLAC's sample
count, an MP3's Xing/Info frame count, an MP4 or AVI track's length). For WAV it does not: its
demuxer shortens the duration to the bytes the file holds, so the RIFF header's data chunk size is
read here instead.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av

# Chunks read before a WAV's data chunk (fmt, LIST, fact, ...); real files have a handful.
_MAX_WAV_CHUNKS = 64
# A data chunk size a streaming writer leaves when it cannot go back and fill it in.
_OPEN_SIZES = {0, 0xFFFFFFFF}


def wav_promised_s(path: Path) -> float | None:
    """Seconds of audio a RIFF or RF64 WAVE header promises: its data chunk's size over the byte
    rate of its fmt chunk. None when the file is not such a WAV or the size was left open (0 or
    0xFFFFFFFF, as a writer to a pipe leaves it)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:] != b"WAVE":
            return None
        byte_rate = data_size_64 = None
        for _ in range(_MAX_WAV_CHUNKS):
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"data":
                if head[:4] == b"RF64" and size == 0xFFFFFFFF:
                    size = data_size_64 or 0  # RF64 keeps sizes over 4 GB in its ds64 chunk
                if size in _OPEN_SIZES or not byte_rate:
                    return None
                return size / byte_rate
            body = f.read(min(size, 16))
            if name == b"fmt " and len(body) == 16:
                byte_rate = struct.unpack("<I", body[8:12])[0]
            elif name == b"ds64" and len(body) == 16:
                data_size_64 = struct.unpack("<Q", body[8:16])[0]
            f.seek(size + (size & 1) - len(body), 1)  # chunks are padded to an even size
    return None


def promised_s(path: Path, container: av.container.InputContainer, stream: av.Stream) -> float:
    """Seconds of audio the header of `path` promises for `stream` (0 when it states none)."""
    if container.format.name == "wav":
        return wav_promised_s(path) or 0.0
    duration, time_base = stream.duration, stream.time_base
    if duration is None or time_base is None or duration <= 0:
        return 0.0
    return float(Fraction(duration) * time_base)
