"""The label grid in a real browser (Chromium through Playwright) at 1280×800.

Keyboard-only labelling, bulk labelling, a correction on the review page, the shortcut
overlay, the unsaved marker, a failed save that keeps every label, playing a shot.
Screenshots go to var/test/screens/ (grid-*.png) for a look by eye.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image as PILImage
from skimage import data as skdata

from annotation.labels import save_labels
from annotation.models import Annotation, AnnotationEvent, Category
from tests.fixtures_browser import login, screenshot
from tests.test_grid_views import _grid_cache, add_candidates  # noqa: F401 (autouse fixture)
from viva.ingest.importer import import_image
from viva.media import write_jpeg, write_thumbnail
from viva.models import Collection, Image, Profile, Shot, Video

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SAMPLES = [
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "colorwheel",
    "hubble_deep_field",
    "retina",
    "camera",
    "coins",
    "moon",
    "horse",
]


def real_images(tmp: Path, n: int) -> list[Image]:
    """``n`` distinct photos from scikit-image (crops/flips of the bundled samples)."""
    collection, _ = Collection.objects.get_or_create(name="Web images", kind="web")
    tmp.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n):
        name = SAMPLES[i % len(SAMPLES)]
        array = getattr(skdata, name)()
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        array = array[..., :3]
        if i >= len(SAMPLES):
            array = array[:, ::-1]  # a mirrored variant: another image, another sha256
        picture = PILImage.fromarray(np.ascontiguousarray(array).astype("uint8"))
        picture.thumbnail((480, 480))
        path = tmp / f"{name}-{i}.jpg"
        picture.save(path, "JPEG", quality=88)
        _, image = import_image(path, collection, original_name=f"{name}-{i}.jpg")
        images.append(image)
    return images


def shot_video(media_root: Path) -> tuple[Video, list[Image]]:
    """A 6-second VP8 video with three 2-second shots and one keyframe per shot."""
    import av

    collection, _ = Collection.objects.get_or_create(name="Archive")
    rel = "videos/three-shots.webm"
    path = media_root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    fps, width, height = 10, 160, 96
    colours = [(200, 40, 40), (40, 160, 60), (40, 60, 200)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for colour in colours:
            for k in range(2 * fps):
                frame = np.zeros((height, width, 3), dtype="uint8")
                frame[:] = colour
                frame[10:30, 5 + 6 * k : 15 + 6 * k] = 255  # something moves
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    video = Video.objects.create(
        collection=collection,
        title="Three shots",
        file=rel,
        sha256="a" * 64,
        fps=fps,
        n_frames=60,
        duration_ms=6000,
        width=width,
        height=height,
    )
    keyframes = []
    for number, colour in enumerate(colours, start=1):
        start = (number - 1) * 2000
        shot = Shot.objects.create(
            video=video,
            number=number,
            start_frame=(number - 1) * 20,
            end_frame=number * 20 - 1,
            start_ms=start,
            end_ms=start + 1900,
        )
        still = PILImage.new("RGB", (width, height), colour)
        rel_kf = f"keyframes/three/{number}.jpg"
        write_jpeg(still, rel_kf)
        write_thumbnail(still, f"keyframes/three/{number}_t.jpg")
        keyframes.append(
            Image.objects.create(
                collection=collection,
                video=video,
                shot=shot,
                frame=(number - 1) * 20 + 10,
                time_ms=start + 1000,
                file=rel_kf,
                thumbnail=f"keyframes/three/{number}_t.jpg",
                sha256=f"{number:064x}",
                width=width,
                height=height,
            )
        )
    return video, keyframes


@pytest.fixture
def setup(users, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    category = Category.objects.create(name="Brandenburg Gate", description="The gate in Berlin")
    images = real_images(tmp_path / "src", 10)
    add_candidates(category, images)
    Profile.objects.filter(user=users["annotator"]).update(grid_rows=2, grid_cols=3)
    return {"category": category, "images": images, "users": users}


def open_label_page(page, live_server, setup, query: str = "") -> None:
    login(page, live_server, setup["users"]["annotator"])
    page.goto(live_server.url + reverse("annotation:categories"))
    page.click(f"tr[data-category='{setup['category'].pk}'] button:has-text('Select')")
    page.goto(live_server.url + reverse("annotation:label") + query)
    page.wait_for_selector("#vgrid.ready")


def labels_in_page(page) -> dict[str, str]:
    return page.eval_on_selector_all(
        ".vcell", "cells => Object.fromEntries(cells.map(c => [c.dataset.key, c.dataset.label]))"
    )


def keys_in_page(page) -> list[str]:
    return page.eval_on_selector_all(".vcell", "cells => cells.map(c => c.dataset.key)")


def db_labels(category) -> dict[str, int]:
    return {
        str(k): v
        for k, v in Annotation.objects.filter(category=category).values_list("image_id", "value")
    }


def test_keyboard_only_labelling_saves_and_survives_reload(page, live_server, setup):
    category = setup["category"]
    open_label_page(page, live_server, setup, "?tab=all")
    keys = keys_in_page(page)
    assert len(keys) == 6  # 2 rows × 3 columns from the profile
    # Cursor starts on the first image. 1 = positive, 2 = negative, 3 = neutral, 0 = none.
    page.keyboard.press("1")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("2")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("3")
    page.keyboard.press("ArrowDown")  # next row, same column
    page.keyboard.press("1")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("2")
    page.keyboard.press("2")  # the same key twice changes nothing
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("3")
    page.keyboard.press("0")  # …and taken back: stays unlabelled
    expected = {
        keys[0]: "pos",
        keys[1]: "neg",
        keys[2]: "neu",
        keys[5]: "pos",
        keys[4]: "neg",
        keys[3]: "none",
    }
    assert labels_in_page(page) == expected
    assert page.inner_text(".vgrid-dirty") == "5 unsaved"
    assert page.locator(".vcell.dirty").count() == 5
    assert page.locator(".vcell.cursor").get_attribute("data-key") == keys[3]
    assert page.inner_text(f".vcell[data-key='{keys[0]}'] .vcell-flag") == "unsaved"
    screenshot(page, "grid-label-unsaved")
    assert not db_labels(category)

    # `s` saves in one request and goes to the next page.
    with page.expect_request("**/labels/save/") as request_info:
        page.keyboard.press("s")
    sent = json.loads(request_info.value.post_data)
    assert sent["category"] == category.pk and sent["source"] == "grid"
    assert len(sent["labels"]) == 5
    page.wait_for_url("**page=2**")
    page.wait_for_selector("#vgrid.ready")
    assert set(keys_in_page(page)).isdisjoint(keys)
    assert db_labels(category) == {keys[0]: 1, keys[1]: -1, keys[2]: 0, keys[5]: 1, keys[4]: -1}
    events = AnnotationEvent.objects.filter(category_id=category.pk)
    assert events.count() == 5 and set(events.values_list("user__username", flat=True)) == {
        "annotator"
    }

    # Reload the first page: the labels are there, nothing unsaved.
    page.goto(live_server.url + reverse("annotation:label") + "?tab=all")
    page.wait_for_selector("#vgrid.ready")
    assert labels_in_page(page) == expected
    assert page.inner_text(".vgrid-dirty") == "All saved"
    screenshot(page, "grid-label-saved")
    assert not page.viva_errors, page.viva_errors


def test_bulk_label_a_page_with_the_button(page, live_server, setup):
    category = setup["category"]
    open_label_page(page, live_server, setup)  # unlabelled candidates
    keys = keys_in_page(page)
    page.click("button.vgrid-bulk[data-value='-1']")
    assert set(labels_in_page(page).values()) == {"neg"}
    assert page.inner_text(".vgrid-dirty") == "6 unsaved"
    page.click("button.vgrid-save")
    page.wait_for_selector(".vgrid-dirty:has-text('All saved')")
    assert db_labels(category) == {k: -1 for k in keys}
    # `a` cycles the whole page: negative → neutral.
    page.keyboard.press("a")
    assert set(labels_in_page(page).values()) == {"neu"}
    page.click("button.vgrid-bulk[data-value='none']")
    assert set(labels_in_page(page).values()) == {"none"}
    assert page.inner_text(".vgrid-dirty") == "6 unsaved"
    page.click("button.vgrid-bulk[data-value='-1']")  # back to what is saved: nothing to do
    assert page.inner_text(".vgrid-dirty") == "All saved"
    # The unlabelled tab now starts with the remaining candidates.
    page.reload()
    page.wait_for_selector("#vgrid.ready")
    assert set(keys_in_page(page)).isdisjoint(keys)
    assert page.inner_text(".vgrid-count").startswith("1–4 of 4")
    assert not page.viva_errors, page.viva_errors


def test_correct_one_label_in_review(page, live_server, setup):
    category, images = setup["category"], setup["images"]
    annotator = setup["users"]["annotator"]
    for im in images[:5]:
        save_labels(category, [(im.pk, 1)], user=annotator)
    login(page, live_server, annotator)
    page.goto(live_server.url + reverse("annotation:categories"))
    page.click(f"tr[data-category='{category.pk}'] button:has-text('Select')")
    row = page.locator(f"tr[data-category='{category.pk}']")
    assert row.locator("td.num").all_inner_texts() == ["5", "0", "0", "5"]
    screenshot(page, "grid-categories")
    page.goto(live_server.url + reverse("annotation:review") + "?value=positive")
    page.wait_for_selector("#vgrid.ready")
    assert page.inner_text(".selected-name") == "Brandenburg Gate"
    keys = keys_in_page(page)
    assert keys == [str(im.pk) for im in images[4::-1]]  # newest first
    target = keys[1]
    # One click: positive → negative (the cycle), then save with the button.
    page.click(f".vcell[data-key='{target}'] .vcell-media")
    assert labels_in_page(page)[target] == "neg"
    screenshot(page, "grid-review-correction")
    page.click("button.vgrid-save")
    page.wait_for_selector(".vgrid-dirty:has-text('All saved')")
    ann = Annotation.objects.get(category=category, image_id=int(target))
    assert (ann.value, ann.source) == (-1, "review")
    page.reload()
    page.wait_for_selector("#vgrid.ready")
    assert target not in keys_in_page(page)
    page.click("a.tab-negative")
    page.wait_for_selector("#vgrid.ready")
    assert keys_in_page(page) == [target]
    assert not page.viva_errors, page.viva_errors


def test_shortcut_overlay_viewer_and_unsaved_warning(page, live_server, setup):
    open_label_page(page, live_server, setup, "?tab=all")
    page.keyboard.press("?")
    overlay = page.locator(".vgrid-help")
    assert overlay.is_visible()
    assert "save and go to the next page" in overlay.inner_text()
    screenshot(page, "grid-help-overlay")
    page.keyboard.press("Escape")
    assert not overlay.is_visible()
    # f: full view of the cursor image; keys still label it; Esc closes.
    page.keyboard.press("ArrowRight")
    page.keyboard.press("f")
    viewer = page.locator(".vgrid-viewer")
    assert viewer.is_visible()
    full = viewer.locator("img").get_attribute("src")
    assert full.startswith("/media/images/")
    page.keyboard.press("1")
    assert viewer.get_attribute("data-label") == "pos"
    page.wait_for_function("document.querySelector('.vgrid-viewer img').naturalWidth > 0")
    screenshot(page, "grid-viewer")
    page.keyboard.press("Escape")
    assert not viewer.is_visible()
    # shift+click also enlarges (and does not change the label).
    first = keys_in_page(page)[0]
    page.click(f".vcell[data-key='{first}'] .vcell-media", modifiers=["Shift"])
    assert viewer.is_visible() and labels_in_page(page)[first] == "none"
    page.keyboard.press("Escape")
    # d with unsaved labels asks first; dismissing stays on the page.
    messages: list[str] = []

    def dismiss(dialog):
        messages.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    url = page.url
    page.keyboard.press("d")
    assert messages and "unsaved" in messages[0]
    assert page.url == url
    assert page.evaluate("window.vivaGrid.dirtyCount()") == 1
    # Images are thumbnails, loaded lazily.
    assert page.eval_on_selector_all(
        ".vcell img", "imgs => imgs.every(i => i.loading === 'lazy' && i.src.includes('/thumbs/'))"
    )


def test_failed_save_keeps_labels_and_retry_works(page, live_server, setup):
    category = setup["category"]
    open_label_page(page, live_server, setup, "?tab=all")
    keys = keys_in_page(page)
    page.route(
        "**/labels/save/",
        lambda route: route.fulfill(
            status=500, content_type="text/html", body="<h1>Server Error</h1>"
        ),
    )
    page.keyboard.press("1")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("2")
    url = page.url
    page.keyboard.press("s")
    banner = page.locator(".vgrid-banner.error")
    banner.wait_for()
    assert "NOT saved" in banner.inner_text() and "HTTP 500" in banner.inner_text()
    assert page.url == url  # did not move on
    assert labels_in_page(page)[keys[0]] == "pos" and labels_in_page(page)[keys[1]] == "neg"
    assert page.locator(".vcell.dirty.failed").count() == 2
    assert page.inner_text(".vgrid-dirty") == "2 unsaved"
    screenshot(page, "grid-save-failed")
    assert not db_labels(category)
    # The server is back: Retry saves the very same labels.
    page.unroute("**/labels/save/")
    page.click(".vgrid-retry")
    page.wait_for_selector(".vgrid-dirty:has-text('All saved')")
    assert db_labels(category) == {keys[0]: 1, keys[1]: -1}
    assert page.locator(".vgrid-banner").is_hidden()


def test_rejected_item_is_marked(page, live_server, setup):
    open_label_page(page, live_server, setup, "?tab=all")
    keys = keys_in_page(page)
    Image.objects.filter(pk=int(keys[2])).delete()  # deleted by someone else meanwhile
    page.keyboard.press("a")  # whole page positive
    page.click("button.vgrid-save")
    page.locator(".vgrid-banner.warning").wait_for()
    rejected = page.locator(f".vcell[data-key='{keys[2]}']")
    assert "rejected" in rejected.get_attribute("class")
    assert "no longer exists" in rejected.locator(".vcell-error").inner_text()
    assert page.inner_text(".vgrid-dirty") == "All saved"
    assert len(db_labels(setup["category"])) == 5


def test_grid_size_is_remembered(page, live_server, setup):
    open_label_page(page, live_server, setup, "?tab=all")
    page.select_option("select.vgrid-columns", "4")
    page.wait_for_function("document.querySelectorAll('.vcell').length === 8")
    page.wait_for_selector("#vgrid.ready")
    profile = Profile.objects.get(user=setup["users"]["annotator"])
    assert (profile.grid_rows, profile.grid_cols) == (2, 4)
    assert page.inner_text(".vgrid-count").startswith("1–8 of 10")


def test_space_plays_the_shot_only(page, live_server, setup, settings):
    video, keyframes = shot_video(Path(settings.MEDIA_ROOT))
    open_label_page(page, live_server, setup, f"?tab=archive&video={video.pk}")
    assert keys_in_page(page) == [str(k.pk) for k in keyframes]
    page.keyboard.press("ArrowRight")  # the keyframe of shot 2 (2.0 s – 3.9 s)
    page.keyboard.press(" ")
    video_el = page.locator(".vgrid-viewer video")
    video_el.wait_for()
    assert video_el.get_attribute("src").endswith("/media/videos/three-shots.webm#t=2.000,3.900")
    page.wait_for_function(
        "() => { const v = document.querySelector('.vgrid-viewer video');"
        " return v && v.currentTime > 2.5 && v.paused; }",
        timeout=15_000,
    )
    time = page.evaluate("document.querySelector('.vgrid-viewer video').currentTime")
    assert 3.5 <= time <= 4.2, time  # stopped at the end of the shot, not the video's
    screenshot(page, "grid-shot-player")
    page.keyboard.press("Escape")
    assert not page.locator(".vgrid-viewer").is_visible()
