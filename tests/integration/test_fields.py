"""Whole smear fields through the service: located, cropped and classified by a real worker (Redis, SQLite
or PostgreSQL), read back with each cell's place, from the CLI, the Python clients and the HTTP API."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import BCCD, DEFAULT_MODEL, encode, png_header, run_cli, touching_cells_field
from servers import Stack, create_token, free_port, settings_for, start_api_server

from bloodcell_core.clients.http import HttpApiError, HttpClient
from bloodcell_core.ml.artifacts import read_metadata
from bloodcell_core.ml.preprocessing import decode_image
from bloodcell_core.ml.smear_fields import read_fields
from bloodcell_core.service import tables
from bloodcell_core.service.errors import LimitExceeded

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, redis_server, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"home-fields-{request.param}")
    if request.param == "sqlite":
        database_url, store, redis_db = f"sqlite:///{home / 'bloodcell.db'}", "file", 6
    else:
        database_url, store, redis_db = request.getfixturevalue("postgres_server").create_database("bloodcell_fields"), "database", 8
    env = {
        "BLOODCELL_HOME": str(home),
        "BLOODCELL_BROKER_URL": f"{redis_server.url}/{redis_db}",
        "BLOODCELL_RESULT_BACKEND": f"{redis_server.url}/{redis_db + 1}",
        "BLOODCELL_DATABASE_URL": database_url,
        "BLOODCELL_IMAGE_STORE": store,
        "BLOODCELL_DEFAULT_MODEL": str(DEFAULT_MODEL),
        "BLOODCELL_MODELS_DIR": str(home / "models"),
        "BLOODCELL_API_PORT": str(free_port()),
    }
    run_cli("db", "upgrade", env=env)
    stack = Stack(env=env, settings=settings_for(env))
    stack.start_worker("fields-w1")
    server = start_api_server(env, home / "api.log")
    stack.env["token"] = create_token(env, "lims", "submit", "read")["token"]
    yield stack
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    stack.stop_workers()


def empty_field() -> np.ndarray:
    """A generated field of red cells only (BGR)."""
    image = np.full((480, 640, 3), (196, 214, 238), np.uint8)
    for k in range(30):
        cv2.circle(image, ((k * 97) % 640, (k * 61) % 480), 30, (160, 150, 214), -1)
    return image


@pytest.fixture
def field_dir(tmp_path: Path) -> Path:
    """Three BCCD test fields (one holds two white cells), a field without white cells, and a non-image."""
    folder = tmp_path / "fields"
    folder.mkdir()
    fields = read_fields(BCCD, "test")
    chosen = [next(f for f in fields if len(f.white_cells) == 2)] + [f for f in fields if len(f.white_cells) == 1][:2]
    for f in chosen:
        (folder / f.image_path.name).symlink_to(f.image_path)
    (folder / "empty_field.png").write_bytes(encode(empty_field()))
    (folder / "not_a_field.jpg").write_bytes(b"this is a text file named .jpg")
    return folder


def submit_fields(stack: Stack, sample_id: str, *paths: Path) -> dict:
    args = ["submit", "--sample-id", sample_id, "--fields", "--json", "--wait", "--timeout", "180", *map(str, paths)]
    return json.loads(run_cli(*args, env=stack.env).stdout)


def test_fields_from_the_cli_are_located_classified_and_kept_with_their_place(stack: Stack, field_dir: Path, tmp_path: Path):
    report = submit_fields(stack, "F-CLI-1", field_dir)
    by_name = {Path(f["name"]).name: f for f in report["fields"]}
    assert len(by_name) == 5
    assert by_name["not_a_field.jpg"]["status"] == "failed" and "not an image file" in by_name["not_a_field.jpg"]["error"]
    assert by_name["empty_field.png"]["status"] == "located" and by_name["empty_field.png"]["n_cells"] == 0
    assert [Path(name).name for name in report["fields_without_cells"]] == ["empty_field.png"]
    located = [f for f in report["fields"] if f["status"] == "located"]
    assert sum(f["n_cells"] for f in located) == report["n_cells"] == report["n_classified"] == 4  # 2 + 1 + 1
    assert report["status"] == "needs_review"  # a field failed: a person looks
    queued = next(s for s in stack.client().review_queue() if s.sample_id == "F-CLI-1")
    assert [Path(f.name).name for f in queued.failed_fields] == ["not_a_field.jpg"]
    cells = json.loads(run_cli("cells", "F-CLI-1", "--json", env=stack.env).stdout)
    assert all(c["field_sha256"] and set(c["box"]) == {"x", "y", "width", "height", "touches_edge"} for c in cells)

    overlays = tmp_path / "overlays"
    fields = json.loads(run_cli("fields", "F-CLI-1", "--json", "--overlays", str(overlays), env=stack.env).stdout)
    two = next(f for f in fields if f["n_cells"] == 2)
    assert {c["label"] for c in two["cells"]} <= set(read_metadata(DEFAULT_MODEL).classes)
    assert (two["width"], two["height"]) == (640, 480) and two["locator"] == "stain_nucleus"
    assert len(list(overlays.glob("*.png"))) == 4  # every located field; the failed one has none
    overlay = decode_image((overlays / f"{two['image_sha256'][:16]}_overlay.png").read_bytes())
    assert overlay.shape == (480, 640, 3)

    # The same fields again add nothing; under another sample they give the very same cells.
    again = json.loads(run_cli("submit", "--sample-id", "F-CLI-1", "--fields", "--json", str(field_dir), env=stack.env).stdout)
    assert again["new_fields"] == 0 and again["new_cells"] == 0
    assert stack.count(tables.SampleField) == 5
    other = submit_fields(stack, "F-CLI-2", *sorted(field_dir.glob("BloodImage_*.jpg")))
    assert other["n_cells"] == 4
    assert {c["image_sha256"] for c in json.loads(run_cli("cells", "F-CLI-2", "--json", env=stack.env).stdout)} == {
        c["image_sha256"] for c in cells
    }


def test_fields_over_http_and_their_overlay(stack: Stack, field_dir: Path):
    url = f"http://127.0.0.1:{stack.env['BLOODCELL_API_PORT']}"
    api = HttpClient(url, stack.env["token"])
    fields = [(p.name, p.read_bytes()) for p in sorted(field_dir.glob("BloodImage_*.jpg"))]
    receipt = api.submit("F-HTTP-1", [], fields=fields)
    assert receipt.new_fields == 3 and receipt.n_fields == 3
    report = api.wait("F-HTTP-1", timeout=180)
    assert report.n_classified == 4 and len(report.fields) == 3
    listed = api.fields("F-HTTP-1")
    assert all(cell.box.width > 0 for field in listed for cell in field.cells)  # read back typed
    sha = listed[0].image_sha256
    png = api.field_overlay("F-HTTP-1", sha)
    assert png.startswith(b"\x89PNG") and decode_image(png).shape == (480, 640, 3)
    with pytest.raises(HttpApiError) as missing:
        api.field_overlay("F-HTTP-1", "0" * 64)
    assert missing.value.status_code == 404
    with pytest.raises(HttpApiError) as malformed:
        api.field_overlay("F-HTTP-1", "not-a-sha")
    assert malformed.value.status_code == 422
    assert api.submit("F-HTTP-1", [], fields=fields).new_fields == 0  # the same fields: 200, nothing new


def test_bad_fields_each_get_a_clear_result_and_nothing_is_half_written(stack: Stack, tmp_path: Path):
    crowded = tmp_path / "crowded.png"
    crowded.write_bytes(encode(cv2.cvtColor(touching_cells_field(10, 6), cv2.COLOR_RGB2BGR)))
    noise = tmp_path / "noise.png"
    noise.write_bytes(encode(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)))
    flat = tmp_path / "flat.png"
    flat.write_bytes(encode(np.full((480, 640, 3), (150, 60, 95), np.uint8)))
    report = submit_fields(stack, "F-BAD-1", crowded, noise, flat)
    by_name = {Path(f["name"]).name: f for f in report["fields"]}
    assert by_name["crowded.png"]["status"] == "failed"
    assert "60 white cells found in one field, over 50 (BLOODCELL_MAX_CELLS_PER_FIELD)" in by_name["crowded.png"]["error"]
    assert by_name["noise.png"]["n_cells"] == by_name["flat.png"]["n_cells"] == 0
    assert report["status"] == "failed" and "no white cell was found in the sample's 3 field(s)" in report["error"]
    assert report["n_cells"] == 0  # nothing of the crowded field was kept

    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header(5000, 5000))
    fields_before = stack.count(tables.SampleField)
    with pytest.raises(LimitExceeded, match="5000 x 5000 pixels"):
        stack.client().submit("F-BAD-2", [], fields=[("huge.png", huge.read_bytes())])
    result = run_cli("submit", "--sample-id", "F-BAD-2", "--fields", str(huge), env=stack.env, check=False)
    assert result.returncode == 1 and "BLOODCELL_MAX_IMAGE_PIXELS" in result.stderr
    assert stack.count(tables.SampleField) == fields_before
