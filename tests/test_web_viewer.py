"""The radiographer's viewer in Chromium, judged by what is on the screen: the canvas's pixels under
each window preset and a drag (and how many paints a second a drag gets), a measured line against
the phantom's known spacing, zoom against a known feature's size, one slice per wheel notch through
a 60-slice series, the frames of a multi-frame instance, patients and studies found by a search, and
no regions where a density threshold means nothing. Same service and browser as tests/test_web.py.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from scripts.dev import phantom
from tests import images
from tests import test_web as web
from tests.test_web import Service, Tab, canvas_spread, log_in, until, upload_row

# tests/test_web.py's fixtures, for this module too (a service of its own: they are module-scoped)
browser, service, tab = web.browser, web.service, web.tab

pytestmark = pytest.mark.slow

SIZE = 256
SPACING_MM = 0.7
# The series phantom's vertebra (scripts/dev/phantom.py series_discs): 800 HU at (64, 85) of 128, radius 5 mm.
SCALE = SIZE / 128
BONE = (round(64 * SCALE), round(85 * SCALE))
TISSUE = (round(SIZE / 2 - SIZE * 0.2), SIZE // 2)  # soft tissue, clear of the discs and the gas pocket


@pytest.fixture(scope="module")
def series_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-slice CT series with a patient (Doe^Jane, MRN-PHI-0042), as a folder."""
    folder = tmp_path_factory.mktemp("viewer-series") / "ct"
    folder.mkdir()
    for number, dataset in enumerate(phantom.ct_series(60, size=SIZE, seed=404, phi=True), start=1):
        (folder / f"slice_{number:03d}.dcm").write_bytes(phantom.dicom_bytes(dataset))
    return folder


def pixel(page: Any, x: int, y: int) -> int:
    """The grey level the viewer's canvas shows at image pixel (x, y)."""
    return int(
        page.evaluate(
            "([x, y]) => document.querySelector('.viewport canvas').getContext('2d').getImageData(x, y, 1, 1).data[0]",
            [x, y],
        )
    )


def to_screen(page: Any, x: float, y: float) -> tuple[float, float]:
    """Where image pixel (x, y) is on the screen (the canvas is drawn at the image's own size)."""
    box = page.evaluate(
        "() => { const c = document.querySelector('.viewport canvas'); const r = c.getBoundingClientRect();"
        " return [r.left, r.top, r.width / c.width, r.height / c.height]; }"
    )
    return box[0] + (x + 0.5) * box[2], box[1] + (y + 0.5) * box[3]


def open_series(tab: Tab, service: Service, series_files: Path, username: str) -> None:
    from playwright.sync_api import expect

    page = tab.page
    service.create_user(username)
    log_in(tab, service, username)
    page.get_by_label("Upload a folder").set_input_files(series_files)
    expect(page.get_by_label("All uploads finished: 60 of 60 files", exact=False)).to_be_visible(timeout=120_000)
    page.get_by_role("link", name=re.compile("^Series of 60 slices")).click()
    expect(page.get_by_role("heading", name="CT series of 60 slices")).to_be_focused()
    until(page, lambda: canvas_spread(page) > 100, timeout_s=30)


