"""`ava download` end to end against a local server with injected faults.

Every test checks the files byte for byte against what the server holds, the exit status and the
summary, and that no `.part` file is left behind where the file completed.
"""

from __future__ import annotations

import hashlib
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from download_server import DownloadServer, Faults, remote_tree  # noqa: E402

from ava.cli import main as ava_main  # noqa: E402
from ava.data import release  # noqa: E402
from ava.data.ids import CaptureId, format_ids_csv  # noqa: E402

CAPTURES = [CaptureId.parse("20230324--0820--AEY864"), CaptureId.parse("20230405--1635--AAN112")]
CAMERAS = ["401031", "400940", "400100"]  # deliberately unsorted in the calibration file
FILES_PER_CAPTURE = 26  # all: 1+1+1+3+1+3+3+3+6 files with 3 cameras, +1+1+2 of the extra groups
# (foreground_masks is not in all), and one release-wide checkpoint: 53 files for 2 captures
AEY = "/4TB/20230324--0820--AEY864"
AAN = "/4TB/20230405--1635--AAN112"


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch, tmp_path):
    for name in (release.ENV_BASE_URL, release.ENV_IDS_CSV_URL):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(release.ENV_CACHE_DIR, str(tmp_path / "cache"))
    # rich wraps at 80 columns without a terminal; a wide console keeps every message on one line.
    monkeypatch.setenv("COLUMNS", "400")


@pytest.fixture
def tree():
    files = remote_tree(CAPTURES, CAMERAS, groups=release.select_groups(["all"], "4TB").groups)
    # One larger file (several 64 KiB chunks) for the faults that cut a transfer in the middle.
    files[f"{AEY}/decoder/uv_image/color.zip"] = bytes(range(256)) * 1200
    return files


@pytest.fixture
def server(tree):
    with DownloadServer(dict(tree)) as running:
        yield running


