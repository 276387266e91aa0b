"""`ava download` of the groups only the original's unmerged branches describe: foreground masks,
background images, expression codes, headset encodings and the release-wide checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from download_server import DownloadServer, remote_tree  # noqa: E402
from test_download import AAN, AEY, CAMERAS, CAPTURES, assert_mirrors, download, isolated_environment, local, run  # noqa: E402,F401

from ava.data import release  # noqa: E402
from ava.data.ids import format_ids_csv  # noqa: E402

ORIGINAL_GROUPS = [group for group in release.ASSET_GROUPS if group not in release.EXTRA_GROUPS]
CHECKPOINT = f"/4TB/{release.RELEASED_DECODER}"


@pytest.fixture
def ids_csv(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text(format_ids_csv(CAPTURES))
    return path


def test_all_at_each_tier():
    at_4tb = release.select_groups(["all"], "4TB")
    assert at_4tb.groups == [group for group in release.ASSET_GROUPS if group not in ("foreground_masks", "statistics")]
    assert any("foreground_masks" in note for note in at_4tb.notes)
    at_8tb = release.select_groups(["all"], "8TB")
    assert not set(release.ONLY_4TB) & set(at_8tb.groups)
    assert {"encodings", "checkpoints"} <= set(at_8tb.groups)
    assert any("left out at 8TB: background_image, expression_codes" in note for note in at_8tb.notes)
    # Named groups are fetched at any tier: the datasheet may be out of date.
    named = release.select_groups(["all", "expression_codes", "foreground_masks"], "16TB")
    assert {"expression_codes", "foreground_masks"} <= set(named.groups)
    assert named.named == {"expression_codes", "foreground_masks"}


def test_the_extra_groups_land_in_the_release_layout(capsys, ids_csv, tmp_path):
    tree = remote_tree(CAPTURES, CAMERAS)
    with DownloadServer(dict(tree)) as server:
        server.faults.drop_first.add(CHECKPOINT)  # the checkpoint resumes like any file
        out = tmp_path / "out"
        code, stdout, _ = download(capsys, server, out, ids_csv, "--assets", *release.EXTRA_GROUPS)
        assert code == 0, stdout
        wanted = {path: body for path, body in tree.items()
                  if any(part in path for part in ("/foreground_masks/", "/background_image/", "/expression_codes/",
                                                   "/encodings_", "/checkpoints/"))}
        assert len(wanted) == 2 * (3 + 1 + 1 + 2) + 1
        assert_mirrors(out, wanted)
        assert (out / "checkpoints" / "decoder" / "aeparams_1440000.pt").read_bytes() == tree[CHECKPOINT]
        assert (out / CAPTURES[0].folder / "decoder" / "foreground_masks" / "cam400100.zip").is_file()
        assert [entry.status for entry in server.requests_for(CHECKPOINT)] == [200, 206]
        assert "downloaded 15, skipped 0, failed 0 files" in stdout


def test_statistics_are_the_small_files_convert_needs_fetched_once(capsys, ids_csv, tmp_path):
    tree = remote_tree(CAPTURES, CAMERAS)
    with DownloadServer(dict(tree)) as server:
        out = tmp_path / "out"
        code, stdout, _ = download(capsys, server, out, ids_csv, "--assets", "statistics", "camera_calibration")
        assert code == 0, stdout
        wanted = {path: body for path, body in tree.items() if path.endswith(("_mean.png", "_mean.npy", "variance.txt",
                                                                              "camera_calibration.json"))}
        assert len(wanted) == 2 * 5
        assert_mirrors(out, wanted)
        assert not list(out.rglob("*.zip"))
        # With uv_image too, the files both groups hold are fetched once (counted under uv_image).
        code, stdout, _ = download(capsys, server, out, ids_csv, "--assets", "uv_image", "statistics")
        assert code == 0 and "downloaded 2, skipped 8, failed 0 files" in stdout
        assert len(server.requests_for(f"{AEY}/decoder/uv_image/color_mean.png", "HEAD")) == 1


def test_a_server_without_the_extra_groups_still_serves_the_rest(capsys, ids_csv, tmp_path):
    tree = remote_tree(CAPTURES, CAMERAS, groups=ORIGINAL_GROUPS)
    with DownloadServer(dict(tree)) as server:
        out = tmp_path / "out"
        code, stdout, _ = download(capsys, server, out, ids_csv)
        assert code == 0, stdout
        assert_mirrors(out, tree)
        assert "downloaded 44, skipped 0, failed 0 files" in stdout
        assert "not on the server: background_image, expression_codes, encodings, checkpoints" in stdout
        assert (f"expression_codes: not on the server (404 Not Found x2 (e.g. {AEY[5:]}/decoder/expression_codes/"
                "aeparams_1440000.pkl))") in stdout
        assert "checkpoints: not on the server (404 Not Found x1" in stdout
        # Named, a group the server lacks is a failure like any other.
        code, stdout, _ = download(capsys, server, out, ids_csv, "--assets", "expression_codes", "frame_list")
        assert code == 1
        assert "expression_codes: 2 failed: 404 Not Found x2" in stdout


def test_a_group_some_captures_lack_is_a_failure(capsys, ids_csv, tmp_path):
    tree = remote_tree(CAPTURES, CAMERAS)
    missing = f"{AAN}/decoder/background_image/background_image.zip"
    del tree[missing]
    with DownloadServer(dict(tree)) as server:
        code, stdout, _ = download(capsys, server, tmp_path / "out", ids_csv, "--assets", "background_image")
    assert code == 1
    assert "background_image: 1 failed: 404 Not Found x1" in stdout


def test_other_tiers_leave_the_4tb_groups_out_of_all(capsys, ids_csv, tmp_path):
    tree = {path.replace("/4TB/", "/8TB/"): body for path, body in remote_tree(CAPTURES, CAMERAS).items()}
    with DownloadServer(dict(tree)) as server:
        out = tmp_path / "out"
        code, stdout, _ = download(capsys, server, out, ids_csv, "-s", "8TB")
        assert code == 0, stdout
        assert "note: left out at 8TB: background_image, expression_codes (the 4TB tier only" in stdout
        assert not [entry for entry in server.log if "/background_image/" in entry.path
                    or "/expression_codes/" in entry.path or "/foreground_masks/" in entry.path]
        assert (out / "checkpoints" / "decoder" / "aeparams_1440000.pt").is_file()
        assert local(out, f"/8TB/{CAPTURES[1].folder}/encoder/encodings_gt.pt").is_file()


def test_dry_run_lists_the_release_wide_file(capsys, ids_csv, tmp_path):
    with DownloadServer(remote_tree(CAPTURES, CAMERAS)) as server:
        code, stdout, _ = download(capsys, server, tmp_path / "out", ids_csv, "--assets", "checkpoints", "--dry-run")
    assert code == 0
    assert "  checkpoints/decoder/aeparams_1440000.pt" in stdout
    assert "dry run: 1 of 1 files available" in stdout


def test_help_says_which_groups_are_4tb_only(capsys):
    code, stdout, _ = run(capsys, "--help")
    assert code == 0
    text = " ".join(stdout.split())
    for group in release.EXTRA_GROUPS:
        assert group in text
    for group in release.ONLY_4TB:
        assert f"{group} (4TB only" in text