def test_web_viewer_windows_zooms_measures_and_steps_a_60_slice_series(
    tab: Tab, service: Service, series_files: Path
) -> None:
    from playwright.sync_api import expect

    page = tab.page
    open_series(tab, service, series_files, "rita")
    center = page.get_by_label("Window center")
    width = page.get_by_label("Window width")
    expect(center).to_have_value("40")
    expect(width).to_have_value("400")

    # Presets: each changes the picture as its window says (soft tissue ~40 HU, the vertebra 800 HU)
    soft = (pixel(page, *TISSUE), pixel(page, *BONE))
    assert 110 <= soft[0] <= 150 and soft[1] == 255, soft
    page.get_by_role("button", name="Bone").click()
    expect(center).to_have_value("300")
    until(page, lambda: pixel(page, *BONE) < 255)
    bone = (pixel(page, *TISSUE), pixel(page, *BONE))
    assert bone[0] < soft[0] - 20 and bone[1] > 170, (soft, bone)  # tissue goes dark, bone stays bright
    page.get_by_role("button", name="Lung").click()
    until(page, lambda: pixel(page, *TISSUE) > 200)  # W1500/L-600: soft tissue near white
    page.get_by_role("button", name="Brain").click()
    expect(width).to_have_value("80")
    page.get_by_role("button", name="Reset window").click()
    expect(center).to_have_value("40")
    until(page, lambda: pixel(page, *TISSUE) == soft[0])

    # Numbers: typed, the picture follows
    width.fill("2000")
    width.press("Enter")
    until(page, lambda: pixel(page, *BONE) < 255)

    # A drag across the image widens the window and up and down moves its center
    page.get_by_role("button", name="Reset window").click()
    before = pixel(page, *TISSUE)
    x, y = to_screen(page, SIZE / 2, SIZE / 2)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 120, y - 60, steps=12)
    page.mouse.up()
    assert float(width.input_value()) > 400 and float(center.input_value()) > 40
    until(page, lambda: pixel(page, *TISSUE) != before)
    page.get_by_role("button", name="Bone").click()
    tab.shot("bone-window")

    # Measure: a line across 176 image pixels at 0.7 mm reads 123.2 mm (within 1 %)
    page.get_by_role("button", name="Measure").click()
    expect(page.get_by_role("button", name="Measure")).to_have_attribute("aria-pressed", "true")
    a = to_screen(page, 40, 128)
    b = to_screen(page, 216, 128)
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move(*b, steps=8)
    page.mouse.up()
    length = page.get_by_label("Measured length")
    expect(length).to_have_text(re.compile(r"^\d+\.\d mm$"))
    measured = float(length.inner_text().split()[0])
    assert abs(measured - 176 * SPACING_MM) <= 0.01 * 176 * SPACING_MM, measured
    tab.shot("measured")

    # Zoom: "Zoom in" doubles the vertebra on the screen; the line stays on the same image points
    def vertebra_on_screen() -> float:
        shot = Image.open(io.BytesIO(page.locator(".viewport").screenshot())).convert("L")
        row = np.asarray(shot)[round(to_screen(page, *BONE)[1] - page.locator(".viewport").bounding_box()["y"])]
        return float(np.count_nonzero(row > 160))

    before_zoom = vertebra_on_screen()
    page.get_by_role("button", name="Zoom in").click()
    until(page, lambda: abs(vertebra_on_screen() - 2 * before_zoom) <= 4)
    line = page.locator(".measure line")
    assert float(line.get_attribute("x1")) == pytest.approx(40, abs=1)
    assert float(line.get_attribute("x2")) == pytest.approx(216, abs=1)
    expect(page.locator("figcaption")).to_contain_text("zoom 200 %")
    tab.shot("zoomed")
    page.get_by_role("button", name="Fit").click()
    expect(page.locator("figcaption")).to_contain_text("zoom 100 %")

    # ctrl + wheel zooms about the pointer: the vertebra under it stays under it
    bone_at = to_screen(page, *BONE)
    page.mouse.move(*bone_at)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -100)
    page.keyboard.up("Control")
    expect(page.locator("figcaption")).not_to_contain_text("zoom 100 %")
    assert to_screen(page, *BONE) == pytest.approx(bone_at, abs=2)

    # Pan: with "Pan" pressed a drag moves the image and its overlay together, by the drag
    page.get_by_role("button", name="Pan").click()
    expect(page.get_by_role("button", name="Pan")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_role("button", name="Measure")).to_have_attribute("aria-pressed", "false")
    line_before = page.locator(".measure line").bounding_box()
    page.mouse.move(*bone_at)
    page.mouse.down()
    page.mouse.move(bone_at[0] + 60, bone_at[1] + 30, steps=6)
    page.mouse.up()
    assert to_screen(page, *BONE) == pytest.approx((bone_at[0] + 60, bone_at[1] + 30), abs=2)
    line_after = page.locator(".measure line").bounding_box()
    assert line_before is not None and line_after is not None
    assert (line_after["x"] - line_before["x"], line_after["y"] - line_before["y"]) == pytest.approx((60, 30), abs=2)

    # Two fingers spread apart on a touch screen zoom in
    zoom_text = page.locator("figcaption").inner_text()
    cdp = page.context.new_cdp_session(page)
    cx, cy = bone_at
    cdp.send(
        "Input.dispatchTouchEvent",
        {"type": "touchStart", "touchPoints": [{"x": cx - 20, "y": cy, "id": 1}, {"x": cx + 20, "y": cy, "id": 2}]},
    )
    for k in range(1, 6):
        cdp.send(
            "Input.dispatchTouchEvent",
            {
                "type": "touchMove",
                "touchPoints": [{"x": cx - 20 - 10 * k, "y": cy, "id": 1}, {"x": cx + 20 + 10 * k, "y": cy, "id": 2}],
            },
        )
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    expect(page.locator("figcaption")).not_to_have_text(zoom_text)
    page.get_by_role("button", name="Pan").click()
    page.get_by_role("button", name="Fit").click()
    expect(page.locator("figcaption")).to_contain_text("zoom 100 %")

    # The stack: one slice per wheel notch, and the window and zoom stay from slice to slice
    caption = page.locator("figcaption")
    expect(caption).to_contain_text("Slice 1 of 60")
    page.locator(".viewport").hover()
    for notch in range(1, 6):
        page.mouse.wheel(0, 100)
        expect(caption).to_contain_text(f"Slice {1 + notch} of 60")
    # A trackpad's small deltas: ten of 10 px make two steps of 50
    for _ in range(10):
        page.mouse.wheel(0, 10)
    expect(caption).to_contain_text("Slice 8 of 60")
    expect(page.get_by_label("Window center")).to_have_value("300")  # the bone window, kept
    page.keyboard.press("End")
    expect(caption).to_contain_text("Slice 60 of 60")
    page.get_by_role("button", name="Play").click()
    until(page, lambda: "Slice 60 of 60" not in caption.inner_text())  # cine wraps round and runs on
    page.get_by_role("button", name="Play").click()
    expect(page.get_by_role("button", name="Play")).to_have_attribute("aria-pressed", "false")


