"""A minimal stand-in for viser's browser client, for tests: it connects to the viewer's websocket,
reports a camera as the browser does (`ViewerCameraMessage`) and decodes the frames the server
sends back (`BackgroundImageMessage`).

viser's wire format, as its server documents it (`viser.infra._infra._message_producer`): each
websocket message is [8 bytes: msgpack length][8 bytes: compressed length][zstd-compressed msgpack
{"messages": [...], "binaryBufferLengths": [...]}] then the binary buffers, each 8-byte aligned;
a message field holding bytes may be a placeholder {"__binary_index": i, ...} into those buffers.
The browser sends plain msgpack dicts with a "type" key.
"""

from __future__ import annotations

import io
import time

import numpy as np


def _buffers(data: bytes, start: int, lengths: list[int]) -> list[bytes]:
    buffers, offset = [], start
    for length in lengths:
        offset += (8 - offset % 8) % 8
        buffers.append(data[offset: offset + length])
        offset += length
    return buffers


def decode_frame_messages(data: bytes) -> list[dict]:
    """The messages in one server -> browser websocket message, binary placeholders resolved."""
    import msgspec
    import zstandard

    plain_length = int.from_bytes(data[:8], "little")
    compressed_length = int.from_bytes(data[8:16], "little")
    payload = msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(data[16: 16 + compressed_length],
                                                                              max_output_size=plain_length))
    buffers = _buffers(data, 16 + compressed_length, payload.get("binaryBufferLengths", []))

    def resolve(value):
        if isinstance(value, dict) and "__binary_index" in value:
            return buffers[value["__binary_index"]]
        return value

    return [{key: resolve(value) for key, value in message.items()} for message in payload["messages"]]


def camera_message(wxyz, position, fov: float, width: int, height: int, look_at, up) -> bytes:
    import msgspec

    return msgspec.msgpack.encode({
        "type": "ViewerCameraMessage", "wxyz": [float(v) for v in wxyz], "position": [float(v) for v in position],
        "fov": float(fov), "near": 0.01, "far": 1000.0, "image_height": int(height), "image_width": int(width),
        "look_at": [float(v) for v in look_at], "up_direction": [float(v) for v in up],
    })


def receive_frame(url: str, camera: bytes, timeout: float = 60.0, frames: int = 1,
                  until=None, headers: dict | None = None) -> list[np.ndarray]:
    """Connects to the viewer at `url` (http://host:port), sends `camera` and returns the first
    `frames` background images it sends back (uint8 [H,W,3]); with `until` (image -> bool), the
    images up to and including the first for which it holds (a viewer first sends a half-size
    preview while the camera has just moved, then the full frame). `headers` go with the handshake
    (a cookie, as a browser sends it)."""
    import viser
    from PIL import Image
    from websockets.sync.client import connect

    images: list[np.ndarray] = []
    deadline = time.monotonic() + timeout
    with connect(url.split("?")[0].replace("http://", "ws://"), subprotocols=[f"viser-v{viser.__version__}"],
                 max_size=None, open_timeout=timeout, additional_headers=headers) as socket:
        socket.send(camera)
        while (len(images) < frames) if until is None else not (images and until(images[-1])):
            data = socket.recv(timeout=max(0.1, deadline - time.monotonic()))
            for message in decode_frame_messages(data):
                if message.get("type") == "BackgroundImageMessage" and message.get("rgb_data"):
                    images.append(np.asarray(Image.open(io.BytesIO(message["rgb_data"])).convert("RGB")))
    return images
