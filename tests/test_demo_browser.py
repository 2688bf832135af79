"""
The web demo in a real browser: `resp-hf demo` serves the golden checkpoint turned into a classifier, headless Chromium
uploads an ICBHI recording and a corrupt file. Needs Debian's `chromium` and `chromium-driver` (installed by .ci/run).
Set RESP_HF_DEMO_SCREENSHOT to a path to keep the screenshot (the README's picture is made this way).
"""

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import soundfile
import torch
from conftest import OPERA
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from transformers import pipeline

from resp_hf import RespM2DFeatureExtractor, RespM2DForAudioClassification

RECORDING = OPERA / "datasets" / "icbhi" / "ICBHI_final_database" / "101_1b1_Al_sc_Meditron.wav"  # 20 s, 44.1 kHz
LABELS = {0: "normal", 1: "crackle", 2: "wheeze", 3: "both"}
SERVER_START_S = 240  # importing gradio and loading the model on a busy 2-core CI machine
RESULT_S = 180
TITLE = "M2D golden checkpoint, untrained 4-label head"


@pytest.fixture(scope="module")
def golden_classifier(golden_folder, tmp_path_factory):
    """The golden encoder with a fresh 4-label head (weights drawn large enough to give distinct scores)."""
    folder = tmp_path_factory.mktemp("golden_classifier")
    torch.manual_seed(0)
    model = RespM2DForAudioClassification.from_pretrained(
        golden_folder, num_labels=len(LABELS), id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )
    torch.nn.init.normal_(model.classifier.weight, std=0.02)
    model.save_pretrained(folder)
    RespM2DFeatureExtractor.from_pretrained(golden_folder).save_pretrained(folder)
    return folder


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(process, url, log):
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"`resp-hf demo` exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"`resp-hf demo` did not answer at {url} within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def demo_url(golden_classifier, tmp_path_factory):
    """Runs `resp-hf demo` on a free local port for the module's tests; stops it afterwards."""
    port = free_port()
    server_dir = tmp_path_factory.mktemp("demo_server")
    log = server_dir / "server.log"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["GRADIO_TEMP_DIR"] = str(server_dir / "uploads")  # Gradio's copies of the uploads stay in the test's folder
    command = [sys.executable, "-m", "resp_hf.cli", "demo", str(golden_classifier), "--port", str(port)]
    command += ["--title", TITLE]
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_server(process, url, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture
def browser():
    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromedriver not found: install Debian's chromium and chromium-driver (see .ci/run)."
    options = Options()
    arguments = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1150"]
    arguments += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]  # a test-tone microphone
    for argument in arguments:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def upload(driver, url, path):
    driver.get(url)
    file_input = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "input[type=file]"))
    file_input.send_keys(str(path))


def status_text(driver):
    return driver.find_element(By.ID, "status").text


def test_upload_shows_labels_plot_and_embedding_download(demo_url, golden_classifier, browser, tmp_path):
    upload(browser, demo_url, RECORDING)
    WebDriverWait(browser, RESULT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#figure img"))
    assert status_text(browser).startswith(f"{RECORDING.name}: 20.0 s")
    assert TITLE in browser.title and "not a trained event detector" in browser.page_source

    classify = pipeline("audio-classification", model=str(golden_classifier), trust_remote_code=True)
    expected = classify(str(RECORDING))
    labels = browser.find_element(By.ID, "labels").text.splitlines()
    assert labels[1] == expected[0]["label"]  # the headline: the best label
    for entry in expected:
        row = labels.index(entry["label"], 2)
        assert labels[row + 1] == f"{round(100 * entry['score'])}%"

    figure = browser.find_element(By.CSS_SELECTOR, "#figure img")
    assert figure.size["width"] > 600 and figure.size["height"] > 300
    assert browser.execute_script("return arguments[0].naturalWidth", figure) > 600  # a decoded image, not a stub

    link = browser.find_element(By.CSS_SELECTOR, "#embedding a[href*='.npy']")
    assert link.text.endswith(".npy") or "101_1b1_Al_sc_Meditron_embedding" in link.get_attribute("href")
    with urllib.request.urlopen(link.get_attribute("href"), timeout=30) as response:
        embedding = np.load(io.BytesIO(response.read()), allow_pickle=False)
    encoder = RespM2DForAudioClassification.from_pretrained(golden_classifier).resp_m2d
    audio, rate = soundfile.read(RECORDING, dtype="float32")
    expected_embedding = encoder.embed({"array": audio, "sampling_rate": rate})[0].numpy()
    np.testing.assert_allclose(embedding, expected_embedding, atol=1e-4)

    screenshot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 20_000
    if os.environ.get("RESP_HF_DEMO_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["RESP_HF_DEMO_SCREENSHOT"])


def test_corrupt_upload_shows_the_error_in_the_page(demo_url, browser, tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x01 this is not audio" * 50)
    upload(browser, demo_url, corrupt)
    WebDriverWait(browser, RESULT_S).until(lambda d: "Could not analyze" in status_text(d))
    status = status_text(browser)
    assert "Could not read corrupt.wav" in status and "Traceback" not in browser.page_source
    assert not browser.find_elements(By.CSS_SELECTOR, "#figure img")
    assert not browser.find_elements(By.CSS_SELECTOR, "#embedding a[href*='.npy']")


def test_recording_from_the_microphone_is_analyzed(demo_url, browser):
    browser.get(demo_url)
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "button[aria-label='Record audio']"))
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Record audio']").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, "button.record-button")).click()
    time.sleep(2)  # Chromium's fake microphone plays a beep
    browser.find_element(By.CSS_SELECTOR, "button.stop-button").click()
    WebDriverWait(browser, RESULT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#figure img"))
    status = status_text(browser)
    assert status.startswith("audio.wav: ") and "analyzed at 16000 Hz" in status
    assert float(status.split(": ")[1].split(" s")[0]) >= 1.5
    assert browser.find_element(By.ID, "labels").text.splitlines()[1] in LABELS.values()
