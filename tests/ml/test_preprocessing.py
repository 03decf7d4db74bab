import cv2
import numpy as np
import pytest
from helpers import KAGGLE5, encode, png_header

from bloodcell_core.ml.dataset import read_image_file
from bloodcell_core.ml.preprocessing import (
    ImageDecodeError,
    PreprocessingConfig,
    Preprocessor,
    augment,
    decode_image,
)
from bloodcell_core.plugin_types import Augmentation

pytestmark = pytest.mark.real_data

RED_BGR = (0, 0, 255)


def test_decode_converts_opencv_bgr_to_rgb():
    image = np.zeros((10, 12, 3), np.uint8)
    image[:] = RED_BGR
    for extension in (".png", ".jpg", ".bmp"):
        rgb = decode_image(encode(image, extension))
        assert rgb.shape == (10, 12, 3) and rgb.dtype == np.uint8
        assert rgb[5, 5, 0] > 240 and rgb[5, 5, 2] < 15, extension


def test_decode_grayscale_alpha_and_16_bit():
    gray = np.full((8, 8), 200, np.uint8)
    assert decode_image(encode(gray)).shape == (8, 8, 3)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 2] = 255  # red in BGRA
    rgba[..., 3] = 10
    assert decode_image(encode(rgba)).tolist()[0][0] == [255, 0, 0]
    deep = np.full((8, 8, 3), 65535, np.uint16)
    deep[..., 0] = 0  # blue channel off
    for extension in (".png", ".tiff"):
        rgb = decode_image(encode(deep, extension))
        assert rgb.dtype == np.uint8 and rgb[0, 0].tolist() == [255, 255, 0], extension


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"this is not an image", "not an image file"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 10, "not an image file"),
        # formats whose header Pillow cannot read are never handed to OpenCV: this one claims 20000 x 20000
        (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 20000 +X 20000\n" + bytes(64), "not an image file"),
        (png_header(100_000, 100_000), "exceeds the 100,000,000 pixel limit"),
        (png_header(12_000, 12_000), "exceeds the 100,000,000 pixel limit"),
    ],
)
def test_bad_bytes_raise_a_clear_error(data, message):
    with pytest.raises(ImageDecodeError, match=message) as raised:
        decode_image(data)
    assert "b'" not in str(raised.value) and "Pillow" not in str(raised.value) and "DOS" not in str(raised.value)


def test_preprocessor_output_matches_model_input():
    data = read_image_file(next((KAGGLE5 / "myeloblast").iterdir()))
    x = Preprocessor(PreprocessingConfig(input_size=(128, 96), steps=("center_crop",)))(data)
    assert x.shape == (128, 96, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5


def test_unknown_step_is_named():
    with pytest.raises(Exception, match="unknown preprocessing step 'sharpen'"):
        Preprocessor(PreprocessingConfig(input_size=(64, 64), steps=("sharpen",)))


def test_center_crop_removes_the_aspect_cue():
    preprocessor = Preprocessor(PreprocessingConfig(input_size=(32, 32), steps=("center_crop",)))
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, 100:200] = 255  # the centred square is white, the sides black
    assert preprocessor.to_uint8(encode(wide)).min() == 255


def test_augmentation_is_seeded_and_identity_without_ranges():
    image = cv2.resize(decode_image(read_image_file(next((KAGGLE5 / "basophil").iterdir()))), (64, 64))
    none = Augmentation(rotation_degrees=0, shift=0, shear=0, zoom=0, horizontal_flip=False)
    assert np.array_equal(augment(image, none, np.random.default_rng(0)), image)
    notebook = Augmentation()
    a = augment(image, notebook, np.random.default_rng(1))
    b = augment(image, notebook, np.random.default_rng(1))
    assert a.shape == image.shape and np.array_equal(a, b) and not np.array_equal(a, image)


def test_acquisition_augmentation_changes_colour_and_sharpness_and_is_seeded():
    """Stain and acquisition jitter (for other laboratories' images): off by default, seeded, within bounds."""
    from bloodcell_core.ml.preprocessing import acquisition_jitter
    from bloodcell_core.plugin_types import ACQUISITION_AUGMENTATION

    image = cv2.resize(decode_image(read_image_file(next((KAGGLE5 / "basophil").iterdir()))), (64, 64))
    assert not Augmentation().acquisition
    strong = Augmentation(**ACQUISITION_AUGMENTATION)
    outputs = [acquisition_jitter(image, strong, np.random.default_rng(k)) for k in range(8)]
    again = acquisition_jitter(image, strong, np.random.default_rng(3))
    assert np.array_equal(outputs[3], again)
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outputs)
    mean_shift = [np.abs(o.reshape(-1, 3).mean(axis=0) - image.reshape(-1, 3).mean(axis=0)).max() for o in outputs]
    assert max(mean_shift) > 5 and np.mean(mean_shift) < 60  # colour moves, the cell stays a cell
    assert acquisition_jitter(image, Augmentation(), np.random.default_rng(0)) is image


def test_colour_only_steps_at_the_end_run_after_the_resize():
    from plugins.cell_locator import locate_cell
    from plugins.colour_norm import reinhard

    def names(steps):
        return [step.name for step in steps]

    located = Preprocessor(PreprocessingConfig(input_size=(128, 128), steps=("locate_cell", "reinhard")))
    assert names(located.before_resize) == ["locate_cell"] and names(located.after_resize) == ["reinhard"]
    first = Preprocessor(PreprocessingConfig(input_size=(128, 128), steps=("reinhard", "locate_cell")))
    assert names(first.before_resize) == ["reinhard", "locate_cell"] and first.after_resize == []  # a colour step keeps its place

    image = decode_image(read_image_file(sorted((KAGGLE5 / "monocyte").iterdir())[0]))
    crop = locate_cell(image)
    expected = reinhard(cv2.resize(crop, (128, 128), interpolation=cv2.INTER_AREA))
    assert np.array_equal(located.from_decoded(image), expected)


@pytest.mark.parametrize(("version", "served"), [(1, True), (2, True), (3, False), (None, False)])
def test_models_of_the_earlier_preprocessing_version_are_still_served(version, served):
    recorded = PreprocessingConfig(input_size=(128, 128), steps=("locate_cell", "reinhard")).to_json() | {"version": version}
    if served:
        assert PreprocessingConfig.from_json(recorded).steps == ("locate_cell", "reinhard")
    else:
        with pytest.raises(ValueError, match="serves versions"):
            PreprocessingConfig.from_json(recorded)
