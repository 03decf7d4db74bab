"""Content-addressed image stores: messages carry a sha256, never image bytes.

``file``: BLOODCELL_HOME/images/ab/cd/<sha256>, for one machine (or a shared filesystem).
``database``: the bytes in the ``images`` table, reachable by every worker that reaches the database.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from bloodcell_core.config import Settings
from bloodcell_core.service.db import insert_new
from bloodcell_core.service.tables import Image

JOURNAL_DIR = ".written"


def journal_hour(at: float) -> str:
    """The journal folder of the UTC hour that contains AT (epoch seconds): YYYYMMDDHH."""
    return time.strftime("%Y%m%d%H", time.gmtime(at))


class ImageNotFound(KeyError):
    pass


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _add_missing_rows(session: Session, blobs: dict[str, bytes], keep_bytes: bool) -> None:
    """One bulk insert for all images; those stored already (or by a concurrent submission) are skipped."""
    rows = [{"sha256": sha256, "n_bytes": len(data), "content": data if keep_bytes else None} for sha256, data in blobs.items()]
    insert_new(session, Image, rows, key=["sha256"])


class ImageStore:
    """Batch operations (``put_many``, ``get_many``) per backend; one-image helpers shared."""

    def put_many(self, session: Session, blobs: dict[str, bytes]) -> None:
        raise NotImplementedError

    def get_many(self, session: Session, sha256s: list[str]) -> dict[str, bytes]:
        raise NotImplementedError

    def missing_message(self, sha256: str) -> str:
        raise NotImplementedError

    def put(self, session: Session, data: bytes) -> str:
        """Store one image; returns its sha256."""
        sha256 = sha256_of(data)
        self.put_many(session, {sha256: data})
        return sha256

    def get(self, session: Session, sha256: str) -> bytes:
        """One stored image, or ImageNotFound."""
        found = self.get_many(session, [sha256])
        if sha256 not in found:
            raise ImageNotFound(self.missing_message(sha256))
        return found[sha256]


class FileImageStore(ImageStore):
    """Besides the images, a journal of writes: ``.written/<UTC hour>/<sha256>``, one empty file per image
    written or refreshed in that hour. The orphan sweep reads only the hours past its age limit and then
    removes them, so its work follows the submissions of an hour, not every image ever stored."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.journal = root / JOURNAL_DIR

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def record_write(self, sha256: str, at: float) -> None:
        """Note in the journal that the image's file was written or refreshed at AT (epoch seconds)."""
        entry = self.journal / journal_hour(at) / sha256
        try:
            os.close(os.open(entry, os.O_WRONLY | os.O_CREAT, 0o644))
        except FileNotFoundError:  # the hour's first write
            entry.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(entry, os.O_WRONLY | os.O_CREAT, 0o644))

    def put_many(self, session: Session, blobs: dict[str, bytes]) -> None:
        """Store images given as {sha256: bytes}; the caller hashed them already."""
        now = time.time()
        for sha256, data in blobs.items():
            path = self.path(sha256)
            self.record_write(sha256, now)  # before the file: a write cut short leaves its partial file in view
            try:
                # an existing file is refreshed: the sweep removes only old files no row references, and
                # this one may be an orphan that the rows of this submission are about to reference
                os.utime(path)
            except FileNotFoundError:
                self._write(path, data)
        _add_missing_rows(session, blobs, keep_bytes=False)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        """Write-then-rename, so a reader never sees half an image; plain system calls, because a
        sample stores hundreds of files and this is on its submission's critical path."""
        partial = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial"
        try:
            handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:  # the first image under this prefix
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(handle, view) :]
        except BaseException:
            os.close(handle)
            partial.unlink(missing_ok=True)
            raise
        os.close(handle)
        os.replace(partial, path)

    def get_many(self, session: Session, sha256s: list[str]) -> dict[str, bytes]:
        """The stored images among SHA256S; a missing one is left out."""
        found = {}
        for sha256 in sha256s:
            try:
                found[sha256] = self.path(sha256).read_bytes()
            except FileNotFoundError:
                pass
        return found

    def missing_message(self, sha256: str) -> str:
        return f"image {sha256} is not in the file store {self.root}"


class DatabaseImageStore(ImageStore):
    def put_many(self, session: Session, blobs: dict[str, bytes]) -> None:
        _add_missing_rows(session, blobs, keep_bytes=True)

    def get_many(self, session: Session, sha256s: list[str]) -> dict[str, bytes]:
        rows = session.execute(select(Image.sha256, Image.content).where(Image.sha256.in_(sha256s)))
        return {sha256: content for sha256, content in rows if content is not None}

    def missing_message(self, sha256: str) -> str:
        return f"image {sha256} is not in the database image store"


def file_store_root(settings: Settings) -> Path:
    return settings.home / "images"


def image_store(settings: Settings) -> ImageStore:
    settings.validate()
    if settings.image_store == "database":
        return DatabaseImageStore()
    return FileImageStore(file_store_root(settings))
