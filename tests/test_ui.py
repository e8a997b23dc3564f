"""The app layer's pictures: each shown picture is a file of its own."""

from __future__ import annotations

import numpy as np
from PIL import Image

from maskadapter.ui.events import served


def test_the_same_picture_twice_is_two_files_with_its_pixels(tmp_path):
    picture = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    first, second = served(picture, tmp_path / "out"), served(picture, tmp_path / "out")
    assert isinstance(first, str) and isinstance(second, str) and first != second
    for path in (first, second):
        with Image.open(path) as im:
            np.testing.assert_array_equal(np.asarray(im), picture)
    assert served(None, tmp_path) is None


def test_an_unwritable_folder_gives_the_array_back(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    picture = np.zeros((2, 2, 3), np.uint8)
    assert served(picture, blocker / "out") is picture
