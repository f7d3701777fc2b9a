"""The web page end to end: uvicorn on a free localhost port, headless Chromium driven by
Selenium uploads a RAVDESS file and waits for the label and the word explanation."""

from __future__ import annotations

import time

import pytest

from helpers import (CHROMEDRIVER, CHROMIUM, CLASSES, STATEMENT_1, chromium, ravdess_files, registry_model_dir,
                     serve_page)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless browser test needs Debian's chromium and chromium-driver (.ci/run installs them)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve_page(registry_model_dir(tmp_path_factory.mktemp("web") / "hmm4", "H-MM-4", word_layers=1))


@pytest.fixture(scope="module")
def acoustic_server(tmp_path_factory):
    yield from serve_page(registry_model_dir(tmp_path_factory.mktemp("web") / "baco", "B-ACO-1", words=None))


@pytest.fixture(scope="module")
def browser(ravdess_root, tmp_path_factory):
    # The fake microphone plays a RAVDESS clip: its own beeps are not speech, which is refused.
    import soundfile as sf

    y, sr = sf.read(ravdess_files(ravdess_root)[0], dtype="float32")
    microphone = tmp_path_factory.mktemp("mic") / "microphone.wav"  # Chromium reads WAV only
    sf.write(microphone, y, sr, subtype="PCM_16")
    yield from chromium(tmp_path_factory.mktemp("chromium-profile"), f"--use-file-for-fake-audio-capture={microphone}")


def test_page_uploads_a_recording_and_shows_label_and_word_explanation(server, browser, ravdess_root, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    wait = WebDriverWait(browser, 25)
    wait.until(lambda d: "H-MM-4" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "file").send_keys(str(ravdess_files(ravdess_root)[0]))
    browser.find_element(By.ID, "transcript").send_keys(STATEMENT_1)
    browser.find_element(By.ID, "submit").click()
    label = wait.until(ec.visibility_of_element_located((By.ID, "label")))
    assert label.text in CLASSES
    chips = browser.find_elements(By.CSS_SELECTOR, "#result .ef-chip .ef-w")
    assert [c.text for c in chips] == ["kids", "are", "talking", "by", "the", "door"]
    assert browser.find_elements(By.CSS_SELECTOR, "#result .ef-share .ef-ac")
    assert browser.find_element(By.CSS_SELECTOR, "#result img.ef-wave").get_attribute("naturalWidth") != "0"
    browser.save_screenshot(str(tmp_path / "page.png"))


def test_page_shows_the_servers_message_for_a_non_audio_file(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    browser.get(server)
    browser.find_element(By.ID, "file").send_keys(str(text))
    browser.find_element(By.ID, "submit").click()
    error = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "error").text or None)
    assert error.startswith("415: notes.txt: not an audio file")


def test_page_records_from_the_microphone_and_predicts_the_recording(acoustic_server, browser):
    """MediaRecorder gives WebM/Opus (Chromium's fake microphone here); the server decodes it
    with PyAV and the acoustic-only model answers."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(acoustic_server)
    wait = WebDriverWait(browser, 25)
    wait.until(lambda d: "acoustic only" in d.find_element(By.ID, "model").text)
    assert not browser.find_element(By.ID, "transcript").is_enabled()
    browser.find_element(By.ID, "record").click()
    wait.until(lambda d: d.find_element(By.ID, "record").text.startswith("■"))
    time.sleep(1.5)
    browser.find_element(By.ID, "record").click()
    wait.until(lambda d: "kB recorded" in d.find_element(By.ID, "record-hint").text)
    browser.find_element(By.ID, "submit").click()
    label = wait.until(ec.visibility_of_element_located((By.ID, "label")))
    assert label.text in CLASSES
    assert "acoustic-only model" in browser.find_element(By.ID, "result").text
