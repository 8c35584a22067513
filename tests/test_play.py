"""minwm-play (minwm_env/play): the websocket protocol without a browser (aiohttp's test client),
then the page end to end in headless Chromium from Debian's packages through Selenium."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from minwm_env.play.server import PlayConfig, PlayServer, serve

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get install chromium chromium-driver"


@pytest.fixture(scope="module")
def model():
    """The shipped model, loaded once and shared by every server here (as the server shares it)."""
    from minwm_env.envs.world_model import DEFAULT_MODEL, resolve_model

    return resolve_model(DEFAULT_MODEL, "cpu", "float32")


# -- protocol, no browser ---------------------------------------------------------------------
def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


async def next_text(ws, kind: str | None = None, timeout: float = 30.0) -> dict:
    """The next JSON message (of type ``kind`` if given), skipping frames."""
    import aiohttp

    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            raise AssertionError(f"connection closed while waiting for {kind!r}")
        if msg.type == aiohttp.WSMsgType.TEXT:
            message = json.loads(msg.data)
            if kind is None or message["type"] == kind:
                return message


async def open_client(server: PlayServer):
    from aiohttp.test_utils import TestClient, TestServer

    client = TestClient(TestServer(server.app()))
    await client.start_server()
    return client


async def connect(client):
    ws = await client.ws_connect("/ws")
    hello = await next_text(ws, "hello")
    await next_text(ws, "start")
    return ws, hello


async def step(ws, keys) -> dict:
    await ws.send_str(json.dumps({"type": "step", "keys": keys}))
    return await next_text(ws, "chunk")


def test_two_clients_get_separate_worlds(model):
    async def scenario():
        server = PlayServer(PlayConfig(max_clients=2), model)
        client = await open_client(server)
        try:
            a, hello_a = await connect(client)
            b, hello_b = await connect(client)
            assert hello_a["session"] != hello_b["session"] and len(server.sessions) == 2
            assert hello_a["width"] == hello_a["height"] == 64
            worlds = [s.world for s in server.sessions.values()]
            assert worlds[0] is not worlds[1]
            await step(a, ["l"])
            chunk_a = await step(a, ["l"])
            chunk_b = await step(b, ["w"])
            assert chunk_a["step"] == 2 and chunk_a["frames"] == 16 and chunk_a["pose"]["yaw"] == pytest.approx(24.0)
            assert chunk_b["step"] == 1 and chunk_b["pose"]["yaw"] == 0.0 and chunk_b["pose"]["z"] == pytest.approx(0.32)
            # opposite keys cancel; held keys add up (clipped to the action space)
            assert (await step(b, ["l", "j"]))["pose"]["yaw"] == 0.0
        finally:
            await client.close()
    run(scenario())


def test_cap_malformed_messages_and_disconnect(model):
    async def scenario():
        server = PlayServer(PlayConfig(max_clients=2), model)
        client = await open_client(server)
        try:
            a, _ = await connect(client)
            b, _ = await connect(client)
            full = await client.ws_connect("/ws")
            error = await next_text(full, "error")
            assert error["fatal"] and "full" in error["message"] and "--max-clients" in error["message"]
            assert (await full.receive(timeout=10)).type.name in ("CLOSE", "CLOSED")
            for bad, words in [("not json", "not JSON"), (json.dumps([1, 2]), "JSON object"),
                               (json.dumps({"type": "fly"}), "unknown message type"),
                               (json.dumps({"type": "step", "keys": ["x"]}), "unknown key"),
                               (json.dumps({"type": "truth", "on": "yes"}), "true or false")]:
                await a.send_str(bad)
                message = await next_text(a, "error")
                assert words in message["message"] and not message["fatal"]
            await a.send_bytes(b"GIF89a: not a png")
            assert "not a PNG or JPEG" in (await next_text(a, "error"))["message"]
            await a.send_bytes(b"\x89PNG\r\n\x1a\n truncated")
            assert "could not be decoded" in (await next_text(a, "error"))["message"]
            # the other client is served throughout, and the bad one still plays
            assert (await step(b, ["d"]))["pose"]["x"] == pytest.approx(0.32)
            assert (await step(a, ["i"]))["pose"]["pitch"] == pytest.approx(12.0)
            # a good upload of another size is resized to the model's; no ground truth for it
            import cv2
            ok, jpeg = cv2.imencode(".jpg", np.full((80, 100, 3), 120, np.uint8))
            await a.send_bytes(jpeg.tobytes())
            start = await next_text(a, "start")
            assert start["reason"] == "upload" and not start["truth_available"]
            await a.send_str(json.dumps({"type": "reset"}))  # back to the uploaded start, not a rendered one
            start = await next_text(a, "start")
            assert start["reason"] == "reset" and not start["truth_available"]
            await a.send_str(json.dumps({"type": "new_scene"}))
            start = await next_text(a, "start")
            assert start["reason"] == "new_scene" and start["layout"] == 1 and start["truth_available"]
            # a disconnect frees its world; then a new client fits under the cap
            await a.close()
            for _ in range(100):
                if len(server.sessions) == 1:
                    break
                await asyncio.sleep(0.05)
            assert len(server.sessions) == 1
            c, _ = await connect(client)
            assert (await step(c, ["s"]))["pose"]["z"] == pytest.approx(-0.32)
        finally:
            await client.close()
    run(scenario())


def test_jpeg_frames_and_ground_truth_frames(model):
    async def scenario():
        import aiohttp

        server = PlayServer(PlayConfig(image_format="jpeg"), model)
        client = await open_client(server)
        try:
            ws, hello = await connect(client)
            assert hello["format"] == "jpeg"
            await ws.send_str(json.dumps({"type": "truth", "on": True}))
            assert (await next_text(ws, "truth"))["available"]
            await ws.send_str(json.dumps({"type": "step", "keys": ["w"]}))
            chunk = await next_text(ws, "chunk")
            assert chunk["truth"]
            kinds = []
            while len(kinds) < 32:
                msg = await ws.receive(timeout=30)
                assert msg.type == aiohttp.WSMsgType.BINARY
                assert msg.data[2:5] == b"\xff\xd8\xff"  # JPEG
                kinds.append(msg.data[0])
            assert kinds == [1] * 16 + [2] * 16 and msg.data[1] == 15
        finally:
            await client.close()
    run(scenario())


def test_idle_timeout_closes_and_frees(model):
    async def scenario():
        server = PlayServer(PlayConfig(idle_timeout=0.6), model)
        client = await open_client(server)
        try:
            ws, _ = await connect(client)
            error = await next_text(ws, "error", timeout=10)
            assert error["fatal"] and "without input" in error["message"]
            for _ in range(100):
                if not server.sessions:
                    break
                await asyncio.sleep(0.05)
            assert not server.sessions
        finally:
            await client.close()
    run(scenario())


# -- the page in headless Chromium ------------------------------------------------------------
class LiveServer:
    """minwm-play on a free loopback port, in a thread of its own."""

    def __init__(self, model, config: PlayConfig):
        self.url = None
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._task = None
        self._thread = threading.Thread(target=self._run, args=(model, config), daemon=True)
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("minwm-play did not start")

    def _run(self, model, config):
        asyncio.set_event_loop(self._loop)

        def ready(url):
            self.url = url
            self._ready.set()
        self._task = self._loop.create_task(serve(config, "127.0.0.1", 0, model=model, ready=ready))
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass

    def stop(self):
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)


@pytest.fixture(scope="module")
def live_server(model):
    server = LiveServer(model, PlayConfig(max_clients=2))
    yield server
    server.stop()


def find_browser(candidates=CHROMIUM_CANDIDATES, chromedriver=CHROMEDRIVER) -> tuple[str, str]:
    """Debian's chromium and chromedriver; a missing one fails (not skips), saying what to install."""
    chromium = next((path for path in candidates if os.path.exists(path)), None) or shutil.which("chromium")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", chromedriver))
               if not path or not os.path.exists(path)]
    if missing:
        pytest.fail(f"the browser tests need Debian's {' and '.join(missing)} (not found): "
                    f"run `{INSTALL}` (as root), then rerun the tests", pytrace=False)
    return chromium, chromedriver


