"""Throughput of `ava download` with one worker and with several, against a local server.

The server (tests/download_server.py) serves a tree in the release layout and adds a fixed
latency to every request, standing in for the round trip to S3; optionally it also paces every
64 KiB of body, which caps the speed of one connection as a remote server does. Each run
downloads the whole tree into a fresh folder, checks it byte for byte and reports wall time, MB/s
and files/s. Needs no GPU.

    python tools/bench_download.py                      # -j 1 and -j 8, 50 ms per request
    python tools/bench_download.py --workers 1 4 8 16 --latency 0.1 --connection-mbps 20
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from download_server import DownloadServer, remote_tree  # noqa: E402

from ava.data.download import run_download  # noqa: E402
from ava.data.http import RetryPolicy  # noqa: E402
from ava.data.ids import CaptureId  # noqa: E402

CAPTURES = [CaptureId.parse("20230324--0820--AEY864"), CaptureId.parse("20230405--1635--AAN112")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8], help="worker counts to compare")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every request")
    parser.add_argument("--cameras", type=int, default=8, help="cameras per capture (per-camera zips)")
    parser.add_argument("--file-kb", type=int, default=1000, help="mean file size in kB")
    parser.add_argument(
        "--connection-mbps", type=float, default=0.0, help="cap per connection in MB/s (0: no cap)"
    )
    args = parser.parse_args()

    from rich.console import Console

    camera_ids = [str(400000 + 7 * index) for index in range(args.cameras)]
    from ava.data.release import ASSET_GROUPS, EXTRA_GROUPS, NAMED_ONLY

    # The original's groups, as benchmarked in BENCHMARKS.md (the extra groups are a few small files).
    groups = [group for group in ASSET_GROUPS if group not in EXTRA_GROUPS and group not in NAMED_ONLY]
    files = remote_tree(CAPTURES, camera_ids, file_bytes=args.file_kb * 1000, groups=groups)
    total_bytes = sum(map(len, files.values()))
    quiet = Console(file=io.StringIO())
    print(
        f"{len(files)} files, {total_bytes / 1e6:.1f} MB; latency {args.latency * 1000:.0f} ms per request; "
        f"connection cap {args.connection_mbps or 'none'} MB/s"
    )
    print(f"{'workers':>8} {'seconds':>8} {'MB/s':>8} {'files/s':>8}")
    with DownloadServer(files) as server:
        server.faults.seconds_per_request = args.latency
        if args.connection_mbps:
            server.faults.seconds_per_chunk = (1 << 16) / (args.connection_mbps * 1e6)
        for workers in args.workers:
            with tempfile.TemporaryDirectory() as folder:
                out = Path(folder)
                started = time.perf_counter()
                status = run_download(
                    output_dir=out,
                    ids=[capture.folder for capture in CAPTURES],
                    assets=groups,
                    workers=workers,
                    base_url=server.base_url,
                    policy=RetryPolicy(base_delay=0.1),
                    console=quiet,
                )
                seconds = time.perf_counter() - started
                if status != 0:
                    raise SystemExit(f"download failed:\n{quiet.file.getvalue()}")
                for url_path, body in files.items():
                    if out.joinpath(*url_path.split("/")[2:]).read_bytes() != body:
                        raise SystemExit(f"{url_path} differs from the server's copy")
            print(f"{workers:>8} {seconds:>8.2f} {total_bytes / 1e6 / seconds:>8.1f} {len(files) / seconds:>8.1f}")


if __name__ == "__main__":
    main()
