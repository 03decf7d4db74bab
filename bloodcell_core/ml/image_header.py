"""Image sizes from the header alone, before any pixel is decoded (for limits and decompression bombs)."""

from __future__ import annotations

import io
import warnings

import PIL.Image


class ImageDecodeError(ValueError):
    """The bytes are not an image OpenCV can decode (empty, truncated, too large, or another file type)."""


class ImageTooLarge(ImageDecodeError):
    """The header claims more pixels than Pillow opens at all (a likely decompression bomb): whoever refuses it
    names their own limit, since Pillow's ceiling is not one a laboratory configured."""


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from the image header alone, without decoding pixels; None if unreadable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
        try:
            with PIL.Image.open(io.BytesIO(data)) as image:
                return image.size
        except PIL.Image.DecompressionBombError:  # over twice Pillow's own ceiling, far above any configured limit
            raise ImageTooLarge("the image claims more pixels than any limit allows") from None
        except Exception:
            return None