def test_missing_browser_fails_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium chromium-driver"):
        find_browser(candidates=(str(tmp_path / "chromium"),), chromedriver=str(tmp_path / "chromedriver"))


def test_command_line_defaults_to_loopback():
    from minwm_env.play.server import build_parser

    args = build_parser().parse_args([])
    assert (args.host, args.port, args.model, args.max_clients) == ("127.0.0.1", 8765, "minwm-default", 4)
    args = build_parser().parse_args(["--host", "0.0.0.0", "--port", "0", "--model", "tiny", "--max-clients", "2",
                                      "--idle-timeout", "30"])
    assert (args.host, args.port, args.model, args.max_clients, args.idle_timeout) == ("0.0.0.0", 0, "tiny", 2, 30.0)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from Debian's packages through Selenium (no browser download)."""
    chromium, chromedriver = find_browser()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the browser tests need selenium: pip install -e '.[test]'", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,820", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 30.0):
    """Poll a JS expression until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        if time.monotonic() > deadline:
            state = driver.execute_script("return window.minwmPlay && window.minwmPlay.state;")
            raise AssertionError(f"timed out waiting for {script!r}; page state {state}")
        time.sleep(0.05)


def canvas_frame(driver, which: str) -> np.ndarray:
    """The canvas's pixels at its own resolution (the model's 64×64), RGB uint8."""
    import cv2

    url = driver.execute_script(f"return window.minwmPlay.canvas.{which}.toDataURL('image/png');")
    data = base64.b64decode(url.split(",", 1)[1])
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def horizontal_shift(before: np.ndarray, after: np.ndarray, max_lag: int = 24) -> int:
    """How many pixels the image content moved to the right (negative: left), by the normalised
    cross-correlation of the two frames' mean column profiles."""
    a = before.astype(np.float64).mean(axis=(0, 2))
    b = after.astype(np.float64).mean(axis=(0, 2))
    best, best_lag = -np.inf, 0
    for lag in range(-max_lag, max_lag + 1):
        x = a[max(0, -lag): len(a) - max(0, lag)]  # before[p] ...
        y = b[max(0, lag): len(b) - max(0, -lag)]  # ... seen at after[p + lag]
        x, y = x - x.mean(), y - y.mean()
        score = float((x * y).sum() / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9))
        if score > best:
            best, best_lag = score, lag
    return best_lag


