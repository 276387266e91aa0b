"""Ctrl-C during `ava download`: a prompt stop, exit status 130, `.part` files kept and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from download_server import DownloadServer, remote_tree  # noqa: E402

from ava.cli import main as ava_main  # noqa: E402
from ava.data.ids import CaptureId  # noqa: E402

CAPTURE = CaptureId.parse("20230324--0820--AEY864")
# `python -m ava` as a terminal starts it. Under `nohup` or `&` in a script SIGINT is ignored, an
# ignored signal stays ignored across exec, and Python then never raises KeyboardInterrupt; so the
# child puts Python's own SIGINT handler back itself (a preexec_fn would be unsafe beside the
# server's threads).
AVA_WITH_CTRL_C = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                   "runpy.run_module('ava', run_name='__main__', alter_sys=True)")


def _wait_for_bytes(part: Path, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        if part.exists() and part.stat().st_size > 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"no partial file appeared (exit status {process.poll()})")


def test_ctrl_c_keeps_partial_files_and_the_rerun_resumes_them(tmp_path, capsys):
    files = remote_tree([CAPTURE], ["400940"])
    big = f"/4TB/{CAPTURE.folder}/decoder/uv_image/color.zip"
    files[big] = os.urandom(4 << 20)  # 64 chunks at 50 ms each: seconds of transfer to interrupt
    out = tmp_path / "out"
    part = out / CAPTURE.folder / "decoder" / "uv_image" / "color.zip.part"
    with DownloadServer(dict(files)) as server:
        server.faults.seconds_per_chunk = 0.05
        args = ["download", "-o", str(out), "--ids", CAPTURE.folder, "--assets", "uv_image", "--base-url", server.base_url]
        environment = dict(os.environ, COLUMNS="400")
        process = subprocess.Popen(
            [sys.executable, "-c", AVA_WITH_CTRL_C, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment
        )
        try:
            _wait_for_bytes(part, process, seconds=30)
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=10)
        finally:
            process.kill()
        assert process.returncode == 130, stderr.decode()
        assert "interrupted" in stderr.decode()
        assert "partial files kept" in stdout.decode()
        kept = part.stat().st_size
        assert 0 < kept < len(files[big])
        assert part.read_bytes() == files[big][:kept]
        assert not part.with_suffix("").exists()

        server.faults.seconds_per_chunk = 0.0
        with pytest.raises(SystemExit) as exit_info:
            ava_main([*args, "--retry-base-delay", "0"])
        assert exit_info.value.code == 0
        assert part.with_suffix("").read_bytes() == files[big]
        assert not part.exists()
        ranges = [entry.range for entry in server.requests_for(big)]
        assert ranges[-1] == f"bytes={kept}-"
