"""Headless Chromium for tests: open a page and take screenshots over the DevTools protocol.

Chromium is Debian's `chromium` package (not a downloaded browser build). WebGL, which viser's page
needs, runs on SwiftShader (software), so no GPU or display is needed.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class HeadlessPage:
    """One Chromium page showing `url`; `screenshot()` returns PNG bytes. A context manager: the
    browser and its profile folder are removed on exit."""

    def __init__(self, url: str, width: int = 1280, height: int = 800, timeout: float = 60.0) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="ava-chromium-"))
        executable = chromium_path()
        if executable is None:
            raise FileNotFoundError("no chromium executable on PATH")
        self.process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--use-angle=swiftshader",
             "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist", f"--window-size={width},{height}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._ids = itertools.count(1)
        self.socket = None
        try:
            self.socket = self._connect(timeout)
            # The window's size includes the browser's own bars; fix the page's viewport instead.
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise

    def _connect(self, timeout: float):
        from websockets.sync.client import connect

        deadline = time.monotonic() + timeout
        port_file = self.profile / "DevToolsActivePort"
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        while True:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            pages = [target for target in targets if target.get("type") == "page"]
            if pages:
                return connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout)
            if time.monotonic() > deadline:
                raise RuntimeError("chromium opened no page")
            time.sleep(0.1)

    def call(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        """Sends one DevTools command and returns its result (events are skipped)."""
        identifier = next(self._ids)
        self.socket.send(json.dumps({"id": identifier, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == identifier:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "HeadlessPage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def environment_has_chromium() -> bool:
    return chromium_path() is not None and os.name == "posix"
