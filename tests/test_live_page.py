"""The page's live mode end to end: headless Chromium's fake microphone plays a joined RAVDESS
recording, the page streams it to `WS /stream` as PCM, and each closed segment appears as a row."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf

from helpers import CHROMEDRIVER, CHROMIUM, CLASSES, chromium, ravdess_files, registry_model_dir
from helpers import serve_page as _serve

SR = 16000
PAUSES = [0.8, 1.2, 1.0]  # seconds of silence before each clip

pytestmark = [
    pytest.mark.data,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="headless browser test needs Debian's chromium and chromium-driver (.ci/run installs them)"),
]


@pytest.fixture(scope="module")
def microphone(ravdess_root, tmp_path_factory):
    """Three utterances with known pauses and 2 s of silence at the end, as the fake
    microphone's WAV (Chromium loops it): (path, number of utterances)."""
    clips = ravdess_files(ravdess_root, actors=[1], statement="02")[: len(PAUSES)]
    if len(clips) < len(PAUSES):
        pytest.skip(f"RAVDESS under {ravdess_root} lacks the statement-2 clips of actor 1")
    parts = []
    for clip, pause in zip(clips, PAUSES):
        y, sr = sf.read(clip, dtype="float32")
        assert sr == SR
        parts += [np.zeros(int(pause * SR), np.float32), y]
    audio = np.concatenate(parts + [np.zeros(2 * SR, np.float32)])
    path = tmp_path_factory.mktemp("mic") / "microphone.wav"
    sf.write(path, audio, SR, subtype="PCM_16")
    return path, len(clips)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from _serve(registry_model_dir(tmp_path_factory.mktemp("live") / "baco", "B-ACO-1+attn", words=None))


@pytest.fixture(scope="module")
def browser(microphone, tmp_path_factory):
    yield from chromium(tmp_path_factory.mktemp("chromium-profile"), "--autoplay-policy=no-user-gesture-required",
                        f"--use-file-for-fake-audio-capture={microphone[0]}")


def test_live_mode_shows_each_segment_of_the_microphone_as_it_closes(server, browser, microphone):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, utterances = microphone
    browser.get(server)
    wait = WebDriverWait(browser, 40)
    wait.until(lambda d: "acoustic only" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "live").click()
    wait.until(lambda d: d.find_element(By.ID, "live").text.startswith("■"))
    started = time.monotonic()
    # Segments arrive while the microphone is still on: the first before the file has played through.
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#live-segments tr.live-segment")) >= 1)
    first_after = time.monotonic() - started
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#live-segments tr.live-segment")) >= utterances)
    browser.find_element(By.ID, "live").click()
    wait.until(lambda d: d.find_element(By.ID, "live-hint").text.startswith("done:"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#live-segments tr.live-segment")
    labels = [r.find_element(By.CSS_SELECTOR, ".live-label").text for r in rows]
    assert len(rows) >= utterances and all(label in CLASSES for label in labels)
    starts = [float(r.find_elements(By.TAG_NAME, "td")[0].text.split("–")[0]) for r in rows]
    assert starts == sorted(starts)
    assert first_after < 8.0, f"the first segment came {first_after:.1f} s after the start"
    assert browser.find_element(By.ID, "live").text == "● Live"
