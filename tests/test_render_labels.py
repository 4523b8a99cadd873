"""The annotated rendering's numbers: scaled with the image and never covering more than 3 % of it.

A label is drawn over anatomy, so its coverage is measured as drawn: the same boxes rendered with
and without numbers, and every pixel that differs counted.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from shared.imaging import render
from shared.imaging.render import LABEL_AREA_BUDGET, MIN_LABEL_FONT_SIZE, Box, Label


def anatomy(side: int) -> Image.Image:
    """Seeded grey noise, never black: every pixel a label's black background covers shows in the diff."""
    levels = np.random.default_rng(side).integers(60, 200, size=(side, side), dtype=np.uint8)
    return Image.fromarray(levels, "L")


def grid_boxes(side: int, count: int) -> list[Box]:
    """count small boxes spread in a grid over a side x side image, in raster order as findings come."""
    per_row = int(np.ceil(np.sqrt(count)))
    step = side // (per_row + 1)
    box = max(3, step // 3)
    return [(step * (1 + i % per_row), step * (1 + i // per_row), box, box) for i in range(count)]


def rectangles(side: int, labels: list[Label]) -> NDArray[np.bool_]:
    covered = np.zeros((side, side), dtype=np.bool_)
    for label in labels:
        covered[label.y : label.y + label.height, label.x : label.x + label.width] = True
    return covered


def label_pixels(preview: Image.Image, boxes: list[Box]) -> NDArray[np.bool_]:
    """The pixels the numbers change: the annotated image with numbers against it with outlines only."""
    numbered = np.asarray(render.annotate(preview, boxes))
    outlines = np.asarray(render.annotate(preview, boxes, numbered=False))
    changed: NDArray[np.bool_] = (numbered != outlines).any(axis=2)
    return changed


@pytest.mark.parametrize(("side", "count"), [(128, 19), (128, 60), (512, 19), (512, 200)])
def test_labels_cover_at_most_three_percent_of_the_image(side: int, count: int) -> None:
    # Given many regions (19 is what a face photograph gave) on a small and a large image
    preview, boxes = anatomy(side), grid_boxes(side, count)

    # When they are outlined and numbered
    changed = label_pixels(preview, boxes)
    layout = render.label_layout((side, side), boxes)

    # Then the numbers change at most 3 % of the pixels, all inside the layout's rectangles, which
    # are what the numbers cover (their black background) and together stay within the budget too
    budget = LABEL_AREA_BUDGET * side * side
    covered = rectangles(side, layout)
    assert np.count_nonzero(changed) <= budget
    assert not (changed & ~covered).any()
    assert np.count_nonzero(changed) >= 0.95 * np.count_nonzero(covered)
    assert sum(label.area for label in layout) <= budget
    # Numbered from 1 without gaps, at a legible size: a reader finds label n on the nth row
    assert [label.number for label in layout] == list(range(1, len(layout) + 1))
    assert all(label.font_size >= MIN_LABEL_FONT_SIZE for label in layout)


def test_small_images_with_many_regions_number_only_the_first_and_outline_all() -> None:
    preview, boxes = anatomy(128), grid_boxes(128, 19)

    layout = render.label_layout((128, 128), boxes)
    outlines = np.asarray(render.annotate(preview, boxes, numbered=False)).astype(int)

    # 19 numbers of the old 10 px font covered ~13 % of a 128 x 128 image: now the first few only
    assert 0 < len(layout) < len(boxes)
    assert {label.font_size for label in layout} == {MIN_LABEL_FONT_SIZE}
    # Every box is still outlined, labelled or not: the last one's left edge is red
    x, y, _, height = boxes[-1]
    red = outlines[y + height // 2, x - 1]
    assert red[0] - red[1] > 100


def test_labels_scale_with_the_image_when_they_fit() -> None:
    boxes128, boxes512, boxes2048 = grid_boxes(128, 3), grid_boxes(512, 3), grid_boxes(2048, 3)

    small = render.label_layout((128, 128), boxes128)
    large = render.label_layout((512, 512), boxes512)
    huge = render.label_layout((2048, 2048), boxes2048)

    assert [len(small), len(large), len(huge)] == [3, 3, 3]
    assert small[0].font_size == MIN_LABEL_FONT_SIZE
    assert large[0].font_size == 512 // 40
    assert huge[0].font_size == 2048 // 40
    assert small[0].height < large[0].height < huge[0].height


def test_many_labels_shrink_before_any_is_dropped() -> None:
    # 60 labels at 512 px do not fit at the preferred 12 px, but do at a smaller legible size
    boxes = grid_boxes(512, 60)

    layout = render.label_layout((512, 512), boxes)

    assert len(layout) == len(boxes)
    assert MIN_LABEL_FONT_SIZE <= layout[0].font_size < 512 // 40


def test_a_tiny_image_gets_outlines_and_no_numbers() -> None:
    preview, boxes = anatomy(24), [(8, 8, 6, 6)]

    assert render.label_layout((24, 24), boxes) == []
    assert not label_pixels(preview, boxes).any()
    annotated = np.asarray(render.annotate(preview, boxes)).astype(int)
    assert annotated[11, 7, 0] - annotated[11, 7, 1] > 100


def test_the_layout_is_deterministic_and_is_what_the_jpeg_shows() -> None:
    # A flat grey preview: the only dark pixels of the JPEG are the labels' backgrounds
    preview, boxes = Image.new("L", (128, 128), 128), grid_boxes(128, 30)

    layout = render.label_layout((128, 128), boxes)
    assert layout == render.label_layout((128, 128), list(boxes))
    with Image.open(io.BytesIO(render.render_annotated(preview, boxes))) as jpeg:
        shown = np.asarray(jpeg.convert("RGB")).astype(int)
    # The labels' dark backgrounds are where the layout puts them, and nowhere else is dark
    covered = rectangles(128, layout)
    dark = shown.max(axis=2) < 60
    assert np.count_nonzero(dark & covered) >= 0.5 * np.count_nonzero(covered)
    assert np.count_nonzero(dark & ~covered) <= 0.01 * np.count_nonzero(~covered)
