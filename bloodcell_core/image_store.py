"""Content-addressed image stores: messages carry a sha256, never image bytes.

``file``: BLOODCELL_HOME/images/ab/cd/<sha256>, for one machine (or a shared filesystem).
``database``: the bytes in the ``images`` table, reachable by every worker that reaches the database.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from bloodcell_core.config import Settings
from bloodcell_core.db import Image


class ImageNotFound(KeyError):
    pass


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, session: Session, data: bytes) -> str:
        sha256 = sha256_of(data)
        path = self._path(sha256)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # write-then-rename: a reader never sees half an image
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
                handle.write(data)
            os.replace(handle.name, path)
        if session.get(Image, sha256) is None:
            session.add(Image(sha256=sha256, n_bytes=len(data)))
        return sha256

    def get(self, session: Session, sha256: str) -> bytes:
        try:
            return self._path(sha256).read_bytes()
        except FileNotFoundError:
            raise ImageNotFound(f"image {sha256} is not in the file store {self.root}") from None


class DatabaseImageStore:
    def put(self, session: Session, data: bytes) -> str:
        sha256 = sha256_of(data)
        if session.get(Image, sha256) is None:
            session.add(Image(sha256=sha256, n_bytes=len(data), content=data))
        return sha256

    def get(self, session: Session, sha256: str) -> bytes:
        content = session.scalar(select(Image.content).where(Image.sha256 == sha256))
        if content is None:
            raise ImageNotFound(f"image {sha256} is not in the database image store")
        return content


def image_store(settings: Settings) -> FileImageStore | DatabaseImageStore:
    settings.validate()
    if settings.image_store == "database":
        return DatabaseImageStore()
    return FileImageStore(settings.home / "images")