@pytest.fixture
def ids_csv(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text(format_ids_csv(CAPTURES))
    return path


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        ava_main(["download", *args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def download(capsys, server, out, ids_csv, *extra: str) -> tuple[int, str, str]:
    args = ["-o", str(out), "--captures-file", str(ids_csv), "-n", "2", "--base-url", server.base_url]
    return run(capsys, *args, "--retry-base-delay", "0.01", "--timeout", "10", *extra)


def local(out: Path, url_path: str) -> Path:
    """/4TB/<capture>/decoder/x -> OUT/<capture>/decoder/x (no size tier locally)."""
    return out.joinpath(*url_path.split("/")[2:])


def assert_mirrors(out: Path, files: dict[str, bytes], missing: set[str] = frozenset()) -> None:
    for url_path, body in files.items():
        if url_path in missing:
            assert not local(out, url_path).exists()
        else:
            assert local(out, url_path).read_bytes() == body, url_path
    assert not [path for path in out.rglob("*.part") if path.with_suffix("").name not in missing]


def test_fresh_download_then_rerun_skips_everything(capsys, server, tree, ids_csv, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = download(capsys, server, out, ids_csv)
    assert code == 0
    assert_mirrors(out, tree)
    assert "downloaded 53, skipped 0, failed 0 files" in stdout
    assert "download summary" in stdout
    # Per-camera zips follow the sorted camera ids of each capture's calibration.
    assert sorted(p.name for p in (out / CAPTURES[0].folder / "decoder" / "image").iterdir()) == [
        "cam400100.zip",
        "cam400940.zip",
        "cam401031.zip",
    ]
    gets_before = len([entry for entry in server.log if entry.method == "GET"])

    code, stdout, _ = download(capsys, server, out, ids_csv)
    assert code == 0
    assert "downloaded 0, skipped 53, failed 0 files" in stdout
    assert_mirrors(out, tree)
    gets_after = len([entry for entry in server.log if entry.method == "GET"])
    assert gets_after - gets_before == len(CAPTURES)  # only the calibrations, for the camera lists


def test_connection_dropped_mid_body_resumes_with_range(capsys, server, tree, ids_csv, tmp_path):
    path = f"{AEY}/decoder/uv_image/color.zip"
    server.faults.drop_first.add(path)
    out = tmp_path / "out"
    code, stdout, _ = download(capsys, server, out, ids_csv)
    assert code == 0
    assert_mirrors(out, tree)
    first, second = server.requests_for(path)
    assert (first.range, first.status) == (None, 200)
    assert second.status == 206 and second.range.startswith("bytes=")
    assert 0 < int(second.range[len("bytes=") : -1]) < len(tree[path])
    assert "failed 0 files" in stdout


def test_server_errors_and_throttling_are_retried(capsys, server, tree, ids_csv, tmp_path):
    statuses = {f"{AEY}/decoder/frame_list.csv": [500], f"{AAN}/encoder/frame_list.csv": [429], f"{AAN}/decoder/image/cam400940.zip": [503, 502]}
    server.faults.status_first.update(statuses)
    out = tmp_path / "out"
    code, stdout, _ = download(capsys, server, out, ids_csv)
    assert code == 0, stdout
    assert_mirrors(out, tree)
    for path, errors in statuses.items():
        assert [entry.status for entry in server.requests_for(path)] == [*errors, 200]


def test_missing_and_forbidden_files_fail_once_with_a_line_per_group(capsys, server, tree, ids_csv, tmp_path):
    missing = f"{AAN}/decoder/image/cam401031.zip"
    forbidden = f"{AEY}/decoder/keypoints_3d/keypoints_3d.zip"
    del server.files[missing]
    server.faults.forbidden.add(forbidden)
    out = tmp_path / "out"
    code, stdout, _ = download(capsys, server, out, ids_csv)
    assert code == 1
    assert_mirrors(out, tree, missing={missing, forbidden})
    assert len(server.requests_for(missing)) == 1 and len(server.requests_for(forbidden)) == 1
    assert "downloaded 51, skipped 0, failed 2 files" in stdout
    assert f"image: 1 failed: 404 Not Found x1 (e.g. {missing[5:]})" in stdout
    assert "keypoints_3d: 1 failed: 403 Forbidden x1" in stdout
    # The rerun fetches only what failed, and fails the same way.
    code, stdout, _ = download(capsys, server, out, ids_csv)
    assert code == 1
    assert "downloaded 0, skipped 51, failed 2 files" in stdout


def test_missing_calibration_fails_the_per_camera_groups_of_that_capture(capsys, server, tree, ids_csv, tmp_path):
    calibration = f"{AAN}/decoder/camera_calibration.json"
    del server.files[calibration]
    out = tmp_path / "out"
    code, stdout, _ = download(capsys, server, out, ids_csv)
    assert code == 1
    assert "image: 1 failed: camera list unavailable: 404 Not Found x1" in stdout
    assert "segmentation_parts: 1 failed: camera list unavailable" in stdout
    assert "camera_calibration: 1 failed: 404 Not Found" in stdout
    untouched = {path for path in tree if path.startswith(AAN) and "cam4" in path} | {calibration}
    assert_mirrors(out, tree, missing=untouched)


def test_partial_file_resumes_with_range(capsys, server, tree, ids_csv, tmp_path):
    path = f"{AEY}/decoder/uv_image/color.zip"
    out = tmp_path / "out"
    part = local(out, path).with_name("color.zip.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(tree[path][:100_000])
    code, stdout, _ = download(capsys, server, out, ids_csv, "--assets", "uv_image")
    assert code == 0
    assert_mirrors(out, {p: b for p, b in tree.items() if "/uv_image/" in p})
    [request] = server.requests_for(path)
    assert (request.range, request.status) == ("bytes=100000-", 206)


def test_server_ignoring_range_restarts_the_file(capsys, server, tree, ids_csv, tmp_path):
    server.faults.ignore_range = True
    path = f"{AEY}/decoder/uv_image/color.zip"
    out = tmp_path / "out"
    part = local(out, path).with_name("color.zip.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\x00" * 5000)  # not even the right prefix: appending would corrupt the file
    code, _, _ = download(capsys, server, out, ids_csv, "--assets", "uv_image")
    assert code == 0
    assert local(out, path).read_bytes() == tree[path]
    [request] = server.requests_for(path)
    assert (request.range, request.status) == ("bytes=5000-", 200)


def test_stale_part_longer_than_the_file_is_replaced(capsys, server, tree, ids_csv, tmp_path):
    path = f"{AEY}/decoder/frame_list.csv"
    out = tmp_path / "out"
    part = local(out, path).with_name("frame_list.csv.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(tree[path] + b"left over from an older release")
    code, stdout, _ = download(capsys, server, out, ids_csv, "--assets", "frame_list")
    assert code == 0, stdout
    assert local(out, path).read_bytes() == tree[path]
    assert not part.exists()
    assert [entry.status for entry in server.requests_for(path)] == [416, 200]


def test_complete_part_is_verified_and_moved_into_place(capsys, server, tree, ids_csv, tmp_path):
    path = f"{AEY}/decoder/frame_list.csv"
    out = tmp_path / "out"
    part = local(out, path).with_name("frame_list.csv.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(tree[path])
    code, _, _ = download(capsys, server, out, ids_csv, "--assets", "frame_list")
    assert code == 0
    assert local(out, path).read_bytes() == tree[path] and not part.exists()


def test_complete_file_of_the_wrong_size_is_fetched_again(capsys, server, tree, ids_csv, tmp_path):
    path = f"{AAN}/decoder/head_pose/head_pose.zip"
    out = tmp_path / "out"
    local(out, path).parent.mkdir(parents=True)
    local(out, path).write_bytes(tree[path][:-10])
    code, stdout, _ = download(capsys, server, out, ids_csv, "--assets", "head_pose")
    assert code == 0
    assert "downloaded 2, skipped 0, failed 0 files" in stdout
    assert local(out, path).read_bytes() == tree[path]


def test_slow_first_answer_times_out_and_is_retried(capsys, server, tree, ids_csv, tmp_path):
    path = f"{AAN}/decoder/frame_list.csv"
    server.faults.stall_first[path] = 1.5
    server.faults.seconds_per_chunk = 0.01  # every transfer slow, but each piece within the timeout
    out = tmp_path / "out"
    code, _, _ = download(capsys, server, out, ids_csv, "--assets", "frame_list", "uv_image", "--timeout", "0.5")
    assert code == 0
    assert_mirrors(out, {p: b for p, b in tree.items() if "/frame_list.csv" in p and "/decoder/" in p or "/uv_image/" in p})
    assert server.get_count(path) >= 2  # the stalled GET, then the retry that succeeded


def test_corrupted_body_fails_the_md5_check_and_is_fetched_again(capsys, server, tree, ids_csv, tmp_path):
    path = f"{AEY}/decoder/uv_image/color.zip"
    server.faults.corrupt_first.add(path)
    out = tmp_path / "out"
    code, _, _ = download(capsys, server, out, ids_csv, "--assets", "uv_image")
    assert code == 0
    assert local(out, path).read_bytes() == tree[path]
    assert len(server.requests_for(path)) == 2


def test_md5_failure_without_retries_leaves_no_file(capsys, server, tree, ids_csv, tmp_path):
    path = f"{AEY}/decoder/uv_image/color.zip"
    server.faults.corrupt_first.add(path)
    out = tmp_path / "out"
    code, stdout, _ = download(capsys, server, out, ids_csv, "--assets", "uv_image", "--retries", "0")
    assert code == 1
    assert "uv_image: 1 failed: MD5 does not match the server's ETag x1" in stdout
    assert not local(out, path).exists() and not local(out, path).with_name("color.zip.part").exists()


def test_multipart_etags_are_not_taken_for_md5(capsys, server, tree, ids_csv, tmp_path):
    server.faults.multipart_etag = True
    out = tmp_path / "out"
    code, _, _ = download(capsys, server, out, ids_csv, "--assets", "uv_image", "encoder")
    assert code == 0
    assert_mirrors(out, {p: b for p, b in tree.items() if "/uv_image/" in p or "/encoder/" in p and "/encodings_" not in p})


def test_dry_run_lists_sizes_and_writes_nothing(capsys, server, tree, ids_csv, tmp_path):
    del server.files[f"{AAN}/decoder/image/cam400100.zip"]
    out = tmp_path / "out"
    code, stdout, _ = download(capsys, server, out, ids_csv, "--assets", "image", "--dry-run")
    assert code == 1  # a file the server does not have is reported as a failure
    assert not out.exists()
    assert all(entry.method == "HEAD" for entry in server.log if "/image/" in entry.path)
    assert f"{CAPTURES[0].folder}/decoder/image/cam400940.zip" in stdout
    assert "(unavailable: 404 Not Found)" in stdout
    available = sum(len(b) for p, b in tree.items() if "/decoder/image/" in p) - len(tree[f"{AAN}/decoder/image/cam400100.zip"])
    from rich.filesize import decimal

    assert f"dry run: 5 of 6 files available, {decimal(available)} in total, {decimal(available)} to fetch" in stdout


def test_size_tier_and_base_url_from_the_environment(capsys, tree, ids_csv, tmp_path, monkeypatch):
    files = {path.replace("/4TB/", "/8TB/"): body for path, body in tree.items()}
    with DownloadServer(files) as server:
        monkeypatch.setenv(release.ENV_BASE_URL, server.base_url)
        out = tmp_path / "out"
        args = ["-o", str(out), "--captures-file", str(ids_csv), "-n", "1", "-s", "8TB", "--assets", "head_pose"]
        code, _, _ = run(capsys, *args)
        assert code == 0
        assert local(out, f"{AEY}/decoder/head_pose/head_pose.zip").read_bytes() == tree[f"{AEY}/decoder/head_pose/head_pose.zip"]
        assert {entry.path.split("/")[1] for entry in server.log} == {"8TB"}


def test_capture_list_is_fetched_once_checked_and_cached(capsys, server, tree, tmp_path, monkeypatch):
    listing = format_ids_csv(list(reversed(CAPTURES))).encode()
    server.files["/lists/256_ids.csv"] = listing
    monkeypatch.setenv(release.ENV_IDS_CSV_URL, server.base_url + "/lists/256_ids.csv")
    out = tmp_path / "out"
    args = ["-o", str(out), "--base-url", server.base_url, "--assets", "head_pose", "--retry-base-delay", "0"]

    # The pinned hash is that of the original list: a list with other contents is refused.
    code, _, stderr = run(capsys, *args, "-n", "1")
    assert code == 2
    assert f"SHA-256 {hashlib.sha256(listing).hexdigest()}, expected {release.IDS_CSV_SHA256}" in stderr
    assert not (tmp_path / "cache" / "256_ids.csv").exists()

    monkeypatch.setattr(release, "IDS_CSV_SHA256", hashlib.sha256(listing).hexdigest())
    code, _, _ = run(capsys, *args, "-n", "1")
    assert code == 0
    assert (tmp_path / "cache" / "256_ids.csv").read_bytes() == listing
    assert local(out, f"{AAN}/decoder/head_pose/head_pose.zip").exists()  # first row of this list
    code, _, _ = run(capsys, *args, "--ids", "AEY864")
    assert code == 0
    assert len(server.requests_for("/lists/256_ids.csv")) == 2  # the refused fetch, then one for good
    assert local(out, f"{AEY}/decoder/head_pose/head_pose.zip").read_bytes() == tree[f"{AEY}/decoder/head_pose/head_pose.zip"]


def test_full_capture_ids_need_no_list(capsys, server, tree, tmp_path):
    out = tmp_path / "out"
    args = ["-o", str(out), "--base-url", server.base_url, "--ids", CAPTURES[1].folder, "--assets", "kinematic_tracking"]
    code, stdout, _ = run(capsys, *args)
    assert code == 0
    assert "downloaded 3, skipped 0, failed 0 files" in stdout
    assert not (out / CAPTURES[0].folder).exists()
    assert_mirrors(out, {p: b for p, b in tree.items() if p.startswith(AAN) and "/kinematic_tracking/" in p})


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--assets", "image", "pictures"], "unknown asset group 'pictures'"),
        (["-n", "3"], "-n 3 asks for more captures than the 2"),
        (["--ids", "AEY-864"], "neither a capture id"),
        (["--ids", "20230324--0820--aey864"], "is not a capture id"),
        (["-s", "64TB"], "unknown size '64TB'"),
        (["-j", "0"], "at least 1"),
        (["--base-url", "s3://bucket"], "not an http"),
        (["--base-url", "UNREACHABLE"], "cannot reach http://127.0.0.1:"),
        (["-o", "UNWRITABLE"], "cannot write to output folder"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, server, ids_csv, tmp_path, flags, message):
    (tmp_path / "a-file").write_text("not a folder")
    flags = [
        {"UNREACHABLE": _closed_port_url(), "UNWRITABLE": str(tmp_path / "a-file" / "out")}.get(flag, flag)
        for flag in flags
    ]
    defaults = {"-o": str(tmp_path / "out"), "--captures-file": str(ids_csv), "--base-url": server.base_url}
    args = [item for key, value in defaults.items() if key not in flags for item in (key, value)]
    if "--ids" not in flags and "-n" not in flags:
        args += ["-n", "2"]
    code, stdout, stderr = run(capsys, *args, *flags, "--retry-base-delay", "0")
    assert code == 2
    assert stderr.strip().count("\n") == 0 and message in stderr
    assert "Traceback" not in stderr + stdout


def test_gzip_content_encoding_is_kept_as_stored_for_sizes_ranges_and_md5(capsys, tree, ids_csv, tmp_path):
    import gzip
    import random

    # S3 labels objects uploaded with a content encoding whatever the client asks; sizes, Range
    # offsets and the ETag's MD5 all refer to the stored (gzip) bytes, which are what lands on disk.
    big = f"{AEY}/decoder/uv_image/color.zip"
    tree[big] = gzip.compress(random.Random(1).randbytes(250_000) + bytes(50_000))
    assert len(tree[big]) > 3 * (1 << 16)  # several chunks, so the dropped transfer resumes part-way
    encoded = {big, f"{AAN}/decoder/camera_calibration.json", f"{AEY}/decoder/frame_list.csv"}
    for path in encoded - {big}:
        tree[path] = gzip.compress(tree[path])
    out = tmp_path / "out"
    part = local(out, f"{AEY}/decoder/frame_list.csv").with_name("frame_list.csv.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(tree[f"{AEY}/decoder/frame_list.csv"][:10])  # a resumed Range into gzip bytes
    faults = Faults(drop_first={big}, content_encoding={path: "gzip" for path in encoded})
    with DownloadServer(dict(tree), faults) as server:
        code, stdout, _ = download(capsys, server, out, ids_csv)
        assert code == 0, stdout
        assert "failed 0 files" in stdout
        assert_mirrors(out, tree)  # byte for byte the stored gzip data, the camera list decoded for planning
        first, second = server.requests_for(big)
        assert (first.status, second.status) == (200, 206)
        assert 0 < int(second.range[len("bytes="):-1]) < len(tree[big])
        [resumed] = server.requests_for(f"{AEY}/decoder/frame_list.csv")
        assert (resumed.range, resumed.status) == ("bytes=10-", 206)
        code, stdout, _ = download(capsys, server, out, ids_csv)
        assert code == 0 and "downloaded 0, skipped 53, failed 0 files" in stdout


def test_a_body_that_is_not_what_its_content_encoding_says_is_named(capsys, server, tree, ids_csv, tmp_path):
    calibration = f"{AAN}/decoder/camera_calibration.json"
    server.faults.content_encoding[calibration] = "gzip"  # but the stored bytes are plain JSON
    out = tmp_path / "out"
    code, stdout, _ = download(capsys, server, out, ids_csv, "--retries", "1")
    assert code == 1
    assert ("camera list unavailable: body is not valid gzip data although the server sent "
            "Content-Encoding gzip") in stdout
    assert "connection failed" not in stdout
    assert local(out, calibration).read_bytes() == tree[calibration]  # the file itself is stored as is


# --- servers that send no Content-Length (chunked transfer, as some mirrors and proxies do) -----

def test_chunked_answers_are_downloaded_and_checked_by_the_etag_md5(capsys, server, tree, ids_csv, tmp_path):
    """No Content-Length anywhere (HEAD included); the body of the large file is cut once in the
    middle (its last chunk missing) and resumed with Range; one body is corrupted once and fails
    its MD5. A rerun skips the files by their MD5."""
    big = f"{AEY}/decoder/uv_image/color.zip"
    corrupted = f"{AAN}/decoder/uv_image/color.zip"
    server.faults.chunked.update(tree)
    server.faults.drop_first.add(big)
    server.faults.corrupt_first.add(corrupted)
    out = tmp_path / "out"
    code, stdout, _ = download(capsys, server, out, ids_csv)
    assert code == 0, stdout
    assert_mirrors(out, tree)
    assert f"downloaded {len(tree)}, skipped 0, failed 0 files;" in stdout and "unverified" not in stdout
    first, second = server.requests_for(big)
    assert (first.status, second.status) == (200, 206)
    assert 0 < int(second.range[len("bytes="):-1]) < len(tree[big])
    assert len(server.requests_for(corrupted)) == 2
    code, stdout, _ = download(capsys, server, out, ids_csv)
    assert code == 0 and f"downloaded 0, skipped {len(tree)}, failed 0 files" in stdout


def test_chunked_answers_without_an_md5_are_accepted_and_the_summary_says_so(capsys, server, tree, ids_csv, tmp_path):
    """No size and a multipart ETag: nothing to check a file against. A body cut in the middle is
    still noticed (its last chunk is missing) and resumed, even with a Content-Range that gives
    no total (`bytes N-M/*`)."""
    big = f"{AEY}/decoder/uv_image/color.zip"
    server.faults.chunked.update(path for path in tree if "/uv_image/" in path)
    server.faults.multipart_etag = server.faults.unknown_total = True
    server.faults.drop_first.add(big)
    out = tmp_path / "out"
    code, stdout, _ = download(capsys, server, out, ids_csv, "--assets", "uv_image", "frame_list")
    assert code == 0, stdout
    assert_mirrors(out, {p: b for p, b in tree.items() if "/uv_image/" in p or "/decoder/frame_list.csv" in p})
    assert "downloaded 8, skipped 0, failed 0 files (6 of the downloaded unverified)" in stdout
    assert ("uv_image: 6 accepted unverified: the server sent neither their size (Content-Length) nor an MD5 (ETag) "
            "(e.g. ") in stdout
    assert "frame_list: " not in stdout  # those came with a Content-Length
    assert [entry.status for entry in server.requests_for(big)] == [200, 206]


def test_dry_run_of_chunked_answers_says_the_size_is_unknown(capsys, server, tree, ids_csv, tmp_path):
    server.faults.chunked.update(path for path in tree if "/head_pose/" in path)
    code, stdout, _ = download(capsys, server, tmp_path / "out", ids_csv, "--assets", "head_pose", "frame_list",
                               "--dry-run")
    assert code == 0, stdout
    assert stdout.count("size ?") == 2
    assert "(and 2 files whose size the server does not say)" in stdout
