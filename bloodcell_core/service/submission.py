"""Submission: images stored by content hash, the sample and its cells created idempotently, limits enforced."""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bloodcell_core.config import Settings
from bloodcell_core.ml.serving import ImageTooLarge, image_dimensions
from bloodcell_core.service.audit_log import record_event
from bloodcell_core.service.db import get_row, session_scope
from bloodcell_core.service.errors import Conflict, LimitExceeded, NotFound, ServiceError
from bloodcell_core.service.image_store import image_store, sha256_of
from bloodcell_core.service.receipts import Submission
from bloodcell_core.service.states import FieldStatus, SampleStatus
from bloodcell_core.service.tables import IdempotencyKey, Image, Sample, SampleField, SampleImage

# No "/": accession ids appear in URL paths and file names.
ACCESSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def valid_accession_id(accession_id: str) -> bool:
    return ACCESSION_PATTERN.fullmatch(accession_id) is not None  # fullmatch: "$" would let "S-1\n" through


def check_accession_id(accession_id: str) -> None:
    if not valid_accession_id(accession_id):
        raise ServiceError(
            f"invalid sample id {accession_id[:200]!r}: 1-128 characters, letters, digits and . _ : - "
            "(starting with a letter or digit)"
        )


def cell_name(name: str) -> str:
    """A file name as a label that any database stores: NUL dropped, undecodable bytes shown as U+FFFD."""
    return name.replace("\x00", "").encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def check_image_limits(settings: Settings, name: str, data: bytes) -> None:
    """Refuse an image over the byte or pixel limit (pixels read from the header: bombs are never decoded)."""
    if len(data) > settings.max_image_bytes:
        raise LimitExceeded(f"image {name!r} is {len(data):,} bytes, over {settings.max_image_bytes:,} (BLOODCELL_MAX_IMAGE_BYTES)")
    over = f"over {settings.max_image_pixels:,} pixels (BLOODCELL_MAX_IMAGE_PIXELS)"
    try:
        size = image_dimensions(data)
    except ImageTooLarge:
        raise LimitExceeded(f"image {name!r} is {over}") from None
    if size is not None and size[0] * size[1] > settings.max_image_pixels:
        raise LimitExceeded(f"image {name!r} is {size[0]} x {size[1]} pixels, {over}")


