"""MP4 writing with PyAV (which ships its own FFmpeg): H.264 where available, else MPEG-4 part 2.

Frames go to `<name>.partial.mp4` next to the destination, which is renamed into place when the
video is closed, so an interrupted render never leaves a truncated file under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

PREFERRED_CODECS = ("libx264", "h264", "mpeg4")


def _codec() -> str:
    import av

    for codec in PREFERRED_CODECS:
        if codec in av.codecs_available:
            return codec
    raise RuntimeError(f"this PyAV build has none of the video encoders {PREFERRED_CODECS}")


class VideoWriter:
    """Collects uint8 [H,W,3] frames (all the same size) into an MP4 at `fps`.

    H.264 with yuv420p needs even sizes, so frames are padded by one black row/column if needed.
    Use as a context manager; `close()` finishes the file and moves it into place.
    """

    def __init__(self, path: str | Path, fps: int = 15) -> None:
        self.path = Path(path)
        self.fps = int(fps)
        self.temporary = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix or '.mp4'}")
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def _open(self, height: int, width: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.temporary), mode="w", format="mp4")
        codec = _codec()
        self._stream = self._container.add_stream(codec, rate=self.fps)
        self._stream.width = width + width % 2
        self._stream.height = height + height % 2
        self._stream.pix_fmt = "yuv420p"
        if codec in ("libx264", "h264"):
            self._stream.options = {"crf": "18", "preset": "medium"}
        else:
            self._stream.bit_rate = 4_000_000
        self._size = (height, width)

    def write(self, frame: np.ndarray) -> None:
        """Appends one uint8 [H,W,3] RGB frame."""
        import av

        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"video frames must be uint8 [H,W,3], got {frame.dtype} {list(frame.shape)}")
        if self._container is None:
            self._open(frame.shape[0], frame.shape[1])
        if frame.shape[:2] != self._size:
            raise ValueError(f"frame of size {frame.shape[:2]} in a video of size {self._size}")
        frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)))
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        """Flushes the encoder and moves the file into place; returns its path."""
        if self._container is None:
            raise ValueError(f"no frames were written to {self.path}")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        with open(self.temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self.temporary, self.path)
        return self.path

    def abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is being thrown away anyway
                pass
            self._container = None
        self.temporary.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def read_video_frames(path: str | Path) -> list[np.ndarray]:
    """Decodes every frame of a video as uint8 [H,W,3] (for checks and tests)."""
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