DRAG_FOR_A_SECOND = """async () => {
    // One pointer move an animation frame for a second, as a hand drags: how many of them are painted.
    const viewport = document.querySelector('.viewport');
    const box = viewport.getBoundingClientRect();
    const [x, y] = [box.left + box.width / 2, box.top + box.height / 2];
    const event = (type, i) => new PointerEvent(type, {
        pointerId: 7, pointerType: 'mouse', button: 0, buttons: 1, bubbles: true, clientX: x + i * 2, clientY: y - i,
    });
    viewport.dispatchEvent(event('pointerdown', 0));
    performance.clearMarks('viewer-paint');
    const started = performance.now();
    let moves = 0;
    await new Promise((done) => {
        const tick = () => {
            moves += 1;
            viewport.dispatchEvent(event('pointermove', moves));
            if (performance.now() - started < 1000) requestAnimationFrame(tick); else done();
        };
        requestAnimationFrame(tick);
    });
    await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
    const elapsed = performance.now() - started;
    viewport.dispatchEvent(event('pointerup', moves));
    return { paints: performance.getEntriesByName('viewer-paint').length, moves, elapsed };
}"""


def test_web_viewer_windows_a_512_ct_at_display_rate_while_dragging(tab: Tab, service: Service, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = tab.page
    slice_ = tmp_path / "ct512.dcm"
    slice_.write_bytes(phantom.dicom_bytes(phantom.ct_slice_dataset(512, seed=31)))
    service.create_user("sven")
    log_in(tab, service, "sven")
    page.get_by_label("Upload scans").set_input_files(slice_)
    page.get_by_role("link", name=re.compile(r"^ct512\.dcm")).click()
    until(page, lambda: canvas_spread(page) > 100, timeout_s=30)
    assert page.evaluate("document.querySelector('.viewport canvas').width") == 512
    width = page.get_by_label("Window width")
    drag = page.evaluate(DRAG_FOR_A_SECOND)
    fps = drag["paints"] / (drag["elapsed"] / 1000)
    moved = f"{drag['paints']} paints for {drag['moves']} moves in {drag['elapsed']:.0f} ms"
    print(f"\nwindowing a 512x512 CT by drag: {moved} = {fps:.1f} per second")
    assert fps >= 15, drag  # the target is 30; CI machines are busy
    expect(width).not_to_have_value("400")


def test_web_viewer_steps_through_the_frames_of_a_multiframe_instance(tab: Tab, service: Service) -> None:
    from playwright.sync_api import expect

    page = tab.page
    path = get_testdata_file("eCT_Supplemental.dcm")  # an enhanced CT, 2 frames
    assert path is not None
    service.create_user("mia")
    log_in(tab, service, "mia")
    page.get_by_label("Upload scans").set_input_files(str(path))
    tile = page.get_by_role("link", name=re.compile(r"^eCT_Supplemental\.dcm, CT, 2 frames"))
    expect(tile).to_be_visible()
    tile.click()
    caption = page.locator("figcaption")
    expect(caption).to_contain_text("Frame 1 of 2")
    until(page, lambda: canvas_spread(page) > 50)
    first = page.locator(".viewport canvas").screenshot()
    # On a phone: a finger swiped up steps to the next frame, down to the one before (touch events
    # as Chromium gets them from a touch screen)
    cdp = page.context.new_cdp_session(page)
    box = page.locator(".viewport").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def swipe(dy: float) -> None:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
        for k in range(1, 6):
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y + dy * k / 5}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})

    swipe(-60)
    expect(caption).to_contain_text("Frame 2 of 2")
    swipe(60)
    expect(caption).to_contain_text("Frame 1 of 2")
    page.keyboard.press("ArrowDown")
    expect(caption).to_contain_text("Frame 2 of 2")
    until(page, lambda: page.locator(".viewport canvas").screenshot() != first)
    expect(page.get_by_role("button", name="Next frame")).to_be_disabled()
    tab.shot("multiframe")


