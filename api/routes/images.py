"""Stored cell images by their sha256 (content-addressed: the headers let a client keep them)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import Reader
from bloodcell_core.edge import ClientDep, ImageSha256, image_headers

router = APIRouter(tags=["samples"])


@router.get("/v1/images/{image_sha256}", summary="A stored cell image (scope: read)")
def get_image(_: Reader, image_sha256: ImageSha256, client: ClientDep) -> Response:
    return Response(client.image(image_sha256), media_type="application/octet-stream", headers=image_headers(image_sha256))
