"""One video frame per audio window: the frame on screen at the window's centre, as 128 x 128 RGB.

Window j starts at `origin_s + j` on the container clock (origin_s: the first audio sample) and
its centre is 0.48 s later. Its frame is the last frame whose presentation time is <= the centre,
so variable frame rate needs no special case. A window gets no frame when its centre falls before
the first frame, or after the last frame's display interval (timestamp plus duration) ends, as in
a video shorter than its audio.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from coincide.media.frontend import HOP_LENGTH, N_FRAMES, SAMPLE_RATE

# Offset of a window's centre from its start: half of the 0.96 s its frames span.
WINDOW_CENTRE_S = N_FRAMES * HOP_LENGTH / SAMPLE_RATE / 2

# One scaling context per thread, kept from file to file: building one costs about as much as
# converting ten small frames (measured), and a file gives only one frame per second.
_reformatters = threading.local()


def _shared_reformatter() -> VideoReformatter:
    reformatter = getattr(_reformatters, "reformatter", None)
    if reformatter is None:
        reformatter = _reformatters.reformatter = VideoReformatter()
    return reformatter


@dataclass
class _Shown:
    """A converted frame and the interval [start_s, end_s) during which it is on screen."""

    start_s: float
    end_s: float
    image: np.ndarray


class FrameSelector:
    """Picks the frame for each window from a video stream's frames, pushed in display order.

    A frame is converted to a square RGB image only if some window centre falls in its display
    interval, which is known once the next frame arrives; at most one frame per second of video
    ahead of the audio is held, so memory stays small however long the file.
    """

    def __init__(
        self,
        origin_s: float,
        frame_size: int,
        sample_aspect_ratio: Fraction | None,
        frame_duration_s: float,
    ) -> None:
        self.origin_s = origin_s  # container time of window 0's start
        self.frame_size = frame_size
        self.sample_aspect_ratio = sample_aspect_ratio
        self.frame_duration_s = frame_duration_s  # for frames that do not state their duration
        self._last: tuple[av.VideoFrame, float] | None = None  # newest frame and its start
        self._shown: deque[_Shown] = deque()
        self._ended = False

    def push(self, frame: av.VideoFrame) -> None:
        """Take the next decoded frame (frames come in presentation order)."""
        if frame.time is not None:
            start_s = float(frame.time)
        elif self._last is not None:
            start_s = self._last[1] + self.frame_duration_s
        else:
            start_s = 0.0
        if self._last is not None:
            last_frame, last_start_s = self._last
            if start_s < last_start_s:
                return  # a timestamp going back (broken file): keep the frames in order
            self._close(last_frame, last_start_s, start_s)
        self._last = (frame, start_s)

    def finish(self) -> None:
        """No more frames: the last one shows for its own duration."""
        if self._last is not None:
            frame, start_s = self._last
            duration_s = 0.0
            if frame.duration and frame.time_base is not None:
                duration_s = float(frame.duration * frame.time_base)
            self._close(frame, start_s, start_s + (duration_s or self.frame_duration_s))
            self._last = None
        self._ended = True

    def ready(self, window: int) -> bool:
        """Whether the frame of `window` (and every earlier one) is known."""
        if self._ended:
            return True
        if self._last is None:
            return False
        return self._centre(window) < self._last[1]

    def take(self, first_window: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames of windows first_window .. first_window + n - 1, which must be `ready`, in
        increasing order across calls: ((n, size, size, 3) uint8, zeros where none; (n,) bool)."""
        size = self.frame_size
        images = np.empty((n, size, size, 3), dtype=np.uint8)  # every row is written below
        has_frame = np.zeros(n, dtype=bool)
        for i in range(n):
            centre = self._centre(first_window + i)
            while self._shown and self._shown[0].end_s <= centre:
                self._shown.popleft()
            if self._shown and self._shown[0].start_s <= centre:
                images[i] = self._shown[0].image
                has_frame[i] = True
            else:
                images[i] = 0
        return images, has_frame

    def shows_a_centre(self, start_s: float, end_s: float) -> bool:
        """Whether some window centre falls in [start_s, end_s] (end included: the caller's
        interval may be rounded). A frame whose display interval holds no centre is never
        chosen, whichever frames are decoded around it."""
        return self._first_centre(start_s) <= end_s

    def _centre(self, window: int) -> float:
        return self.origin_s + window + WINDOW_CENTRE_S

    def _first_centre(self, start_s: float) -> float:
        """The earliest window centre at or after `start_s` (window 0's if all are)."""
        window = max(0, math.ceil(start_s - self.origin_s - WINDOW_CENTRE_S))
        # Compare with the very float `take` will compute, whatever ceil's rounding did.
        if window > 0 and self._centre(window - 1) >= start_s:
            window -= 1
        return self._centre(window)

    def _close(self, frame: av.VideoFrame, start_s: float, end_s: float) -> None:
        """Keep the frame, converted, if a window centre falls in [start_s, end_s)."""
        if start_s <= self._first_centre(start_s) < end_s:
            image = square_rgb(frame, self.frame_size, self.sample_aspect_ratio)
            self._shown.append(_Shown(start_s, end_s, image))


def square_rgb(
    frame: av.VideoFrame,
    size: int,
    sample_aspect_ratio: Fraction | None,
    reformatter: VideoReformatter | None = None,
) -> np.ndarray:
    """A decoded frame as the viewer sees it, as a (size, size, 3) uint8 RGB centre crop.

    The frame is first brought to its display geometry: non-square pixels are stretched to the
    display aspect ratio and the display-matrix rotation (phone videos) is applied, rounded to a
    quarter turn (mirroring is ignored). Then the short side is scaled to `size` and the centre
    cropped: this keeps shapes undistorted (a squashed object looks like another object) at the
    cost of the edges of wide frames, where the subject of a shot rarely is.

    `reformatter` keeps libswscale's context between calls; by default this thread's own.
    """
    sar = float(sample_aspect_ratio) if sample_aspect_ratio else 1.0
    display_w, display_h = frame.width * sar, float(frame.height)
    # frame.rotation: counter-clockwise degrees the frame must be turned for display.
    quarter_turns = round(frame.rotation / 90) % 4
    if quarter_turns % 2:
        display_w, display_h = display_h, display_w
    scale = size / min(display_w, display_h)
    out_w = max(size, round(display_w * scale))
    out_h = max(size, round(display_h * scale))
    # Scale before rotating (libswscale does the resampling), in the coded frame's orientation.
    coded_w, coded_h = (out_h, out_w) if quarter_turns % 2 else (out_w, out_h)
    # The frame's own colour range: phone video is often full range, most video limited. One
    # thread: ingestion runs one file per process, and slice threads would be started for each
    # new context on every core of the machine for a 128-pixel image.
    scaled = (reformatter or _shared_reformatter()).reformat(
        frame,
        width=coded_w,
        height=coded_h,
        format="rgb24",
        src_color_range=frame.color_range,
        threads=1,
    )
    rgb = scaled.to_ndarray()
    if quarter_turns:
        rgb = np.rot90(rgb, k=quarter_turns)
    top, left = (out_h - size) // 2, (out_w - size) // 2
    return np.ascontiguousarray(rgb[top : top + size, left : left + size])
