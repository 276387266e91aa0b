"""The release catalogue behind `ava download`: asset groups, URLs, capture selection."""

from __future__ import annotations

import json

import pytest

from ava.data.ids import CaptureId, format_ids_csv
from ava.data.release import (
    ASSET_GROUPS,
    DEFAULT_BASE_URL,
    ENV_BASE_URL,
    PlannedFile,
    group_paths,
    parse_camera_ids,
    remote_root,
    resolve_base_url,
    resolve_groups,
    select_captures,
)
from ava.errors import UserError

AEY = CaptureId.parse("20230324--0820--AEY864")
AAN = CaptureId.parse("20230405--1635--AAN112")
BDF = CaptureId.parse("20230308--1352--BDF920")


def test_all_expands_to_every_group_in_canonical_order():
    assert resolve_groups(["all"]) == list(ASSET_GROUPS)
    assert resolve_groups(["uv_image", "image", "uv_image"]) == ["image", "uv_image"]
    assert len(ASSET_GROUPS) == 15


def test_unknown_group_names_the_valid_ones():
    with pytest.raises(UserError, match="unknown asset group 'images'.*segmentation_parts"):
        resolve_groups(["image", "images"])


def test_group_paths_follow_the_release_layout():
    cameras = ["400940", "401031"]
    assert group_paths("image", cameras) == ["decoder/image/cam400940.zip", "decoder/image/cam401031.zip"]
    assert group_paths("segmentation_parts", cameras)[1] == "decoder/segmentation_parts/cam401031.zip"
    assert group_paths("kinematic_tracking") == [
        "decoder/kinematic_tracking/registration_vertices_mean.npy",
        "decoder/kinematic_tracking/registration_vertices_variance.txt",
        "decoder/kinematic_tracking/registration_vertices.zip",
    ]
    assert group_paths("encoder")[0] == "encoder/frame_list.csv"
    assert len(group_paths("encoder")) == 6
    assert group_paths("uv_image") == [
        "decoder/uv_image/color_mean.png",
        "decoder/uv_image/color_variance.txt",
        "decoder/uv_image/color.zip",
    ]


def test_camera_ids_come_sorted_and_unique():
    calibration = json.dumps({"KRT": [{"cameraId": "401031"}, {"cameraId": "400940"}, {"cameraId": "400940"}]})
    assert parse_camera_ids(calibration.encode()) == ["400940", "401031"]
    with pytest.raises(ValueError, match="KRT"):
        parse_camera_ids(b'{"cameras": []}')
    with pytest.raises(ValueError, match="no cameras"):
        parse_camera_ids(b'{"KRT": []}')


def test_urls_keep_the_size_tier_and_local_paths_drop_it(tmp_path):
    root = remote_root("https://mirror.example/ava-256/", "16TB")
    planned = PlannedFile(AEY, "frame_list", "decoder/frame_list.csv")
    assert planned.url(root) == "https://mirror.example/ava-256/16TB/20230324--0820--AEY864/decoder/frame_list.csv"
    assert planned.local(tmp_path) == tmp_path / "20230324--0820--AEY864" / "decoder" / "frame_list.csv"
    with pytest.raises(UserError, match="unknown size '5TB'"):
        remote_root("https://mirror.example", "5TB")


def test_base_url_precedence(monkeypatch):
    monkeypatch.delenv(ENV_BASE_URL, raising=False)
    assert resolve_base_url(None) == DEFAULT_BASE_URL
    assert DEFAULT_BASE_URL.endswith(".s3.amazonaws.com/ava-256")
    monkeypatch.setenv(ENV_BASE_URL, "http://env.example/")
    assert resolve_base_url(None) == "http://env.example"
    assert resolve_base_url("https://flag.example") == "https://flag.example"
    with pytest.raises(UserError, match="not an http"):
        resolve_base_url("ftp://flag.example")


def _no_default_list():
    raise AssertionError("the default capture list must not be fetched here")


def test_select_first_n_of_a_captures_file(tmp_path):
    csv = tmp_path / "ids.csv"
    csv.write_text(format_ids_csv([AEY, AAN, BDF]))
    assert select_captures((), csv, 2, _no_default_list) == [AEY, AAN]
    with pytest.raises(UserError, match="-n 4 asks for more captures than the 3"):
        select_captures((), csv, 4, _no_default_list)
    with pytest.raises(UserError, match="at least 1"):
        select_captures((), csv, 0, _no_default_list)


def test_select_ids_full_or_by_subject(tmp_path):
    assert select_captures(["20230308--1352--BDF920"], None, None, _no_default_list) == [BDF]
    listed = lambda: [AEY, AAN, BDF]  # noqa: E731
    assert select_captures(["AAN112", "20230324--0820--AEY864", "AAN112"], None, None, listed) == [AAN, AEY]
    with pytest.raises(UserError, match="neither a capture id"):
        select_captures(["ZZZ999"], None, None, listed)
    with pytest.raises(UserError, match="not a capture id"):
        select_captures(["2023-0820--AEY864"], None, None, listed)
    with pytest.raises(UserError, match="either -n or --ids"):
        select_captures(["AAN112"], None, 3, listed)


def test_default_is_the_first_16(tmp_path):
    many = [CaptureId("20230324", f"{minute:04d}", "AEY864") for minute in range(20)]
    assert select_captures((), None, None, lambda: many) == many[:16]