def test_web_library_groups_by_patient_and_study_and_finds_them_by_search(
    tab: Tab, service: Service, series_files: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = tab.page
    service.create_user("nora")
    log_in(tab, service, "nora")
    # Two patients: Doe^Jane (the 60 slices, MRN-PHI-0042) and Roe^Richard (one slice, another ID)
    other = phantom.ct_series(1, size=64, seed=808, phi=True)[0]
    other.PatientName, other.PatientID, other.AccessionNumber = "Roe^Richard", "ROE-0007", "ACC-ROE-1"
    other.StudyDate, other.StudyDescription = "20250310", "CT head"
    roe = tmp_path / "roe.dcm"
    roe.write_bytes(phantom.dicom_bytes(other))
    png = tmp_path / "knee.png"
    png.write_bytes(images.png8(size=128, seed=9, regions=(images.Region(40, 50, 12, 10),)))
    page.get_by_label("Upload a folder").set_input_files(series_files)
    expect(page.get_by_label("All uploads finished: 60 of 60 files", exact=False)).to_be_visible(timeout=120_000)
    page.get_by_label("Upload scans").set_input_files([roe, png])
    expect(page.get_by_label("All uploads finished: 2 of 2 files", exact=False)).to_be_visible()

    studies = page.get_by_role("region", name="Patients and studies")
    doe = studies.get_by_role("region", name=re.compile(r"^Doe, Jane"))
    roe_patient = studies.get_by_role("region", name=re.compile(r"^Roe, Richard"))
    expect(doe).to_contain_text("ID MRN-PHI-0042")
    expect(doe.get_by_role("link", name=re.compile("^Series of 60 slices"))).to_be_visible()
    expect(roe_patient).to_contain_text("ID ROE-0007")
    expect(
        page.get_by_role("region", name=re.compile("^Images")).get_by_role("link", name=re.compile("^knee.png"))
    ).to_be_visible()
    # The upload list, folded, leaves the library in sight at 1366 x 768
    page.set_viewport_size({"width": 1366, "height": 768})
    page.evaluate("window.scrollTo(0, 0)")
    assert page.get_by_role("heading", name="Patients and studies").bounding_box()["y"] < 768
    tab.shot("library")

    # Search by patient ID (the server matches, with the wildcards OHIF uses)
    page.get_by_label("Search").fill("PHI-0042")
    page.get_by_role("button", name="Find studies").click()
    expect(studies.get_by_role("region", name=re.compile(r"^Doe, Jane"))).to_be_visible()
    expect(studies.get_by_role("region", name=re.compile(r"^Roe, Richard"))).to_have_count(0)
    # By name, in any case; and a study-date range that leaves Doe's 2024 study out
    page.get_by_label("Search").fill("roe")
    page.get_by_role("button", name="Find studies").click()
    expect(studies.get_by_role("region", name=re.compile(r"^Roe, Richard"))).to_be_visible()
    expect(studies.get_by_role("region", name=re.compile(r"^Doe, Jane"))).to_have_count(0)
    page.get_by_label("Search").fill("")
    page.get_by_label("Study date from").fill("2025-01-01")
    page.get_by_role("button", name="Find studies").click()
    expect(studies.get_by_role("region", name=re.compile(r"^Roe, Richard"))).to_be_visible()
    expect(studies.get_by_role("region", name=re.compile(r"^Doe, Jane"))).to_have_count(0)
    page.get_by_role("button", name="Clear search").click()
    expect(studies.get_by_role("region", name=re.compile(r"^Doe, Jane"))).to_be_visible()
    tab.shot("search")


def test_web_png_shows_bright_regions_and_a_deleted_scan_leaves_the_upload_list(
    tab: Tab, service: Service, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = tab.page
    service.create_user("olga")
    log_in(tab, service, "olga")
    png = tmp_path / "hand.png"
    png.write_bytes(images.png8(size=128, seed=21, regions=(images.Region(30, 40, 14, 12),)))
    page.get_by_label("Upload scans").set_input_files(png)
    page.get_by_role("link", name=re.compile(r"^hand\.png")).click()
    expect(page.get_by_role("table", name=re.compile(r"^Bright regions"))).to_be_visible()
    expect(page.get_by_role("table", name=re.compile(r"^Dense"))).to_have_count(0)
    until(page, lambda: canvas_spread(page) > 50)
    page.get_by_role("button", name="Delete scan").click()
    page.get_by_role("dialog", name="Delete this scan?").get_by_role("button", name="Delete", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Deleted hand.png.")
    page.get_by_role("button", name="Show all 1 upload").click()
    row = upload_row(page, "hand.png")
    expect(row).to_contain_text("Stored, since deleted")
    expect(row.get_by_role("link")).to_have_count(0)


def test_web_an_image_uploaded_while_the_library_loads_stays_in_it(tab: Tab, service: Service, tmp_path: Path) -> None:
    """The library's first page was listed by the server before an upload made while it was on its
    way: the page must not drop the uploaded image (it did, now and then, in CI: a tile detached)."""
    from playwright.sync_api import Route, expect

    page = tab.page
    service.create_user("lena")
    held: list[tuple[Route, Any]] = []
    images_page = re.compile(r".*/api/v1/scans\?(?:.*&)?dicom=false.*")
    # The server answers the library's first page at once; the answer is held here until after the upload.
    page.route(images_page, lambda route: held.append((route, route.fetch())))
    log_in(tab, service, "lena")
    until(page, lambda: bool(held))
    png = tmp_path / "late.png"
    png.write_bytes(images.png8(size=128, seed=23, regions=(images.Region(30, 40, 14, 12),)))
    page.get_by_label("Upload scans").set_input_files(png)
    tile = page.get_by_role("link", name=re.compile(r"^late\.png"))
    expect(tile).to_be_visible()
    route, answer = held[0]
    route.fulfill(response=answer)  # listed before the upload: it holds no late.png
    page.unroute(images_page)
    expect(page.get_by_text("Loading images…")).to_have_count(0)
    expect(tile).to_be_visible()
    tile.click()
    expect(page.get_by_role("table", name=re.compile(r"^Bright regions"))).to_be_visible()


def test_web_two_encodings_of_one_mr_instance_are_one_image_with_no_regions(
    tab: Tab, service: Service, tmp_path: Path
) -> None:
    """MR_small.dcm and its RLE encoding share a SOP Instance UID: the second is refused by name, first
    in the upload list, and the one MR is an image, not a "series"; an MR gets no density regions (the
    page says why); its window still drags, and the CT presets are off."""
    from playwright.sync_api import expect

    page = tab.page
    service.create_user("mara")
    log_in(tab, service, "mara")
    files = []
    for name in ("MR_small.dcm", "MR_small_RLE.dcm"):
        target = tmp_path / name
        target.write_bytes(Path(get_testdata_file(name)).read_bytes())
        files.append(target)
    page.get_by_label("Upload scans").set_input_files(files)
    status = page.get_by_role("status").filter(has_text="Uploads finished")
    expect(status).to_contain_text("1 stored, 0 already stored, 1 rejected", timeout=30_000)
    expect(status).to_contain_text("MR_small")  # the rejected file, by name
    rejected = page.get_by_role("alert").filter(has_text="SOP Instance UID")
    expect(rejected).to_have_count(1)
    expect(page.get_by_role("link", name=re.compile("^Series of"))).to_have_count(0)
    tiles = page.get_by_role("link", name=re.compile(r"^MR_small"))
    expect(tiles).to_have_count(1)
    stored = tiles.get_attribute("aria-label").split(",")[0]
    tiles.click()
    expect(page.get_by_role("heading", name=stored)).to_be_focused()
    expect(page.get_by_role("link", name="Open its series")).to_have_count(0)
    expect(page.get_by_text("No regions are measured on this image: MR", exact=False)).to_be_visible()
    expect(page.get_by_role("table", name=re.compile("regions"))).to_have_count(0)
    for preset in ("Soft tissue", "Lung", "Bone", "Brain"):
        expect(page.get_by_role("button", name=preset)).to_be_disabled()
    until(page, lambda: canvas_spread(page) > 50)
    width = page.get_by_label("Window width")
    before = float(width.input_value())
    box = page.locator(".viewport").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y, steps=6)
    page.mouse.up()
    assert float(width.input_value()) > before
    # Scans stored before the SOP Instance UID rule (migration 010) can hold one instance twice: the
    # library still shows it once, the newest upload.
    kept = page.evaluate(
        """async () => {
            const { groupBySeries } = await import('/js/grid.js');
            const scan = (scanId, createdAt, sop) => ({ scanId, createdAt, filename: scanId,
                dicom: { seriesInstanceUid: '1.2.3', sopInstanceUid: sop, instanceNumber: 1 } });
            return groupBySeries([scan('b', '2026-02-01', '1.2.3.1'), scan('a', '2026-01-01', '1.2.3.1')])
                .map((group) => group.scans.map((s) => s.scanId));
        }"""
    )
    assert kept == [["b"]]


def test_web_chest_cr_too_large_to_send_decoded_windows_from_jpeg_lossless_and_measures_at_the_detector(
    tab: Tab, service: Service, tmp_path: Path
) -> None:
    """A 2,000 x 2,500 CR (MONOCHROME1, 12 bits, the file's window, ImagerPixelSpacing 0.139 mm) is 10 MB
    decoded, more than one response carries: its frame comes as JPEG Lossless SV1, decoded in the page
    by the decoder loaded then, and windowed from its stored values; no density regions on a CR, and
    a length measured on it is at the detector."""
    from playwright.sync_api import expect
    from pydicom.uid import JPEGLosslessSV1

    page = tab.page
    cr = tmp_path / "chest.dcm"
    cr.write_bytes(phantom.dicom_bytes(phantom.chest_cr_dataset(), transfer_syntax=JPEGLosslessSV1))
    service.create_user("carl")
    log_in(tab, service, "carl")
    requests: list[Any] = []
    page.on("request", lambda request: requests.append(request))
    page.get_by_label("Upload scans").set_input_files(cr)
    page.get_by_role("link", name=re.compile(r"^chest\.dcm, CR")).click()
    until(page, lambda: canvas_spread(page) > 100, timeout_s=60)
    size = "(c => [c.width, c.height])(document.querySelector('.viewport canvas'))"
    assert page.evaluate(size) == [2000, 2500]
    frames = [r for r in requests if "/frames/1" in r.url]
    assert frames and all("transfer-syntax=1.2.840.10008.1.2.4.70" in r.headers["accept"] for r in frames)
    assert any(r.url.endswith("/vendor/jpeg-lossless-decoder-js-2.1.2/lossless.js") for r in requests)

    # The file's window, MONOCHROME1 shown inverted: the air beside the chest (high values) dark, the
    # spine (low values: the most attenuation) light
    center, width = page.get_by_label("Window center"), page.get_by_label("Window width")
    file_window = (str(int(phantom.CR_WINDOW[0])), str(int(phantom.CR_WINDOW[1])))
    expect(center).to_have_value(file_window[0])
    expect(width).to_have_value(file_window[1])
    air, spine = (40, 1250), (1000, 1250)
    assert pixel(page, *air) < 40 < 160 < pixel(page, *spine), (pixel(page, *air), pixel(page, *spine))
    expect(page.get_by_text("No regions are measured on this image: CR", exact=False)).to_be_visible()
    for preset in ("Soft tissue", "Lung", "Bone", "Brain"):
        expect(page.get_by_role("button", name=preset)).to_be_disabled()

    # Windowing works on the stored values: a narrow window about the spine's value turns the air black
    # and changes the spine; "Reset window" goes back to the file's
    before = pixel(page, *spine)
    width.fill("400")
    width.press("Enter")
    until(page, lambda: pixel(page, *spine) != before)
    page.get_by_role("button", name="Reset window").click()
    expect(center).to_have_value(file_window[0])
    until(page, lambda: pixel(page, *spine) == before)

    # A line across 1,000 image pixels at 0.139 mm reads 139.0 mm, at the detector (within 1 %)
    page.get_by_role("button", name="Measure").click()
    start, end = to_screen(page, 500, 2200), to_screen(page, 1500, 2200)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=8)
    page.mouse.up()
    text = page.locator("output[aria-label='Measured length']").inner_text()
    assert text.endswith(" mm at the detector"), text
    assert abs(float(text.split()[0].replace(",", "")) - 139.0) <= 1.39, text
    tab.shot("chest-cr")
