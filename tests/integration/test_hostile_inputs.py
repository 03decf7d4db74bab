"""Hostile inputs through both producers: the HTTP API (POST /v1/samples) and the Python Client.

Every input is generated here (no file is added to the repository) and has one expected outcome per path:

- refused: up front, before anything is stored. The API answers 4xx with a `detail` naming the problem,
  the client raises ServiceError / LimitExceeded with the same words; the rows of samples,
  sample_images, images and predictions and the files of the image store are unchanged.
- fails: the sample is accepted; that image alone fails, listed in the report's `failed` with a clear
  error and without a prediction, while the sample's other cell (a real unseen image) is classified.
- classified: the image decodes to a sensible RGB image and is classified; variants of a real unseen
  basophil (RGBA, 16-bit PNG and TIFF, CMYK JPEG, EXIF orientation, rotation, wrong content type, ...)
  keep its class.

EXIF orientation is deliberately not applied (OpenCV's IMREAD_UNCHANGED ignores it), in serving as in
training, so both producers, which store the same bytes, get the same result; a white cell rotated is
the same cell, and the shipped model gives a rotated copy the same class.

After every case /health answers; at the end the API and the worker are still running and classify a
normal sample.
"""

from __future__ import annotations

import functools
import io
import os
import re
import signal
import struct
import subprocess
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import httpx
import numpy as np
import PIL.Image
import pytest
from helpers import DEFAULT_MODEL, encode, run_cli, unseen_images
from servers import LIMITS, Api, Stack, create_token, free_port, settings_for, start_api_server
from sqlalchemy import func, select

from bloodcell_core.clients.local import Client
from bloodcell_core.ml.preprocessing import decode_image
from bloodcell_core.service import db, tables
from bloodcell_core.service.errors import LimitExceeded, ServiceError
from bloodcell_core.service.image_store import sha256_of
from bloodcell_core.service.states import SampleStatus

pytestmark = [pytest.mark.hostile, pytest.mark.real_data]

Part = tuple[bytes, bytes, "bytes | None"]  # (file name as sent, image bytes, Content-Type of the part or None)
TABLES = (tables.Sample, tables.SampleImage, tables.Image, tables.Prediction)
REFERENCE = unseen_images("basophil", 1)[0]  # a real test-split cell the shipped model classifies as basophil
COMPANION = unseen_images("neutrophil", 1)[0]  # the normal cell submitted beside each accepted hostile image


# --- generated images ------------------------------------------------------------------------------


@functools.cache
def reference_bgr() -> np.ndarray:
    return cv2.imdecode(np.frombuffer(REFERENCE.read_bytes(), np.uint8), cv2.IMREAD_COLOR)