def test_shift_measure_on_the_exact_truth():
    """The convention the browser test relies on, from the ground-truth env itself: turning
    right (+yaw, minWM's 'l') moves the picture's content to the left."""
    from minwm_env.envs.ground_truth import GroundTruthEnv

    truth = GroundTruthEnv(scene="room", scene_seed=0)
    try:
        start, _ = truth.reset(seed=0)
        right, *_ = truth.step(np.array([0, 0, 0, 3, 0, 0], np.float32))
        truth.reset(seed=0)
        left, *_ = truth.step(np.array([0, 0, 0, -3, 0, 0], np.float32))
    finally:
        truth.close()
    assert horizontal_shift(start, right) < -4 and horizontal_shift(start, left) > 4
    assert horizontal_shift(start, np.roll(start, 5, axis=1)) == 5


def test_page_plays_in_headless_chromium(browser, live_server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.get(live_server.url)
    assert driver.title == "minwm play"
    wait_for(driver, "window.minwmPlay.state.ready && window.minwmPlay.state.shown >= 1")
    start = canvas_frame(driver, "model")
    assert start.shape == (64, 64, 3) and start.std() > 5

    # ground truth beside it, then one tap of → (turn right: one chunk, 12°)
    driver.find_element(By.ID, "show-truth").click()
    wait_for(driver, "!document.getElementById('truth-view').hidden")
    ActionChains(driver).key_down(Keys.ARROW_RIGHT).pause(0.02).key_up(Keys.ARROW_RIGHT).perform()
    wait_for(driver, "window.minwmPlay.state.chunks === 1 && window.minwmPlay.state.queued === 0 "
                     "&& window.minwmPlay.state.shown >= 17")
    model_after, truth_after = canvas_frame(driver, "model"), canvas_frame(driver, "truth")
    truth_shift, model_shift = horizontal_shift(start, truth_after), horizontal_shift(start, model_after)
    assert truth_shift < -4, f"the truth's content should move left on a right turn, moved {truth_shift}"
    assert model_shift < -4, f"the model's content should move left like the truth's ({truth_shift}), moved {model_shift}"

    # the HUD shows the pose, the latency and the decoded frame rate
    hud = driver.find_element(By.ID, "hud").text
    assert "yaw 12.0°" in hud and "ms/chunk" in hud, hud
    assert float(hud.split("frames/s ")[1].split()[0]) > 0, hud

    # held keys repeat: W held for a while gives several chunks, moving forward
    ActionChains(driver).key_down("w").pause(1.5).key_up("w").perform()
    wait_for(driver, "window.minwmPlay.state.chunks >= 3")
    assert driver.execute_script("return window.minwmPlay.state.pose.z;") > 0.3

    # record a chunk and get an mp4 to download
    driver.find_element(By.ID, "record").click()
    wait_for(driver, "window.minwmPlay.state.recording")
    chunks = driver.execute_script("return window.minwmPlay.state.chunks;")
    ActionChains(driver).key_down("a").pause(0.02).key_up("a").perform()
    wait_for(driver, f"window.minwmPlay.state.chunks > {chunks}")
    driver.find_element(By.ID, "record").click()
    assert wait_for(driver, "window.minwmPlay.state.videoBytes") > 1000
    assert driver.find_element(By.ID, "download").is_displayed()

    wait_for(driver, "window.minwmPlay.state.queued === 0")
    shot = tmp_path / "play.png"
    assert driver.save_screenshot(str(shot)) and shot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("MINWM_PLAY_SCREENSHOT"):  # docs/images/play.png is made this way
        Path(os.environ["MINWM_PLAY_SCREENSHOT"]).write_bytes(shot.read_bytes())

    # a bad upload: an error on the page, and the world plays on
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"this is a text file, not a picture\n")
    driver.find_element(By.ID, "upload").send_keys(str(bad))
    wait_for(driver, "!document.getElementById('error').hidden")
    assert "not a PNG or JPEG" in driver.find_element(By.ID, "error").text

    # a good upload restarts from it (resized to 64x64); new scene gives another layout
    import cv2
    good = tmp_path / "start.png"
    cv2.imwrite(str(good), np.tile(np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None], (72, 1, 3)))
    starts = driver.execute_script("return window.minwmPlay.state.starts;")
    driver.find_element(By.ID, "upload").send_keys(str(good))
    wait_for(driver, f"window.minwmPlay.state.starts > {starts} && window.minwmPlay.state.queued === 0")
    assert not driver.execute_script("return window.minwmPlay.state.truthAvailable;")
    driver.find_element(By.ID, "new-scene").click()
    wait_for(driver, "window.minwmPlay.state.layout === 1 && window.minwmPlay.state.truthAvailable")
    ActionChains(driver).key_down(Keys.ARROW_LEFT).pause(0.02).key_up(Keys.ARROW_LEFT).perform()
    wait_for(driver, "window.minwmPlay.state.chunks === 1 && window.minwmPlay.state.queued === 0")

    assert not driver.execute_script("return window.minwmPlay.state.closed;")