def request_fingerprint(accession_id: str, image_sha256s: list[str], field_sha256s: Sequence[str] = ()) -> str:
    parts = [accession_id, *sorted(image_sha256s), *sorted(f"field:{sha}" for sha in field_sha256s)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def submit_sample(
    settings: Settings,
    accession_id: str,
    images: list[tuple[str, bytes]],
    actor: str,
    stored: Sequence[tuple[str, str]] = (),
    client_id: int | None = None,
    idempotency_key: str | None = None,
    fields: Sequence[tuple[str, bytes]] = (),
) -> Submission:
    """Store the images by content hash and create the sample and its cells, idempotently, in one transaction.

    ``fields`` are whole smear fields as (name, bytes): stored like images and queued for the worker,
    which finds their white cells and adds them as cells (``service.fields``). A field counts as one
    image towards the per-sample limit when submitted; its cells count when they are found.

    ``stored`` names images already in the store as (name, sha256). Submitting the same accession
    id again adds only images it did not have; the same images again change nothing. An API
    client's ``idempotency_key`` seen before returns that submission's sample (``replayed``); the
    same key with another request is a Conflict. Limits: BLOODCELL_MAX_IMAGE_BYTES and
    _MAX_IMAGE_PIXELS per image, _MAX_IMAGES_PER_SAMPLE per sample over all its submissions.
    """
    check_accession_id(accession_id)
    if not images and not stored and not fields:
        raise ServiceError("a sample needs at least one image or field")
    if idempotency_key is not None and client_id is None:
        raise ServiceError("an idempotency key belongs to an API client: pass client_id")
    for name, data in [*images, *fields]:
        check_image_limits(settings, name, data)
    hashed = [(cell_name(name), sha256_of(data), data) for name, data in images]
    hashed_fields = [(cell_name(name), sha256_of(data), data) for name, data in fields]
    fingerprint = request_fingerprint(
        accession_id, [sha for _, sha, _ in hashed] + [sha for _, sha in stored], [sha for _, sha, _ in hashed_fields]
    )
    store = image_store(settings)
    try:
        with session_scope(settings.database_url) as session:
            if idempotency_key is not None:
                seen = session.scalar(
                    select(IdempotencyKey).where(IdempotencyKey.client_id == client_id, IdempotencyKey.key == idempotency_key)
                )
                if seen is not None:
                    if seen.request_sha256 != fingerprint:
                        raise Conflict(f"Idempotency-Key {idempotency_key[:80]!r} was used before for a different request")
                    first = get_row(session, Sample, seen.sample_id)
                    return Submission(
                        sample_pk=first.id,
                        accession_id=first.accession_id,
                        new_cells=0,
                        status=first.status,
                        n_cells=len(first.cells),
                        replayed=True,
                        n_fields=len(first.fields),
                    )
            referenced = {sha for _, sha in stored}
            missing = referenced - set(session.scalars(select(Image.sha256).where(Image.sha256.in_(referenced))))
            if missing:
                raise NotFound(f"no stored image with sha256 {min(missing)[:80]!r}")
            sample = session.scalar(select(Sample).where(Sample.accession_id == accession_id))
            if sample is None:
                sample = Sample(accession_id=accession_id, status=SampleStatus.QUEUED, client_id=client_id)
                session.add(sample)
                session.flush()
            elif client_id is not None and sample.client_id not in (None, client_id):
                raise Conflict(f"sample {accession_id!r} was submitted by another API client")
            known = {cell.image_sha256 for cell in sample.cells}
            known_fields = {field.image_sha256 for field in sample.fields}
            total = len(known | {sha for _, sha, _ in hashed} | {sha for _, sha in stored}) + len(
                known_fields | {sha for _, sha, _ in hashed_fields}
            )
            if total > settings.max_images_per_sample:  # checked before any image is stored
                raise LimitExceeded(
                    f"sample {accession_id!r} would have {total} images and fields, over "
                    f"{settings.max_images_per_sample} (BLOODCELL_MAX_IMAGES_PER_SAMPLE)"
                )
            store.put_many(session, {sha: data for _, sha, data in hashed + hashed_fields})
            named = [(name, sha) for name, sha, _ in hashed] + list(stored)
            cells = []
            for name, sha256 in named:
                if sha256 not in known:
                    known.add(sha256)
                    cells.append({"sample_id": sample.id, "image_sha256": sha256, "name": name[:512]})
            if cells:  # one bulk insert: a sample has hundreds of cells
                session.execute(insert(SampleImage), cells)
            new_cells = len(cells)
            new_fields = []
            for name, sha256, _ in hashed_fields:
                if sha256 not in known_fields:
                    known_fields.add(sha256)
                    new_fields.append(
                        {"sample_id": sample.id, "image_sha256": sha256, "name": name[:512], "status": FieldStatus.QUEUED}
                    )
            if new_fields:
                session.execute(insert(SampleField), [row | {"status": FieldStatus.QUEUED} for row in new_fields])
            if new_cells or new_fields:
                sample.status = SampleStatus.QUEUED
                record_event(session, actor, "sample.submitted", accession_id, new_cells=new_cells, new_fields=len(new_fields))
            if idempotency_key is not None:
                session.add(IdempotencyKey(client_id=client_id, key=idempotency_key, request_sha256=fingerprint, sample_id=sample.id))
                session.flush()
            return Submission(
                sample_pk=sample.id,
                accession_id=accession_id,
                new_cells=new_cells,
                status=sample.status,
                n_cells=len(known),
                new_fields=len(new_fields),
                n_fields=len(known_fields),
            )
    except IntegrityError:
        raise Conflict(f"a concurrent request created sample {accession_id!r} or used the same Idempotency-Key: retry it") from None


def store_image(session: Session, *, settings: Settings, data: bytes) -> str:
    """Put one image into the store (for single-image classification); returns its sha256."""
    return image_store(settings).put(session, data)
