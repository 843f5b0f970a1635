"""`edge-stream run launch/voice_web.toml`: the three nodes and the gateway (its own process) from the
launch file, reached by a WebSocket client and by headless Debian chromium with a fake microphone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from gatewaykit import Client, utterance

from edge_stream.bench.common import free_port

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch" / "voice_web.toml"
TURN_LEFT = "turn left 90 deg"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def voice_web(tmp_path_factory):
    """launch/voice_web.toml on free ports, started by `edge-stream run`; yields the page URL."""
    folder = tmp_path_factory.mktemp("launch")
    text = LAUNCH.read_text().replace('"../models/', f'"{ROOT}/models/')
    for port in sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", text))):
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")
    (folder / "voice_web.toml").write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "edge_stream.cli", "run", str(folder / "voice_web.toml")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    ready = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "gateway web: ready" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(120) and proc.poll() is None, "edge-stream run did not start:\n" + "".join(lines[-40:])
        page = re.search(r"page (http://\S+)\)", next(x for x in lines if "gateway web: ready" in x)).group(1)
        yield page
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0, "".join(lines[-40:])


def test_edge_stream_run_starts_the_gateway_beside_the_nodes(voice_web):
    client = Client(voice_web.replace("http://", "ws://") + "v1/realtime")
    try:
        client.append(utterance("command_1.wav"))
        assert client.wait_for("command.done")["command"] == TURN_LEFT
    finally:
        client.close()


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
def test_the_page_in_headless_chromium_shows_the_command_of_a_fake_microphone(voice_web, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,820",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={ROOT / 'tests' / 'data' / 'turn_left_16k.wav'}",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(voice_web)
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.ID, "conn").get_attribute("data-state") == "open")
        driver.find_element(By.ID, "start").click()
        wait.until(lambda d: d.find_element(By.ID, "command").get_attribute("data-state") == "final")
        assert driver.find_element(By.ID, "command-text").text == TURN_LEFT
        assert driver.find_element(By.ID, "heard").text == "turn left ninety degrees"
        fields = {c.get_attribute("data-field"): c.find_element(By.TAG_NAME, "b").text
                  for c in driver.find_elements(By.CSS_SELECTOR, "#fields .chip")}
        assert fields == {"action": "turn", "direction": "left", "amount": "90 deg"}
        assert "after the end of speech" in driver.find_element(By.ID, "latency").text
        screenshot = os.environ.get("EDGE_STREAM_SCREENSHOT")  # docs/gateway-page.png is made this way
        if screenshot:  # the fake microphone loops the file: wait for the second command, for a fuller page
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) >= 1
                       and d.find_element(By.ID, "command").get_attribute("data-state") == "final")
        driver.save_screenshot(screenshot or str(tmp_path / "page.png"))
    finally:
        driver.quit()


def test_the_gateway_benchmark_measures_both_paths_in_one_run():
    from edge_stream.bench.gateway import scenario_gateway

    r = scenario_gateway(sessions=2, direct=1, seconds=8.0)
    assert r["websocket_ms"]["n"] >= 2 and r["zeromq_ms"]["n"] >= 1  # a speech start per stream and loop
    assert r["websocket_ms"]["p50"] > 0 and r["gateway_cpu_per_session_pct"] > 0