def zero_png(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A valid grayscale PNG of WIDTH x HEIGHT black pixels, compressed for real (a bomb when large)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width * bit_depth + 7) // 8)
    compressor, idat = zlib.compressobj(9), []
    for start in range(0, height, 1024):
        idat.append(compressor.compress(row * min(1024, height - start)))
    idat.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0))
        + chunk(b"IDAT", b"".join(idat))
        + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to claim WIDTH x HEIGHT."""
    data = bytearray(encode(np.full((16, 16, 3), 128, np.uint8), ".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The same JPEG (pixels untouched) with an EXIF APP1 segment carrying tag 274, Orientation."""
    exif = PIL.Image.Exif()
    exif[274] = orientation
    payload = exif.tobytes()  # b"Exif\0\0" + TIFF header and IFD
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def pillow(image: PIL.Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def ref() -> bytes:
    return REFERENCE.read_bytes()


def ref_png() -> bytes:
    return encode(reference_bgr())


def gray() -> bytes:
    return encode(cv2.cvtColor(reference_bgr(), cv2.COLOR_BGR2GRAY))


def rgba() -> bytes:
    alpha = np.tile(np.linspace(0, 255, reference_bgr().shape[1], dtype=np.uint8), (reference_bgr().shape[0], 1))
    return encode(np.dstack([reference_bgr(), alpha]))


def deep(extension: str) -> bytes:
    return encode(reference_bgr().astype(np.uint16) * 257, extension)  # 0..255 -> 0..65535


def cmyk() -> bytes:
    return pillow(PIL.Image.open(REFERENCE).convert("CMYK"), "JPEG", quality=95)


def exif_rotated() -> bytes:
    return with_exif_orientation(ref(), 6)


def rotated() -> bytes:
    return encode(cv2.rotate(reference_bgr(), cv2.ROTATE_90_CLOCKWISE))


def gif() -> bytes:
    return pillow(PIL.Image.open(REFERENCE).convert("RGB"), "GIF")


def noise_jpeg() -> bytes:  # a real, decodable image over BLOODCELL_MAX_IMAGE_BYTES (300,000 in LIMITS)
    noise = np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    return encode(noise, ".jpg")


def many() -> list[Part]:
    return [(f"c{k}.png".encode(), encode(np.full((8, 8, 3), k, np.uint8)), b"image/png") for k in range(25)]


def one(filename: bytes, make: Callable[[], bytes], content_type: bytes | None = b"image/png") -> Callable[[], list[Part]]:
    return lambda: [(filename, make(), content_type)]


# --- the corpus ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    outcome: str  # "refused", "fails" or "classified"
    words: str = ""  # in the API's detail, the client's exception or the failed cell's error
    status: int = 0  # the API's status for a refusal
    error: type[Exception] = ServiceError  # the client's exception for a refusal
    name: str | None = None  # the cell name the sample lists for the hostile image (None: as sent)


def refused(status: int, words: str, error: type[Exception] = ServiceError) -> Expect:
    return Expect("refused", words, status, error)


def fails(words: str) -> Expect:
    return Expect("fails", words)


def classified(name: str | None = None) -> Expect:
    return Expect("classified", name=name)


@dataclass(frozen=True)
class Case:
    id: str
    images: Callable[[], list[Part]]
    api: Expect
    client: Expect | None = None  # None: the same as the API's
    accession: bytes | None = None  # a hostile accession id (raw bytes on the wire); None: a fresh valid one
    label: str | None = None  # the class a classified hostile image must get (None: any)
    companion: bool = True  # submit a normal cell beside it
    cells: int = 1  # hostile cells the sample gets (after de-duplication)
    paths: tuple[str, ...] = ("api", "client")  # ("api",): a request the client cannot make

    def expect(self, path: str) -> Expect:
        return self.api if path == "api" else (self.client or self.api)


PIXELS, BYTES, IMAGES = "BLOODCELL_MAX_IMAGE_PIXELS", "BLOODCELL_MAX_IMAGE_BYTES", "BLOODCELL_MAX_IMAGES_PER_SAMPLE"
BAD_ID = "invalid sample id"
LONG_NAME = b"n" * 1000 + b".png"
HUGE_NAME = b"N" * 10_000 + b".png"
CASES = [
    # image content: refused up front (limits read from the header, never decoded)
    Case(
        "png-decompression-bomb",
        one(b"bomb.png", lambda: zero_png(20_000, 20_000, bit_depth=1)),
        refused(413, PIXELS, LimitExceeded),  # the configured limit, not Pillow's own
    ),
    Case(
        "jpeg-header-claiming-65500x65500",
        one(b"claims.jpg", lambda: jpeg_claiming(65_500, 65_500), b"image/jpeg"),
        refused(413, PIXELS, LimitExceeded),
    ),
    Case("huge-dimensions-3000x3000", one(b"huge.png", lambda: zero_png(3000, 3000)), refused(413, PIXELS, LimitExceeded)),
    Case("strip-1000001x1", one(b"strip.png", lambda: zero_png(1_000_001, 1)), refused(413, PIXELS, LimitExceeded)),
    Case("oversized-upload", one(b"noise.jpg", noise_jpeg, b"image/jpeg"), refused(413, BYTES, LimitExceeded)),
    Case("25-image-parts", many, refused(413, IMAGES, LimitExceeded)),
    Case("no-images", lambda: [], refused(422, "at least one image"), companion=False),
    # image content: accepted, that image fails alone
    Case("zero-bytes", one(b"empty.jpg", lambda: b"", b"image/jpeg"), fails("empty file (0 bytes)")),
    Case("truncated-jpeg", one(b"half.jpg", lambda: ref()[: len(ref()) // 2], b"image/jpeg"), fails("not an image file")),
    Case("jpeg-headers-only", one(b"head.jpg", lambda: ref()[:600], b"image/jpeg"), fails("not an image file")),
    Case(
        "text-named-jpg",
        one(b"notes.jpg", lambda: b"Patient notes: not an image\n" * 4, b"image/jpeg"),
        fails("not an image file"),
    ),
    Case(
        "html-named-png",
        one(b"page.png", lambda: b"<html><body><script>alert(1)</script></body></html>"),
        fails("not an image file"),
    ),
    Case(
        "svg-vector",
        one(b"cell.svg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', b"image/svg+xml"),
        fails("not an image file"),
    ),
    Case(
        "pdf-as-image-jpeg",
        one(b"report.jpg", lambda: b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", b"image/jpeg"),
        fails("not an image file"),
    ),
    Case(
        "float32-tiff",
        one(b"float.tif", lambda: encode(np.full((32, 32, 3), 0.5, np.float32), ".tiff"), b"image/tiff"),
        fails("not an image file"),
    ),
    Case(
        "only-undecodable-images",
        lambda: [(b"a.gif", b"GIF89a", b"image/gif"), (b"b.png", b"\x89PNG\r\n\x1a\n", b"image/png")],
        fails("not an image file"),
        companion=False,
        cells=2,
    ),
    # image content: decoded to RGB and classified
    Case("reference-jpeg", one(b"reference.jpg", ref, b"image/jpeg"), classified(), label="basophil"),
    Case("1x1", one(b"dot.png", lambda: encode(np.full((1, 1, 3), (200, 120, 180), np.uint8))), fails("too small to show a cell")),
    Case(
        "1x900-aspect",
        one(b"line.png", lambda: encode(np.full((1, 900, 3), (200, 120, 180), np.uint8))),
        fails("too small to show a cell"),
    ),
    # the models only saw stained colour smears and label a grayscale cell confidently: refused
    Case("grayscale", one(b"gray.png", gray), fails("colourless image")),
    Case("rgba", one(b"rgba.png", rgba), classified(), label="basophil"),
    Case("16-bit-png", one(b"deep.png", lambda: deep(".png")), classified(), label="basophil"),
    Case("16-bit-tiff", one(b"deep.tiff", lambda: deep(".tiff"), b"image/tiff"), classified(), label="basophil"),
    Case("cmyk-jpeg", one(b"cmyk.jpg", cmyk, b"image/jpeg"), classified(), label="basophil"),
    Case("exif-orientation-6", one(b"exif.jpg", exif_rotated, b"image/jpeg"), classified(), label="basophil"),
    Case("rotated-90", one(b"rot.png", rotated), classified(), label="basophil"),
    Case("palette-gif", one(b"cell.gif", gif, b"image/gif"), classified(), label="basophil"),
    Case("png-sent-as-text-plain", one(b"cell.txt", ref_png, b"text/plain"), classified(), label="basophil"),
    Case("jpeg-named-png", one(b"cell.png", ref, b"image/png"), classified(), label="basophil"),
    Case("part-without-content-type", one(b"cell.jpg", ref_png, None), classified(), label="basophil"),
    # duplicate fields
    Case(
        "same-image-twice",
        lambda: [(b"a.png", ref_png(), b"image/png"), (b"b.png", ref_png(), b"image/png")],
        classified(name="a.png"),
        label="basophil",
    ),
    Case(
        "same-name-two-images",
        lambda: [(b"cell.png", ref_png(), b"image/png"), (b"cell.png", rgba(), b"image/png")],
        classified(),
        cells=2,
    ),
    # file names: labels, never paths; the API keeps the last path part, printable characters, 255 at most
    Case(
        "name-path-traversal", one(b"../../etc/passwd", ref_png), classified(name="passwd"), client=classified(name="../../etc/passwd")
    ),
    Case(
        "name-windows-traversal",
        one(b"..\\..\\windows\\win.ini", ref_png),
        classified(name="win.ini"),
        client=classified(name="..\\..\\windows\\win.ini"),
    ),
    Case("name-sql", one(b"x'); DROP TABLE images;--.png", ref_png), classified(name="x'); DROP TABLE images;--.png")),
    Case("name-nul-byte", one(b"a\x00b.png", ref_png), classified(name="ab.png")),
    Case("name-non-utf8", one(b"\xff\xfe.png", ref_png), classified(name="\xff\xfe.png"), client=classified(name="\ufffd\ufffd.png")),
    Case("name-empty", one(b"", ref_png), classified(name="image-1"), client=classified(name="")),
    Case(
        "name-1000-chars",
        one(LONG_NAME, ref_png),
        classified(name=LONG_NAME.decode()[:255]),
        client=classified(name=LONG_NAME.decode()[:512]),
    ),
    Case(
        "name-10000-chars",
        one(HUGE_NAME, ref_png),
        refused(400, "Maximum header size exceeded"),
        client=classified(name=HUGE_NAME.decode()[:512]),
    ),
    # accession ids: refused by both paths, nothing stored
    Case("id-path-traversal", one(b"c.png", ref_png), refused(422, BAD_ID), accession=b"../../etc/passwd"),
    Case("id-non-utf8", one(b"c.png", ref_png), refused(422, BAD_ID), accession=b"S-\xff\xfe"),
    Case("id-10000-chars", one(b"c.png", ref_png), refused(422, BAD_ID), accession=b"S" * 10_000),
    Case(
        "id-2-mb",
        one(b"c.png", ref_png),
        refused(400, "Part exceeded maximum size"),
        client=refused(0, BAD_ID),
        accession=b"S" * 2_000_000,
    ),
    Case("id-sql", one(b"c.png", ref_png), refused(422, BAD_ID), accession=b"S-1'; DROP TABLE samples;--"),
    Case("id-empty", one(b"c.png", ref_png), refused(422, BAD_ID), accession=b""),
    Case("id-nul-byte", one(b"c.png", ref_png), refused(422, BAD_ID), accession=b"S-1\x00"),
    Case("id-crlf-hl7-injection", one(b"c.png", ref_png), refused(422, BAD_ID), accession=b"S-1\r\nPID|||evil"),
    Case("id-trailing-newline", one(b"c.png", ref_png), refused(422, BAD_ID), accession=b"S-NL-1\n"),
    Case("id-non-ascii-digits", one(b"c.png", ref_png), refused(422, BAD_ID), accession="S-١٢٣".encode()),
    Case("id-leading-dash", one(b"c.png", ref_png), refused(422, BAD_ID), accession=b"-rf"),
    # the request itself (the rest is in test_api.py's REFUSED table)
    Case("no-multipart-boundary", one(b"c.png", ref_png), refused(400, "Missing boundary"), paths=("api",)),
]
assert len(CASES) >= 25


def params(outcomes: set[str]) -> list:
    chosen = []
    for k, case in enumerate(CASES):
        for path in case.paths:
            expect = case.expect(path)
            if expect.outcome in outcomes:
                chosen.append(pytest.param(k, path, id=f"{case.id}-{path}"))
    return chosen


# --- the stack and the two producers -----------------------------------------------------------------


@dataclass
class Hostile:
    api: Api
    server: subprocess.Popen
    home: Path
    client: Client
    submitted: dict[tuple[int, str], object] = field(default_factory=dict)

    @property
    def stack(self) -> Stack:
        return self.api.stack

    def stored(self) -> dict[str, int]:
        counts = {model.__tablename__: self.stack.count(model) for model in TABLES}
        return counts | {"files": sum(1 for p in (self.home / "images").rglob("*") if p.is_file())}

    def settle(self, timeout: float = 120) -> None:
        """Wait until no sample is queued or running, so the worker writes nothing while rows are counted."""
        deadline = time.monotonic() + timeout
        while True:
            with db.session_scope(self.stack.settings.database_url) as session:
                busy = session.scalar(
                    select(func.count())
                    .select_from(tables.Sample)
                    .where(tables.Sample.status.in_([SampleStatus.QUEUED, SampleStatus.RUNNING]))
                )
            if not busy:
                return
            assert time.monotonic() < deadline, f"{busy} samples still queued or running"
            time.sleep(0.2)

    def healthy(self) -> None:
        assert self.server.poll() is None, "the API process exited"
        assert self.api.call("GET", "/health", token=None).status_code == 200


@pytest.fixture(scope="module")
def hostile(redis_server, postgres_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("home-hostile")
    env = {
        "BLOODCELL_HOME": str(home),
        "BLOODCELL_BROKER_URL": f"{redis_server.url}/13",
        "BLOODCELL_RESULT_BACKEND": f"{redis_server.url}/14",
        "BLOODCELL_DATABASE_URL": postgres_server.create_database("bloodcell_hostile"),
        "BLOODCELL_IMAGE_STORE": "file",  # the default store: refusals must leave no file behind either
        "BLOODCELL_DEFAULT_MODEL": str(DEFAULT_MODEL),
        "BLOODCELL_MODELS_DIR": str(home / "models"),
        "BLOODCELL_API_PORT": str(free_port()),
        **LIMITS,
    }
    run_cli("db", "upgrade", env=env)
    token = create_token(env, "lims", "submit", "read")["token"]
    stack = Stack(env=env, settings=settings_for(env))
    stack.start_worker("hostile-w1")
    server = start_api_server(env, home / "api.log")
    api = Api(f"http://127.0.0.1:{env['BLOODCELL_API_PORT']}", stack, {"lims": token}, "", None)
    yield Hostile(api, server, home, stack.client())
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    stack.stop_workers()


def multipart(accession: bytes | None, parts: list[Part]) -> tuple[bytes, str]:
    """A multipart/form-data body built byte by byte, so ids and file names reach the server exactly as given."""
    boundary = uuid.uuid4().hex.encode()
    chunks = [] if accession is None else [b'Content-Disposition: form-data; name="accession_id"\r\n\r\n' + accession]
    for filename, data, content_type in parts:
        head = b'Content-Disposition: form-data; name="images"; filename="' + filename + b'"'
        chunks.append(head + (b"\r\nContent-Type: " + content_type if content_type else b"") + b"\r\n\r\n" + data)
    body = b"".join(b"--" + boundary + b"\r\n" + chunk + b"\r\n" for chunk in chunks) + b"--" + boundary + b"--\r\n"
    return body, f"multipart/form-data; boundary={boundary.decode()}"


def accession_for(k: int, case: Case, path: str) -> bytes:
    return case.accession if case.accession is not None else f"HOSTILE-{k:02d}-{path}".encode()


def parts_for(case: Case) -> list[Part]:
    companion = [(COMPANION.name.encode(), COMPANION.read_bytes(), b"image/jpeg")] if case.companion else []
    return companion + case.images()


def submit(hostile: Hostile, k: int, path: str):
    """Submit case K through PATH; the API's response, or the client's Submission or exception.

    The client gets the same bytes, with ids and names as Python strings the way the CLI makes them from
    file names (os.fsdecode: undecodable bytes become surrogates).
    """
    case = CASES[k]
    accession, parts = accession_for(k, case, path), parts_for(case)
    if path == "api":
        body, content_type = multipart(accession, parts)
        if case.id == "no-multipart-boundary":
            content_type = "multipart/form-data"
        return hostile.api.call("POST", "/v1/samples", content=body, headers={"Content-Type": content_type})
    try:
        return hostile.client.submit(os.fsdecode(accession), [(os.fsdecode(name), data) for name, data, _ in parts])
    except Exception as exc:  # checked by the test
        return exc


# --- refused up front --------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,path", params({"refused"}))
def test_refused_up_front_with_a_clear_error_and_nothing_stored(hostile: Hostile, k: int, path: str):
    case, expect = CASES[k], CASES[k].expect(path)
    hostile.settle()
    before = hostile.stored()
    result = submit(hostile, k, path)
    if path == "api":
        assert isinstance(result, httpx.Response)
        assert result.status_code == expect.status, result.text[:500]
        detail = result.json()["detail"]
        assert isinstance(detail, str) and expect.words in detail and len(detail) < 600, detail[:600]
    else:
        assert isinstance(result, expect.error), repr(result)[:500]
        assert expect.words in str(result) and len(str(result)) < 600, str(result)[:600]
    assert hostile.stored() == before, case.id
    hostile.healthy()


# --- accepted: that image fails alone, or is classified --------------------------------------------------


@pytest.fixture(scope="module")
def submitted(hostile: Hostile) -> dict[tuple[int, str], object]:
    """Every accepted case through both paths at once: the worker classifies while the tests read results."""
    hostile.settle()
    for values in params({"fails", "classified"}):
        k, path = values.values
        hostile.submitted[(k, path)] = submit(hostile, k, path)
    return hostile.submitted


def wait_for(hostile: Hostile, accession: str, path: str) -> tuple[dict, list[dict]]:
    if path == "api":
        report = hostile.api.wait_for(accession)
        return report, hostile.api.call("GET", f"/v1/samples/{accession}/cells").json()
    # the API's JSON and the in-process client's typed report and cells, checked alike
    cells = [cell.model_dump(mode="json") for cell in hostile.client.cells(accession)]
    return hostile.client.wait(accession, timeout=120).model_dump(mode="json"), cells


def predicted(hostile: Hostile, sha256: str) -> bool:
    with db.session_scope(hostile.stack.settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(tables.Prediction).where(tables.Prediction.image_sha256 == sha256)) > 0


@pytest.mark.parametrize("k,path", params({"fails", "classified"}))
def test_accepted_image_fails_alone_or_is_classified(hostile: Hostile, submitted, k: int, path: str):
    case, expect = CASES[k], CASES[k].expect(path)
    result = submitted[(k, path)]
    assert not isinstance(result, Exception), f"{type(result).__name__}: {str(result)[:300]}"
    if path == "api":
        assert result.status_code == 202, result.text[:500]
    accession = accession_for(k, case, path).decode()
    report, cells = wait_for(hostile, accession, path)
    hostile_cells = [c for c in cells if c["name"] != COMPANION.name]
    assert report["n_cells"] == len(cells) == case.companion + case.cells, cells
    assert len(hostile_cells) == case.cells
    if case.companion:
        companion = next(c for c in cells if c["name"] == COMPANION.name)
        assert companion["status"] == "done" and companion["label"] == "neutrophil", companion
    if expect.outcome == "fails":
        assert report["n_failed"] == len(report["failed"]) == case.cells, report
        assert report["n_classified"] == int(case.companion)
        for cell in hostile_cells:
            assert cell["status"] == "failed" and expect.words in cell["error"], cell
            assert cell["label"] is None and not predicted(hostile, cell["image_sha256"])
        assert {f["image_sha256"] for f in report["failed"]} == {c["image_sha256"] for c in hostile_cells}
        if not case.companion:
            assert report["status"] == "failed" and "no image of the sample could be classified" in report["error"]
    else:
        assert report["n_failed"] == 0 and report["n_classified"] == report["n_cells"], report
        for cell in hostile_cells:
            assert cell["status"] == "done" and cell["error"] is None and cell["label"] in report["counts"], cell
            if case.label:
                assert cell["label"] == case.label, (cell, case.label)
    sent = {sha256_of(data): name for name, data, _ in case.images()}
    for cell in hostile_cells:
        assert cell["image_sha256"] in sent
        wanted = expect.name if expect.name is not None else os.fsdecode(sent[cell["image_sha256"]])
        assert cell["name"] == wanted, (cell["name"][:80], wanted[:80])
    hostile.healthy()


def test_exif_orientation_is_ignored_the_same_way_by_both_paths(hostile: Hostile, submitted):
    """The EXIF-tagged copy has the reference's pixels: same class and confidence, through either producer."""
    reference = CASES.index(next(c for c in CASES if c.id == "reference-jpeg"))
    tagged = CASES.index(next(c for c in CASES if c.id == "exif-orientation-6"))
    confidences = []
    for k in (reference, tagged):
        for path in ("api", "client"):
            _, cells = wait_for(hostile, accession_for(k, CASES[k], path).decode(), path)
            cell = next(c for c in cells if c["name"] != COMPANION.name)
            confidences.append((cell["label"], cell["confidence"]))
    assert {label for label, _ in confidences} == {"basophil"}
    assert max(c for _, c in confidences) - min(c for _, c in confidences) < 1e-3, confidences


# --- decoding, in process: a sensible RGB image from every accepted format ---------------------------------


def test_decoded_pixels_are_sensible_rgb():
    expected = cv2.cvtColor(reference_bgr(), cv2.COLOR_BGR2RGB)
    for name, data in {
        "png": ref_png(),
        "rgba": rgba(),
        "16-bit png": deep(".png"),
        "16-bit tiff": deep(".tiff"),
        "exif orientation 6": exif_rotated(),
    }.items():
        decoded = decode_image(data)
        assert decoded.dtype == np.uint8 and decoded.shape == expected.shape, name
        assert np.abs(decoded.astype(int) - expected).max() <= 1, name  # exact but for JPEG decoder rounding
    # EXIF is really there (OpenCV's IMREAD_COLOR would rotate), and decoding ignores it
    assert PIL.Image.open(io.BytesIO(exif_rotated())).getexif()[274] == 6
    assert cv2.imdecode(np.frombuffer(exif_rotated(), np.uint8), cv2.IMREAD_COLOR).shape[:2] == expected.shape[1::-1]
    # CMYK is not inverted and the colours survive (JPEG is lossy); grayscale is R = G = B
    assert np.abs(decode_image(cmyk()).astype(float) - expected).mean() < 4
    grey = decode_image(gray())
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert abs(float(grey.mean()) - float(cv2.cvtColor(reference_bgr(), cv2.COLOR_BGR2GRAY).mean())) < 0.5
    assert np.abs(decode_image(gif()).astype(float) - expected).mean() < 8  # 256-colour palette


# --- read routes with hostile ids --------------------------------------------------------------------------


HOSTILE_PATHS = [
    "/v1/samples/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/v1/samples/..%2f..%2fetc%2fpasswd/cells",
    "/v1/samples/S%00X",
    "/v1/samples/S%00X/cells",
    "/v1/samples/S%00X/export/fhir-r4",
    "/v1/samples/S%00X/webhooks",
    "/v1/samples/%FF%FE",
    "/v1/samples/%C0%AE%C0%AE",
    "/v1/samples/" + "A" * 10_000,
    "/v1/samples/S-1'%3B%20DROP%20TABLE%20samples%3B--",
    "/v1/samples/S-1%0A",
    "/v1/samples/HOSTILE-00-api/export/..%2f..%2fx",
    "/v1/images/not-hex",
    "/v1/images/" + "A" * 64,
    "/v1/images/" + "0" * 63 + "%00",
    "/v1/images/..%2f..%2fetc%2fpasswd",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS, ids=[re.sub(r"[^\w%.-]", "_", p)[:60] for p in HOSTILE_PATHS])
def test_read_routes_answer_hostile_ids_with_4xx(hostile: Hostile, path: str):
    response = hostile.api.call("GET", path)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert isinstance(response.json()["detail"], (str, list))
    hostile.healthy()


# --- the service stayed up ---------------------------------------------------------------------------------


def test_service_stays_up_and_still_classifies_a_normal_sample(hostile: Hostile, submitted):
    assert hostile.server.poll() is None and all(p.poll() is None for p in hostile.stack.workers)
    ready = hostile.api.call("GET", "/health/ready", token=None)
    assert ready.status_code == 200 and ready.json()["workers"], ready.text
    fresh = unseen_images("monocyte", 2) + unseen_images("myeloblast", 2)
    body, content_type = multipart(b"AFTER-HOSTILE-api", [(p.name.encode(), p.read_bytes(), b"image/jpeg") for p in fresh[:2]])
    assert hostile.api.call("POST", "/v1/samples", content=body, headers={"Content-Type": content_type}).status_code == 202
    hostile.client.submit("AFTER-HOSTILE-client", [(p.name, p.read_bytes()) for p in fresh[2:]])
    assert hostile.api.wait_for("AFTER-HOSTILE-api")["counts"]["monocyte"] == 2
    assert hostile.client.wait("AFTER-HOSTILE-client", timeout=120).counts["myeloblast"] == 2
    assert all(p.poll() is None for p in hostile.stack.workers)
