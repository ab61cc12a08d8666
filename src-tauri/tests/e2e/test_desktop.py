"""End-to-end checks of the desktop window, as a person would use it.

Started by run.sh under Xvfb. Launches tauri-driver (which starts WebKitWebDriver and the app),
then: skips the first-run wizard, sees the empty state, streams /quote, stops a reply, toggles reasoning, checks that a
reply containing markup stays inert and that a link in a reply opens in the system browser while the window stays on
the app, switches browser access on (headless Chromium chats at the address while the window streams too) and off,
restarts the app and finds the conversation again and browser access still on.
Last, a fresh start with no model: the wizard downloads a synthetic model from the mock hub
(throttled), the progress bar moves, the model loads and a reply streams; then the Engine dialog
points the app at llama.cpp's server (llama-cpp-python's) and a reply streams from it.
"""

import faulthandler
import json
import os
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.common.options import ArgOptions
from selenium.webdriver.remote.file_detector import UselessFileDetector
from selenium.webdriver.support.ui import WebDriverWait
from webkit_shot import save_screenshot

APP_BIN = os.environ["APP_BIN"]
SHOTS = os.environ.get("SCREENSHOTS", "target/e2e-screenshots")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Free ports rather than tauri-driver's fixed 4444/4445, so that two runs on one machine
# (two checkouts) do not meet.
DRIVER_PORT = free_port()
NATIVE_PORT = free_port()
TIMEOUT = 30

passed = 0
failed = 0


def wait_port(port, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def start_session():
    opts = ArgOptions()
    opts.set_capability("browserName", "wry")
    opts.set_capability("tauri:options", {"application": APP_BIN})
    driver = webdriver.Remote(command_executor=f"http://127.0.0.1:{DRIVER_PORT}", options=opts)
    driver.implicitly_wait(0)
    return driver


def wait(driver, cond, what, seconds=TIMEOUT):
    # Swaps replace elements under the test's feet; a stale element just means "look again".
    return WebDriverWait(
        driver, seconds, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    ).until(lambda d: cond(d), message=what)


def shot(driver, name):
    path = os.path.join(SHOTS, name + ".png")
    save_screenshot(driver, path)
    print(f"  screenshot {path}")


def js(driver, code, *args):
    return driver.execute_script(code, *args)


def statusbar_text(driver):
    """The status bar's text; empty while a swap has the page without one (the wizard)."""
    return js(driver, "const s = document.getElementById('statusbar'); return s ? s.textContent : ''")


def send(driver, text):
    box = wait(driver, lambda d: d.find_element(By.ID, "prompt"), "message box")
    box.click()
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def last_reply(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant")[-1]


def replies(driver):
    return len(driver.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant"))


def streaming(driver):
    return bool(driver.find_elements(By.CSS_SELECTOR, "#messages .msg.streaming"))


# Seconds after which a check that has not ended prints where it waits (and again each time).
STUCK_AFTER_S = 150


def check(name, fn, driver):
    global passed, failed
    print(f"- {name}", flush=True)
    # A check still running after this long is stuck (every check takes seconds); where the
    # test waits is printed, so a hung WebDriver call names itself in the CI log.
    faulthandler.dump_traceback_later(STUCK_AFTER_S, repeat=True)
    try:
        fn(driver)
        passed += 1
        print("  ok")
    except Exception as e:  # noqa: BLE001 - report every failure and go on
        failed += 1
        print(f"  FAILED: {type(e).__name__}: {e}")
        try:
            shot(driver, "failed-" + name.replace(" ", "-"))
        except WebDriverException:
            pass
    finally:
        faulthandler.cancel_dump_traceback_later()


def webview_rendering_fits_the_machine(d):
    # Without a GPU render node (as under Xvfb here) the app starts WebKit without
    # compositing, which through a software OpenGL costs several times the CPU; with one it
    # leaves WebKit's default alone.
    gpu = os.path.isdir("/dev/dri") and any(n.startswith("renderD") for n in os.listdir("/dev/dri"))
    pids = [p for p in os.listdir("/proc") if p.isdigit() and read_quiet(f"/proc/{p}/comm").startswith("WebKitWebProces")]
    assert pids, "no WebKit web process found"
    envs = [read_quiet(f"/proc/{p}/environ").split("\0") for p in pids]
    off = [("WEBKIT_DISABLE_COMPOSITING_MODE=1" in e) for e in envs]
    if gpu:
        assert not any(off), "compositing switched off on a machine with a GPU"
    else:
        assert all(off), f"compositing left on without a GPU ({len(pids)} web processes)"


def read_quiet(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def skip_wizard(d):
    # With no model the app opens on the first-run wizard; these checks use the chat without one.
    wait(d, lambda d: d.find_element(By.ID, "wizard-skip").is_displayed(), "wizard shown")
    d.find_element(By.ID, "wizard-skip").click()
    wait(d, lambda d: d.find_elements(By.ID, "prompt"), "chat shown")


def download_bytes(d):
    # One script call: the bar is swapped as progress arrives, so a found element can go stale
    # before its attribute is read.
    return js(d, "const b=document.getElementById('download-bar');return b?Number(b.dataset.done||0):-1")


def click(d, by, sel, what):
    """Clicks the element, looking it up again if a swap replaced it first."""
    wait(d, lambda d: d.find_element(by, sel).click() or True, what)


def wizard_downloads_and_loads(d):
    wait(d, lambda d: d.find_element(By.ID, "wizard-begin").is_displayed(), "wizard shown")
    click(d, By.ID, "wizard-begin", "wizard begun")
    click(d, By.CSS_SELECTOR, ".model-choice.recommended button", "model chosen")
    # The mock hub waits before each answer, like a far server: the bar says what is going on.
    wait(d, lambda d: "Connecting to 127.0.0.1" in d.find_element(By.ID, "download-bar").text,
         "says it is connecting", seconds=2)
    shot(d, "10-wizard-connecting")
    wait(d, lambda d: download_bytes(d) > 0, "bytes arriving")
    first = download_bytes(d)
    shot(d, "10-wizard-progress-1")
    wait(d, lambda d: download_bytes(d) > first or d.find_elements(By.ID, "wizard-start-chat"), "progress moves")
    second = download_bytes(d)
    shot(d, "11-wizard-progress-2")
    assert second > first or d.find_elements(By.ID, "wizard-start-chat"), (first, second)
    wait(d, lambda d: d.find_element(By.ID, "wizard-start-chat"), "model loaded", seconds=120)
    shot(d, "12-wizard-ready")
    pct = d.find_element(By.CSS_SELECTOR, "#download-bar .download-pct")
    assert js(d, "return getComputedStyle(arguments[0]).fontFamily", pct) == js(
        d, "return getComputedStyle(document.body).fontFamily"), "the percentage uses the app's font"
    one_type_scale(d, "#wizard")
    click(d, By.ID, "wizard-start-chat", "chat started")
    wait(d, lambda d: d.find_elements(By.ID, "prompt"), "chat shown")
    send(d, "/quote")
    wait(d, lambda d: replies(d) >= 1, "a reply appears")
    one_type_scale(d, "#app")
    wait(d, lambda d: replies(d) >= 1 and not streaming(d) and last_reply(d).text.strip(), "reply streamed")
    status = statusbar_text(d)
    assert "SmolLM3-Q4_K_M.gguf" in status, status
    shot(d, "13-wizard-chat")


def models_screen(models_dir):
    """Settings → Models…: the model in use is listed; another catalogue entry downloads from
    the mock hub with its bar and becomes the one in use; the first is deleted after asking."""
    def run(d):
        d.find_element(By.ID, "open-settings").click()
        click(d, By.ID, "open-models", "the models screen opens")
        wait(d, lambda d: d.find_element(By.ID, "models-panel").is_displayed(), "the models screen shows")
        first = '.model-choice.installed[data-name="SmolLM3-Q4_K_M.gguf"]'
        row = d.find_element(By.CSS_SELECTOR, first)
        assert "In use" in row.text and "Q4_K_M" in row.text, row.text
        shot(d, "34-models-screen")
        click(d, By.CSS_SELECTOR, '[data-entry="q8_0"] button', "another model chosen")
        wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#models-panel #download-bar")
             or d.find_elements(By.CSS_SELECTOR, '.in-use[data-name="SmolLM3-Q8_0.gguf"]'),
             "the download shows its progress")
        shot(d, "35-models-downloading")
        # Loaded, not only saved in the settings: the screen shows no task any more.
        wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, '.in-use[data-name="SmolLM3-Q8_0.gguf"]')
             and not d.find_elements(By.CSS_SELECTOR, "#models-panel #download"),
             "the downloaded model is in use", seconds=120)
        assert "Q8_0" in d.find_element(By.CSS_SELECTOR, '.in-use[data-name="SmolLM3-Q8_0.gguf"]').text
        click(d, By.CSS_SELECTOR, first + " .js-delete-model", "delete asked")
        wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, first + " .js-confirm-delete"), "asked to confirm")
        assert os.path.exists(os.path.join(models_dir, "SmolLM3-Q4_K_M.gguf")), "nothing deleted before the answer"
        shot(d, "36-models-confirm-delete")
        click(d, By.CSS_SELECTOR, first + " .js-confirm-delete", "delete confirmed")
        wait(d, lambda d: not d.find_elements(By.CSS_SELECTOR, first), "the deleted model leaves the list")
        assert not os.path.exists(os.path.join(models_dir, "SmolLM3-Q4_K_M.gguf"))
        assert os.path.exists(os.path.join(models_dir, "SmolLM3-Q8_0.gguf"))
        d.find_element(By.CSS_SELECTOR, "#models-panel .settings-foot .js-close-overlay").click()
        wait(d, lambda d: "SmolLM3-Q8_0.gguf" in d.find_element(By.ID, "statusbar").text,
             "the status bar names the model in use")
    return run


LLAMA_KEY = "e2e-key-for-llama-server"


def start_llama_server():
    """llama.cpp's server (llama-cpp-python's) on a free port serving the tiny reference model,
    or None where it is not installed (`.ci/test` installs it)."""
    python = os.environ.get("LLAMA_PYTHON", "python3")
    probe = subprocess.run([python, "-c", "import llama_cpp.server"], capture_output=True)
    fixtures = os.environ.get("SMOLLM3_FIXTURES", os.path.join("..", "shared", "fixtures"))
    model = os.path.join(fixtures, "reference", "tiny-smollm3-f32.gguf")
    if probe.returncode != 0 or not os.path.exists(model):
        return None, None
    port = free_port()
    proc = subprocess.Popen(
        [python, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
         "--port", str(port), "--api_key", LLAMA_KEY, "--n_ctx", "512", "--chat_format", "chatml",
         # One thread: llama.cpp's spinning threads stall on two cores shared with the app.
         "--n_threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 90)
    return proc, f"http://127.0.0.1:{port}"


def engine_on_a_server(url):
    """Settings → Engine…: llama.cpp's server added with its key (a wrong key said in words
    first), its model chosen, used; a message's reply streams from it and says which model on
    which host wrote it; Stop works; back to this computer, the local model answers again."""
    def run(d):
        if url is None:
            raise AssertionError("llama-cpp-python's server is not installed (pip install 'llama-cpp-python[server]')")
        host = url[len("http://"):]
        # Short replies: llama-cpp-python sends nothing while the random tiny model writes
        # pieces of characters, and a long reply can hold such a silence past the app's 60 s.
        d.find_element(By.ID, "open-settings").click()
        wait(d, lambda d: d.find_element(By.ID, "settings").is_displayed(), "settings open")
        box = d.find_element(By.NAME, "max_tokens")
        box.clear()
        box.send_keys("64")
        d.find_element(By.ID, "save-settings").click()
        wait(d, lambda d: "Settings saved" in d.find_element(By.ID, "settings").text, "saved")
        click(d, By.ID, "open-engine", "the engine dialog opens")
        wait(d, lambda d: d.find_element(By.ID, "engine-panel").is_displayed(), "the engine dialog shows")
        assert "In use" in d.find_element(By.ID, "engine-local").text
        d.find_element(By.ID, "server-address").send_keys(url)
        d.find_element(By.ID, "server-api-key").send_keys("wrong")
        click(d, By.ID, "find-models", "models asked with a wrong key")
        wait(d, lambda d: "refused the API key" in d.find_element(By.ID, "engine-models").text,
             "a wrong key is said plainly", seconds=60)
        key = d.find_element(By.ID, "server-api-key")
        key.clear()
        key.send_keys(LLAMA_KEY)
        click(d, By.ID, "find-models", "models asked with the key")
        wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#server-model option"), "the server's models listed", seconds=60)
        d.find_element(By.ID, "server-name").send_keys("llama.cpp here")
        shot(d, "37-engine-add-server")
        click(d, By.ID, "save-server", "saved and used")
        wait(d, lambda d: d.find_elements(By.ID, "engine-notice"), "the server is in use")
        row = d.find_element(By.CSS_SELECTOR, ".engine-row[id^='engine-server-']")
        assert "In use" in row.text and "llama.cpp here" in row.text and "key saved" in row.text, row.text
        assert LLAMA_KEY not in d.page_source, "the key is never shown back"
        shot(d, "38-engine-server-in-use")
        d.find_element(By.CSS_SELECTOR, "#engine-panel .settings-foot .js-close-overlay").click()
        wait(d, lambda d: host in statusbar_text(d), "the status bar names the server")
        click(d, By.ID, "new-chat", "a new conversation")
        n = replies(d)
        send(d, "Tell me about the sea.")
        wait(d, lambda d: replies(d) == n + 1, "a reply appears")
        wait(d, lambda d: not streaming(d), "the reply from the server finishes", seconds=120)
        meta = last_reply(d).find_element(By.CSS_SELECTOR, ".msg-meta").text
        assert "tokens" in meta and f"on {host}" in meta, f"figures and the server under the reply: {meta!r}"
        assert not last_reply(d).find_elements(By.CSS_SELECTOR, ".error"), "no error"
        shot(d, "39-reply-from-a-server")
        # Stop, in a conversation of its own (the tiny model's context is small). The tiny
        # model may finish first; stopping itself is checked against the same server in
        # tests/remote_engine.rs.
        click(d, By.ID, "new-chat", "another conversation")
        wait(d, lambda d: replies(d) == 0, "an empty conversation")
        send(d, "Write a very long story about ships, storms and the sea.")
        wait(d, lambda d: replies(d) == 1, "a second reply appears")
        if streaming(d):
            d.find_element(By.ID, "stop").click()
        wait(d, lambda d: not streaming(d), "the reply ends", seconds=60)
        assert not last_reply(d).find_elements(By.CSS_SELECTOR, ".error"), last_reply(d).text
        # Back to this computer.
        d.find_element(By.ID, "open-settings").click()
        click(d, By.ID, "open-engine", "the engine dialog opens again")
        click(d, By.ID, "use-local", "this computer chosen")
        wait(d, lambda d: "In use" in d.find_element(By.ID, "engine-local").text, "this computer in use", seconds=120)
        d.find_element(By.CSS_SELECTOR, "#engine-panel .settings-foot .js-close-overlay").click()
        wait(d, lambda d: ".gguf" in statusbar_text(d) and host not in statusbar_text(d),
             "the status bar names the local model", seconds=120)
    return run


def start_mock_hub(work):
    """A synthetic model served like the hub, slow enough to watch the bar move."""
    model = os.path.join(work, "SmolLM3-Q4_K_M.gguf")
    subprocess.run([APP_BIN, "synth", "--preset", "tiny", "--out", model], check=True)
    # Another quantization in the catalogue, for the models screen.
    other = os.path.join(work, "SmolLM3-Q8_0.gguf")
    subprocess.run([APP_BIN, "synth", "--preset", "tiny", "--quant", "q8_0", "--out", other], check=True)
    rate = max(1, os.path.getsize(model) // 4)
    hub = subprocess.Popen(
        [os.environ["MOCK_HUB_BIN"], "--file", model, "--also", other, "--throttle", str(rate),
         "--delay-ms", "1500"],
        stdout=subprocess.PIPE, text=True,
    )
    line = hub.stdout.readline().strip()
    assert line.startswith("listening on "), line
    return hub, line.removeprefix("listening on ")


def synth(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    subprocess.run([APP_BIN, "synth", "--preset", "tiny", "--out", path], check=True, stdout=subprocess.DEVNULL)


def fake_hf_cache(work):
    """A Hugging Face cache as `huggingface-cli download` leaves it: the snapshot's file is a
    link into the blobs. Another repository holds a .gguf that is not SmolLM3."""
    repo = os.path.join(work, "hf", "hub", "models--ggml-org--SmolLM3-3B-GGUF")
    synth(os.path.join(repo, "blobs", "0a1b2c3d"))
    snap = os.path.join(repo, "snapshots", "5f6e7d")
    os.makedirs(snap)
    os.symlink("../../blobs/0a1b2c3d", os.path.join(snap, "SmolLM3-Q4_K_M.gguf"))
    junk = os.path.join(work, "hf", "hub", "models--someone--other-GGUF", "snapshots", "r1")
    os.makedirs(junk)
    with open(os.path.join(junk, "other-model.gguf"), "wb") as f:
        f.write(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    return os.path.join(work, "hf"), os.path.join(snap, "SmolLM3-Q4_K_M.gguf")


def xdotool(*args):
    return subprocess.run(["xdotool", *map(str, args)], check=True, capture_output=True, text=True).stdout


def x_window(name, seconds=15):
    """The X window whose title is `name`, waiting for it to appear."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = subprocess.run(["xdotool", "search", "--name", name], capture_output=True, text=True).stdout.split()
        if found:
            return found[-1]
        time.sleep(0.2)
    raise AssertionError(f"no window titled {name!r} appeared")


def x_geometry(window):
    g = dict(line.split("=", 1) for line in xdotool("getwindowgeometry", "--shell", window).split())
    return int(g["X"]), int(g["Y"]), int(g["WIDTH"]), int(g["HEIGHT"])


def screen_shot(name):
    """The whole X screen (the webdriver sees only the page, not a native dialog)."""
    path = os.path.join(SHOTS, name + ".png")
    subprocess.run(["import", "-window", "root", path], check=True)
    print(f"  screenshot {path}")


TYPE_SCALE = {"11px", "12px", "13px", "14px", "15px", "17px", "22px"}


def one_type_scale(d, root):
    """Every text in `root` is in the app's font and on its type scale (code and paths aside)."""
    fonts, sizes = js(d, """
        const body = getComputedStyle(document.body).fontFamily;
        const els = [...document.querySelectorAll(arguments[0] + ' *')]
            .filter(e => !e.closest('code, pre, .path') && [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim()));
        return [[...new Set(els.map(e => getComputedStyle(e).fontFamily).filter(f => f !== body))],
                [...new Set(els.map(e => getComputedStyle(e).fontSize))]];""", root)
    assert not fonts, f"other fonts in {root}: {fonts}"
    assert set(sizes) <= TYPE_SCALE, f"sizes off the scale in {root}: {sizes}"


def found_models_offered(snapshot, models_dir):
    def run(d):
        wait(d, lambda d: d.find_element(By.ID, "wizard-begin").is_displayed(), "wizard shown")
        click(d, By.ID, "wizard-begin", "wizard begun")
        found = wait(d, lambda d: d.find_element(By.ID, "found-models"), "models found on this computer")
        text = found.text
        assert "ggml-org/SmolLM3-3B-GGUF · SmolLM3-Q4_K_M.gguf" in text, text
        assert "Hugging Face cache" in text, text
        assert "other-model.gguf" not in text, "a file that is not SmolLM3 is not offered"
        one_type_scale(d, "#wizard")
        shot(d, "14-wizard-found-on-this-computer")
        click(d, By.CSS_SELECTOR, "#found-models button", "found model used")
        wait(d, lambda d: d.find_element(By.ID, "wizard-start-chat"), "model loaded", seconds=120)
        panel = d.find_element(By.ID, "download").text
        assert snapshot in panel, f"used where it is: {panel}"
        assert not [f for f in os.listdir(models_dir) if f.endswith(".gguf")] if os.path.isdir(models_dir) else True, \
            "nothing copied into the models folder"
        click(d, By.ID, "wizard-start-chat", "chat started")
        wait(d, lambda d: "SmolLM3-Q4_K_M.gguf" in statusbar_text(d),
             "the status bar names the model")
    return run


def file_dialog_chooses_a_model(path):
    def run(d):
        d.find_element(By.ID, "open-settings").click()
        wait(d, lambda d: d.find_element(By.ID, "settings").is_displayed(), "settings open")
        button = d.find_element(By.CSS_SELECTOR, "#settings [data-pick=model]")
        assert button.is_displayed(), "the desktop shows the file dialog button"
        button.click()
        dialog = x_window("Choose a SmolLM3 model")
        time.sleep(1.0)
        screen_shot("15-file-dialog")
        # Type the path into the dialog as a person would (a leading "/" opens its location bar).
        xdotool("windowfocus", "--sync", dialog)
        xdotool("key", "ctrl+l")
        xdotool("type", "--delay", "5", path)
        time.sleep(0.3)
        xdotool("key", "Return")
        wait(d, lambda d: d.find_element(By.ID, "set-model_path").get_attribute("value") == path,
             "the chosen file fills the field")
        shot(d, "16-settings-file-chosen")
        d.find_element(By.CSS_SELECTOR, ".settings-foot .js-close-overlay").click()
    return run


DRAG_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "drag_source.py")


def drop_imports_a_model(path, models_dir):
    def run(d):
        app = x_geometry(x_window("SmolLM3 Bot"))
        src = subprocess.Popen(["/usr/bin/python3", DRAG_SOURCE, path, "1220", "850"],
                               stdout=subprocess.PIPE, text=True)
        try:
            assert src.stdout.readline().strip() == "ready"
            sx, sy, sw, sh = x_geometry(x_window("smollm3-drag-source"))
            tx, ty = app[0] + app[2] // 2, app[1] + app[3] // 2
            xdotool("mousemove", sx + sw // 2, sy + sh // 2)
            xdotool("mousedown", "1")
            # Past the drag threshold, then across to the middle of the app's window.
            for i in range(1, 21):
                xdotool("mousemove", sx + sw // 2 + (tx - sx - sw // 2) * i // 20, sy + sh // 2 + (ty - sy - sh // 2) * i // 20)
                time.sleep(0.05)
            xdotool("mousemove", tx + 5, ty + 5)
            wait(d, lambda d: js(d, "return document.documentElement.classList.contains('drop-target')"),
                 "the window shows where to drop", seconds=10)
            screen_shot("17-drop-onto-window")
            xdotool("mouseup", "1")
            wait(d, lambda d: os.path.exists(os.path.join(models_dir, os.path.basename(path))),
                 "imported into the models folder")
            wait(d, lambda d: os.path.basename(path) in statusbar_text(d),
                 "the dropped model is loaded", seconds=120)
            assert not js(d, "return document.documentElement.classList.contains('drop-target')")
            shot(d, "18-dropped-model-loaded")
        finally:
            src.terminate()
    return run


# The control tokens a model can generate that are not text (the reasoning markers keep their
# role and show as the reasoning block; the end-of-turn tokens end the reply).
CONTROL_TOKENS = ["<|begin_of_text|>", "<|finetune_right_pad_id|>"] + [
    f"<|reserved_special_token_{n}|>" for n in (5, 6, 7, 8, 9, 10, 13, 14, 15)]


def control_tokens_hidden(model, data_dir):
    """The loaded (tiny, random) model generates control tokens now and then; the reply's stored
    token ids say when one came, and then neither the window, nor the page's HTML, nor the
    stored text shows it."""
    def run(d):
        out = subprocess.run([APP_BIN, "tokenize", "--model", model, "--text", "".join(CONTROL_TOKENS), "--pieces"],
                             check=True, capture_output=True, text=True).stdout
        control = {t["id"]: t["piece"] for t in json.loads(out)}
        assert sorted(control.values()) == sorted(CONTROL_TOKENS), control
        db = os.path.join(data_dir, "smollm3-bot.sqlite3")
        d.find_element(By.ID, "new-chat").click()
        for attempt in range(12):
            n = replies(d)
            send(d, f"Tell me something, take {attempt + 1}")
            wait(d, lambda d: replies(d) == n + 1, "a reply")
            wait(d, lambda d: not streaming(d), "the reply finishes", seconds=120)
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                blob, content, reasoning = con.execute(
                    "SELECT token_ids, content, reasoning FROM messages WHERE role = 'assistant' ORDER BY id DESC LIMIT 1"
                ).fetchone()
            finally:
                con.close()
            ids = struct.unpack(f"<{len(blob) // 4}I", blob) if blob else ()
            came = [control[i] for i in ids if i in control]
            if not came:
                continue
            reply = last_reply(d)
            shown = reply.text + reply.get_attribute("innerHTML")
            for piece in set(came):
                assert piece not in shown, f"{piece} shown in the window"
                assert piece not in content and piece not in reasoning, f"{piece} stored as text"
            assert "<|" not in reply.find_element(By.CSS_SELECTOR, ".answer").text
            shot(d, "27-control-token-not-shown")
            print(f"  (reply {attempt + 1} generated {', '.join(came)}; none shown or stored)")
            return
        raise AssertionError("no reply of 12 generated a control token to check")
    return run


def empty_state(d):
    wait(d, lambda d: d.find_element(By.ID, "empty-state").is_displayed(), "empty state shown")
    text = d.find_element(By.ID, "empty-state").text
    assert "Start a conversation" in text, text
    assert "No conversations yet" in d.find_element(By.ID, "conversation-list").text
    shot(d, "01-empty-state")


def quote_streams(d):
    send(d, "/quote")
    wait(d, lambda d: replies(d) == 1, "a reply appears")
    # Text arrives in pieces while the reply is still streaming.
    seen = set()
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and streaming(d):
        seen.add(len(js(d, "const a=document.querySelector('#messages .msg.streaming .answer');return a?a.textContent:''") or ""))
        time.sleep(0.05)
    wait(d, lambda d: not streaming(d), "the reply finishes")
    assert len([n for n in seen if n > 0]) >= 3, f"saw the text grow: {sorted(seen)}"
    text = last_reply(d).find_element(By.CSS_SELECTOR, ".answer").text
    assert "Eureka" in text, text
    meta = last_reply(d).find_element(By.CSS_SELECTOR, ".msg-meta").text
    assert "tokens" in meta, f"figures under the reply: {meta!r}"
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".conv.active"), "the conversation is marked in the sidebar")
    title = js(d, "return document.querySelector('.conv.active .conv-title').textContent")
    assert title == "/quote", f"sidebar title {title!r}"
    shot(d, "02-quote-streamed")


def stop_mid_reply(d):
    n = replies(d)
    send(d, "/quote " + " ".join(f"w{i}" for i in range(400)))
    wait(d, lambda d: replies(d) == n + 1 and streaming(d), "a new reply streams")
    wait(d, lambda d: len(last_reply(d).find_element(By.CSS_SELECTOR, ".answer").text) > 10, "some text")
    d.find_element(By.ID, "stop").click()
    wait(d, lambda d: not streaming(d), "the reply stops")
    reply = last_reply(d)
    assert "stopped" in reply.find_element(By.CSS_SELECTOR, ".msg-meta").text
    words = reply.find_element(By.CSS_SELECTOR, ".answer").text.split()
    assert 0 < len(words) < 400, f"{len(words)} words kept"
    shot(d, "03-stopped")


def reasoning_toggle(d):
    box = d.find_element(By.ID, "thinking")
    assert not box.is_selected()
    box.click()
    wait(d, lambda d: d.find_element(By.ID, "thinking").is_selected(), "reasoning on")
    n = replies(d)
    send(d, "/quote")
    wait(d, lambda d: replies(d) == n + 1, "a new reply")
    wait(d, lambda d: js(d, "const r=document.querySelector('#messages .msg.streaming details.reasoning');return !!r && !r.hidden && r.open"),
         "reasoning streams in an open block")
    wait(d, lambda d: not streaming(d), "the reply finishes")
    details = last_reply(d).find_element(By.CSS_SELECTOR, "details.reasoning")
    assert details.get_attribute("open") is None, "collapsed once the answer came"
    details.find_element(By.TAG_NAME, "summary").click()
    wait(d, lambda d: "pick one about curiosity" in last_reply(d).find_element(By.CSS_SELECTOR, "details.reasoning").text, "reasoning readable")
    shot(d, "04-reasoning")


def long_reply_streams(d):
    """A long reply with paragraphs, a list and code: blocks already finished are formatted
    while the rest streams, and the whole of it is there at the end."""
    paragraphs = [f"Paragraph {i + 1}: " + " ".join(f"word{i}-{j}" for j in range(30)) for i in range(12)]
    paragraphs.insert(3, "- one\n- **two**\n- three")
    paragraphs.insert(7, "```python\n" + "\n".join(f"print({k})" for k in range(8)) + "\n```")
    n = replies(d)
    js(d, "const p = document.getElementById('prompt'); p.value = arguments[0]; p.form.requestSubmit();",
       "/quote " + "\n\n".join(paragraphs))
    wait(d, lambda d: replies(d) == n + 1, "a new reply")
    wait(d, lambda d: "Paragraph 6:" in last_reply(d).find_element(By.CSS_SELECTOR, ".answer").text,
         "half of it streamed", seconds=60)
    assert streaming(d), "still streaming"
    assert js(d, "return !!document.querySelector('#messages .msg.streaming .md-settled li strong')"), \
        "the list, finished, is already formatted while the reply streams"
    shot(d, "25-long-reply-streaming")
    wait(d, lambda d: not streaming(d), "the reply finishes", seconds=90)
    answer = last_reply(d).find_element(By.CSS_SELECTOR, ".answer")
    assert "Paragraph 12:" in answer.text, answer.text[-200:]
    assert answer.find_elements(By.CSS_SELECTOR, "pre code"), "the code block is rendered"
    assert js(d, "const m=document.getElementById('messages');return m.scrollHeight-m.scrollTop-m.clientHeight<80"), \
        "the window followed the reply to its end"
    shot(d, "26-long-reply-done")


def markup_stays_inert(d):
    n = replies(d)
    send(d, '/quote <script>window.__pwned=1</script> <img src=x onerror="window.__pwned=2"> end')
    wait(d, lambda d: replies(d) == n + 1, "a new reply")
    wait(d, lambda d: not streaming(d), "the reply finishes")
    time.sleep(0.5)
    text = last_reply(d).find_element(By.CSS_SELECTOR, ".answer").text
    assert "<script>window.__pwned=1</script>" in text, text
    assert js(d, "const m=document.getElementById('messages');return m.scrollHeight-m.scrollTop-m.clientHeight<80"), "scrolled to the newest reply"
    assert js(d, "return document.querySelectorAll('#messages script, #messages img').length") == 0
    assert js(d, "return window.__pwned === undefined"), "no injected code ran"
    shot(d, "05-markup-inert")


def markdown_renders(d):
    n = replies(d)
    send(d, "/quote Some **bold** words and `inline code` here")
    wait(d, lambda d: replies(d) == n + 1, "a new reply")
    wait(d, lambda d: not streaming(d), "the reply finishes")
    answer = last_reply(d).find_element(By.CSS_SELECTOR, ".answer")
    assert answer.find_element(By.TAG_NAME, "strong").text == "bold"
    assert answer.find_element(By.TAG_NAME, "code").text == "inline code"


def math_and_code_render(d):
    """LaTeX shows as MathML and a rust block as highlighted spans, while the reply streams and
    at its end; HTML hidden in either stays text."""
    text = ("Euler: $e^{i\\pi}+1=0$ and \\(a^2+b^2\\).\n\n"
            "```rust\nfn main() {\n    let s = \"<img src=x onerror=window.__pwned=3>\";\n"
            "    println!(\"{}\", s);\n}\n```\n\n"
            "$\\text{<script>window.__pwned=4</script>}$ and "
            + " ".join(f"tail{i}" for i in range(60)))
    n = replies(d)
    js(d, "const p = document.getElementById('prompt'); p.value = arguments[0]; p.form.requestSubmit();",
       "/quote " + text)
    wait(d, lambda d: replies(d) == n + 1, "a new reply")
    wait(d, lambda d: js(d, "return !!document.querySelector('#messages .msg.streaming .answer .hl-keyword')"),
         "the code is highlighted while the reply streams")
    wait(d, lambda d: not streaming(d), "the reply finishes", seconds=60)
    answer = last_reply(d).find_element(By.CSS_SELECTOR, ".answer")
    maths = answer.find_elements(By.TAG_NAME, "math")
    assert len(maths) == 3, f"three formulas: {answer.get_attribute('innerHTML')[:600]}"
    assert answer.find_elements(By.CSS_SELECTOR, "math msup"), "e^{i pi} is a superscript"
    keywords = [e.text for e in answer.find_elements(By.CSS_SELECTOR, "pre code .hl-keyword")]
    assert "fn" in keywords and "let" in keywords, keywords
    assert answer.find_elements(By.CSS_SELECTOR, "pre code .hl-string"), "strings highlighted"
    assert not answer.find_elements(By.CSS_SELECTOR, "img, script"), "HTML in code or math stays text"
    assert "onerror" in answer.find_element(By.CSS_SELECTOR, "pre code").text
    assert js(d, "return window.__pwned === undefined"), "nothing ran"
    shot(d, "31-math-and-code")


def keyboard_shortcuts(d):
    """The shortcuts /help lists, typed as a person types them (from the message box)."""
    prompt = lambda: d.find_element(By.ID, "prompt")
    active = lambda: js(d, "return document.activeElement ? document.activeElement.id : ''")
    prompt().send_keys(Keys.CONTROL, "k")
    wait(d, lambda d: active() == "search", "Ctrl+K focuses the search")
    d.find_element(By.ID, "search").send_keys(Keys.SHIFT, Keys.ESCAPE)
    wait(d, lambda d: active() == "prompt", "Shift+Esc focuses the message box")
    prompt().send_keys(Keys.CONTROL, ",")
    wait(d, lambda d: d.find_elements(By.ID, "settings"), "Ctrl+, opens the settings")
    d.find_element(By.ID, "save-settings").send_keys(Keys.ESCAPE)
    wait(d, lambda d: not d.find_elements(By.ID, "settings"), "Esc closes them")
    copy = lambda: last_reply(d).find_element(By.CSS_SELECTOR, ".js-copy-message")
    prompt().send_keys(Keys.CONTROL, Keys.SHIFT, "c")
    wait(d, lambda d: copy().text == "Copied", "Ctrl+Shift+C copies the last reply")
    n = replies(d)
    prompt().send_keys(Keys.CONTROL, Keys.SHIFT, Keys.ENTER)
    wait(d, lambda d: streaming(d), "Ctrl+Shift+Enter regenerates the last reply")
    wait(d, lambda d: not streaming(d), "the new version finishes", seconds=60)
    assert replies(d) == n, "the reply was replaced by its new version, not added"
    convs = len(d.find_elements(By.CSS_SELECTOR, ".conv"))
    prompt().send_keys(Keys.CONTROL, Keys.SHIFT, "o")
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".conv")) == convs + 1, "Ctrl+Shift+O starts a new chat")
    wait(d, lambda d: d.find_element(By.ID, "empty-state").is_displayed(), "an empty chat")
    shot(d, "32-shortcut-new-chat")
    # Leave the sidebar as the later checks expect it: the new chat deleted, the last one open.
    wait(d, lambda d: js(d, "const a = document.querySelector('.conv.active');"
                            "if (!a) return false; a.querySelector('.js-delete').click(); return true;"),
         "the new chat is deleted")
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".conv")) == convs, "deleted")
    click(d, By.CSS_SELECTOR, ".conv .conv-title", "the first conversation opens")
    wait(d, lambda d: replies(d) >= 1, "the previous conversation is open again")


def system_prompt_per_conversation(d):
    """The chat head's System prompt: a preset fills the box, Save keeps it for this
    conversation and the head marks it."""
    d.find_element(By.ID, "open-system-prompt").click()
    wait(d, lambda d: d.find_elements(By.ID, "system-prompt-form"), "the dialog opens")
    [b for b in d.find_elements(By.CSS_SELECTOR, ".js-preset") if b.text == "Concise"][0].click()
    value = d.find_element(By.ID, "system-prompt").get_attribute("value")
    assert value.startswith("Answer briefly"), value
    shot(d, "33-system-prompt")
    d.find_element(By.ID, "save-system-prompt").click()
    wait(d, lambda d: "Saved" in d.find_element(By.ID, "system-prompt-form").text, "saved")
    wait(d, lambda d: "✓" in d.find_element(By.ID, "open-system-prompt").text, "the head marks it")
    d.find_element(By.CSS_SELECTOR, "#system-prompt-form .js-close-overlay").click()
    wait(d, lambda d: not d.find_elements(By.ID, "system-prompt-form"), "closed")


def links_open_outside_the_app(d):
    # A link in a reply is followed in the system's browser (here a stand-in `xdg-open` that
    # writes down what it was given); the window keeps the app's page.
    opened = os.environ["OPENED_LINKS"]
    n = replies(d)
    send(d, "/quote see [the docs](https://example.com/smollm3-docs) for more")
    wait(d, lambda d: replies(d) == n + 1, "a new reply")
    wait(d, lambda d: not streaming(d), "the reply finishes")
    link = last_reply(d).find_element(By.CSS_SELECTOR, ".answer a")
    assert link.get_attribute("href") == "https://example.com/smollm3-docs"
    page = d.current_url
    link.click()
    wait(d, lambda d: os.path.exists(opened) and "https://example.com/smollm3-docs" in open(opened).read(),
         "the link went to the system browser")
    time.sleep(1)
    assert d.current_url == page, f"the window navigated to {d.current_url}"
    assert d.find_elements(By.ID, "messages") and replies(d) == n + 1, "the app is still there"
    # A link typed by hand in the page's own URL bar cannot happen; a scripted one would be
    # blocked the same way.
    js(d, "window.location.href = 'https://example.com/elsewhere'")
    time.sleep(1)
    assert d.current_url == page, f"the window navigated to {d.current_url}"
    shot(d, "05b-link-outside")


def small_window(d):
    try:
        d.set_window_size(900, 600)
        time.sleep(0.5)
    except WebDriverException as e:
        print(f"  (window not resized: {e.msg})")
    assert d.find_element(By.ID, "prompt").is_displayed()
    assert d.find_element(By.ID, "new-chat").is_displayed()
    shot(d, "06-900x600")


def settings_panel(d):
    d.find_element(By.ID, "open-settings").click()
    wait(d, lambda d: d.find_element(By.ID, "settings").is_displayed(), "settings open")
    theme = d.find_element(By.ID, "set-theme")
    theme.find_element(By.CSS_SELECTOR, "option[value=dark]").click()
    d.find_element(By.ID, "save-settings").click()
    wait(d, lambda d: "Settings saved" in d.find_element(By.ID, "settings").text, "saved")
    wait(d, lambda d: js(d, "return document.documentElement.dataset.theme") == "dark", "dark theme applied")
    shot(d, "07-settings-dark")
    d.find_element(By.CSS_SELECTOR, ".settings-foot .js-close-overlay").click()


SERVER_PORT = free_port()


def chromium(profile):
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", f"--user-data-dir={profile}", "--no-first-run"):
        opts.add_argument(arg)
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    b = webdriver.Chrome(options=opts, service=service)
    b.set_page_load_timeout(TIMEOUT)
    b.implicitly_wait(0)
    return b


def refused(port):
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


def open_server_dialog(d):
    d.find_element(By.ID, "open-settings").click()
    wait(d, lambda d: d.find_element(By.ID, "open-server").is_displayed(), "settings open")
    d.find_element(By.ID, "open-server").click()
    wait(d, lambda d: d.find_element(By.ID, "server-panel").is_displayed(), "the server dialog opens")


def server_toggle(d):
    open_server_dialog(d)
    port = d.find_element(By.ID, "server-port")
    port.clear()
    port.send_keys(str(SERVER_PORT))
    d.find_element(By.ID, "server-enabled").click()
    url = f"http://127.0.0.1:{SERVER_PORT}"
    wait(d, lambda d: d.find_element(By.ID, "server-url").text == url, "the address appears")
    assert d.find_element(By.ID, "server-api-url").text == url + "/v1"
    shot(d, "20-server-on")
    d.find_element(By.CSS_SELECTOR, "#server-panel .settings-foot .js-close-overlay").click()
    wait(d, lambda d: f"Serving on {url}" in d.find_element(By.ID, "statusbar").text, "the status bar says so")

    # A browser opens the address and chats there while the window streams a reply too.
    profile = tempfile.mkdtemp(prefix="smollm3-bot-e2e-chromium-")
    b = chromium(profile)
    try:
        b.get(url + "/")
        wait(b, lambda b: b.find_element(By.ID, "empty-state").is_displayed(), "the browser shows the app")
        assert "No conversations yet" in b.find_element(By.ID, "conversation-list").text, "the window's stay private"
        wait(d, lambda d: "1 browser" in d.find_element(By.ID, "statusbar").text, "the window counts the browser")
        # In the window's own conversation, which stays first in its list.
        click(d, By.CSS_SELECTOR, ".conv .conv-title", "the first conversation opens")
        wait(d, lambda d: replies(d) >= 4, "the window's conversation is open")
        before = replies(d)
        send(d, "/quote")
        wait(d, lambda d: replies(d) == before + 1, "the window's reply appears")
        box = wait(b, lambda b: b.find_element(By.ID, "prompt"), "the browser's message box")
        box.click()
        box.send_keys("/quote from the browser")
        box.send_keys(Keys.ENTER)
        wait(b, lambda b: b.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant"), "the browser's reply appears")
        wait(b, lambda b: not b.find_elements(By.CSS_SELECTOR, "#messages .msg.streaming"), "the browser's reply finishes")
        text = b.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant .answer")[-1].text
        assert "from the browser" in text, text
        wait(d, lambda d: not streaming(d), "the window's reply finishes")
        b.save_screenshot(os.path.join(SHOTS, "21-browser-of-the-app.png"))
        shot(d, "22-window-while-serving")
    finally:
        b.quit()
        shutil.rmtree(profile, ignore_errors=True)

    # Other devices (here a second loopback address, never a real network): the key appears,
    # with a QR code for a phone; without it a request is refused, with it it works.
    open_server_dialog(d)
    d.find_element(By.ID, "server-lan").click()
    key = wait(d, lambda d: d.find_element(By.ID, "server-key").text, "the key appears")
    assert key.startswith("smol-"), key
    assert d.find_element(By.ID, "server-qr").is_displayed(), "a QR code for a phone"
    other = f"http://127.0.0.2:{SERVER_PORT}"
    assert other in d.find_element(By.ID, "server-on").text, "the address for other devices"
    shot(d, "23-server-other-devices")
    assert http_status(other + "/layout") == 401, "no key, no app"
    assert http_status(other + "/layout", {"Authorization": f"Bearer {key}"}) == 200, "the key opens it"
    d.find_element(By.ID, "server-lan").click()
    wait(d, lambda d: not d.find_elements(By.ID, "server-key"), "back to this computer only")

    # Off: nothing listens any more.
    d.find_element(By.ID, "server-enabled").click()
    wait(d, lambda d: not d.find_elements(By.ID, "server-url"), "the address goes")
    wait(d, lambda d: refused(SERVER_PORT), "the port is closed")
    # On again, so the restart below finds it on.
    d.find_element(By.ID, "server-enabled").click()
    wait(d, lambda d: d.find_elements(By.ID, "server-url"), "on again")
    d.find_element(By.CSS_SELECTOR, "#server-panel .settings-foot .js-close-overlay").click()


def http_status(url, headers=None):
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def api_lists_the_model(d):
    open_server_dialog(d)
    port = d.find_element(By.ID, "server-port")
    port.clear()
    port.send_keys(str(SERVER_PORT))
    d.find_element(By.ID, "server-enabled").click()
    base = wait(d, lambda d: d.find_element(By.ID, "server-api-url").text, "the API address appears")
    import openai
    client = openai.OpenAI(base_url=base, api_key="not-needed-on-this-computer")
    ids = [m.id for m in client.models.list().data]
    assert ids == ["SmolLM3-Q4_K_M", "smollm3"], ids
    reply = client.chat.completions.create(
        model=ids[0], messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    assert reply.choices[0].message.content is not None, reply
    shot(d, "24-api-served")
    d.find_element(By.CSS_SELECTOR, "#server-panel .settings-foot .js-close-overlay").click()


def server_kept_after_restart(d):
    wait(d, lambda d: not refused(SERVER_PORT), "the server is back after the restart")
    wait(d, lambda d: f"Serving on http://127.0.0.1:{SERVER_PORT}" in d.find_element(By.ID, "statusbar").text,
         "the status bar says so")


def delete_and_undo(d):
    d.find_element(By.ID, "new-chat").click()
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".conv")) == 2, "a second conversation")
    # Found and clicked in one step: the list may be swapped in between (it is marked open a
    # frame after each swap).
    wait(d, lambda d: js(d, "const a = document.querySelector('.conv.active');"
                            "if (!a) return false; a.querySelector('.js-delete').click(); return true;"),
         "the open one is deleted")
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".conv")) == 1, "deleted")
    wait(d, lambda d: d.find_element(By.ID, "empty-state").is_displayed(), "the start screen replaces it")
    assert "Deleted" in d.find_element(By.ID, "toast").text
    d.find_element(By.ID, "undo-delete").click()
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".conv")) == 2, "undone")
    js(d, "[...document.querySelectorAll('.conv')].find(c=>c.textContent.includes('New chat')).querySelector('.js-delete').click()")
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".conv")) == 1, "deleted again")
    shot(d, "08-deleted")


def export_and_import(work):
    """The conversation menu exports through the system's save dialog; the exported JSON,
    chosen in the sidebar's Import, comes back as a new conversation with its replies."""
    def run(d):
        before = len(d.find_elements(By.CSS_SELECTOR, ".conv"))
        click(d, By.CSS_SELECTOR, ".conv .conv-title", "the first conversation opens")
        wait(d, lambda d: replies(d) >= 1, "a conversation with replies is open")
        click(d, By.CSS_SELECTOR, "#chat-head .export-menu summary", "the export menu opens")
        shot(d, "28-export-menu")
        click(d, By.CSS_SELECTOR, "#chat-head [data-export=json]", "JSON export chosen")
        dialog = x_window("Export the conversation")
        time.sleep(1.0)
        screen_shot("29-export-dialog")
        target = os.path.join(work, "exported.json")
        # A full path typed over the offered name saves there, as a person may do.
        xdotool("windowfocus", "--sync", dialog)
        xdotool("key", "ctrl+a")
        xdotool("type", "--delay", "5", target)
        time.sleep(0.3)
        xdotool("key", "Return")
        wait(d, lambda d: os.path.exists(target) and os.path.getsize(target) > 0, "the export is written")
        with open(target) as f:
            exported = json.load(f)
        assert exported["format"] == "smollm3-bot.conversations", exported
        assert exported["conversations"][0]["messages"], exported
        # Import: the file goes to the page's file input as a chosen file would.
        js(d, "document.getElementById('import-file').hidden = false")
        # The path as typed, not uploaded: the driver and the app share this machine.
        d.file_detector = UselessFileDetector()
        d.find_element(By.ID, "import-file").send_keys(target)
        wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".conv")) == before + 1, "the import is listed")
        assert "Imported 1 conversation." in d.find_element(By.ID, "toast").text
        js(d, "document.getElementById('import-file').hidden = true")
        click(d, By.CSS_SELECTOR, ".conv .conv-title", "the first conversation opens")
        first = exported["conversations"][0]["messages"][0]["content"].strip()[:40]
        wait(d, lambda d: replies(d) >= 1 and first in d.find_element(By.ID, "chat").text,
             "the imported conversation shows its messages")
        shot(d, "30-imported-conversation")
    return run


def found_after_restart(title):
    def run(d):
        wait(d, lambda d: title in d.find_element(By.ID, "conversation-list").get_attribute("textContent"),
             f"conversation {title!r} listed after restart")
        click(d, By.CSS_SELECTOR, ".conv .conv-title", "the first conversation opens")
        wait(d, lambda d: replies(d) >= 4, "its replies are back")
        wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".conv.active"), "marked open in the sidebar")
        assert js(d, "return document.documentElement.dataset.theme") == "dark", "settings kept"
        shot(d, "09-after-restart")
    return run


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def fake_browser(work):
    """An `xdg-open` first on PATH that writes down the links it is given, as the system's
    browser would receive them."""
    bindir = os.path.join(work, "bin")
    os.makedirs(bindir, exist_ok=True)
    opened = os.path.join(work, "opened-links.txt")
    script = os.path.join(bindir, "xdg-open")
    with open(script, "w") as f:
        f.write(f'#!/bin/sh\nprintf "%s\\n" "$1" >> "{opened}"\n')
    os.chmod(script, 0o755)
    os.environ["PATH"] = bindir + os.pathsep + os.environ["PATH"]
    os.environ["OPENED_LINKS"] = opened


def start_driver(driver_bin):
    """tauri-driver on its free ports (it starts the app for each session), once it listens."""
    proc = subprocess.Popen([driver_bin, "--port", str(DRIVER_PORT), "--native-port", str(NATIVE_PORT)],
                            stdout=sys.stdout, stderr=sys.stderr)
    try:
        wait_port(DRIVER_PORT)
    except Exception:
        stop(proc)
        raise
    return proc


def main():
    os.makedirs(SHOTS, exist_ok=True)
    data = tempfile.mkdtemp(prefix="smollm3-bot-e2e-")
    os.environ["SMOLLM3_BOT_DATA_DIR"] = data
    # "Allow other devices" binds a second loopback address here, never the real network.
    os.environ["SMOLLM3_SERVER_LAN_ADDRESS"] = "127.0.0.2"
    fake_browser(data)
    driver_bin = shutil.which("tauri-driver") or os.path.expanduser("~/.cargo/bin/tauri-driver")
    proc = start_driver(driver_bin)
    try:
        d = start_session()
        try:
            check("the web view draws without compositing where there is no GPU",
                  webview_rendering_fits_the_machine, d)
            check("first-run wizard can be skipped", skip_wizard, d)
            check("empty state", empty_state, d)
            check("quote streams", quote_streams, d)
            check("stop mid reply", stop_mid_reply, d)
            check("reasoning toggle", reasoning_toggle, d)
            check("markup stays inert", markup_stays_inert, d)
            check("markdown renders", markdown_renders, d)
            check("math and code render", math_and_code_render, d)
            check("keyboard shortcuts work", keyboard_shortcuts, d)
            check("a conversation's own system prompt", system_prompt_per_conversation, d)
            check("a long reply streams formatted", long_reply_streams, d)
            check("links open outside the app", links_open_outside_the_app, d)
            check("usable at 900x600", small_window, d)
            check("settings and theme", settings_panel, d)
            check("delete and undo", delete_and_undo, d)
            title = wait(d, lambda d: d.find_element(By.CSS_SELECTOR, ".conv .conv-title").get_attribute("textContent").strip(),
                         "a titled conversation")
            check("browser access switched on and off", server_toggle, d)
            check("a conversation exports through the dialog and imports back", export_and_import(data), d)
        finally:
            d.quit()
        time.sleep(1)
        d = start_session()
        try:
            skip_wizard(d)
            check("restart keeps the conversation", found_after_restart(title), d)
            check("restart keeps browser access on", server_kept_after_restart, d)
        finally:
            d.quit()
    finally:
        stop(proc)
        shutil.rmtree(data, ignore_errors=True)

    # A fresh start on a computer where another tool left SmolLM3 in the Hugging Face cache:
    # the wizard offers it and uses it in place; then a model chosen in the system's file
    # dialog, and one dragged onto the window.
    work = tempfile.mkdtemp(prefix="smollm3-bot-e2e-found-")
    hf_home, snapshot = fake_hf_cache(work)
    models_dir = os.path.join(work, "models")
    picked = os.path.join(work, "downloads", "picked.gguf")
    dropped = os.path.join(work, "downloads", "dropped.gguf")
    synth(picked)
    synth(dropped)
    os.environ["SMOLLM3_BOT_DATA_DIR"] = os.path.join(work, "data")
    os.environ["SMOLLM3_MODELS_DIR"] = models_dir
    os.environ["HF_HOME"] = hf_home
    proc = start_driver(driver_bin)
    try:
        d = start_session()
        try:
            check("the wizard offers a model found on this computer", found_models_offered(snapshot, models_dir), d)
            check("the file dialog chooses a model file", file_dialog_chooses_a_model(picked), d)
            check("a .gguf dropped onto the window is imported and loaded", drop_imports_a_model(dropped, models_dir), d)
            check("a control token the model generates is not shown",
                  control_tokens_hidden(dropped, os.path.join(work, "data")), d)
        finally:
            d.quit()
    finally:
        stop(proc)
        del os.environ["HF_HOME"]
        shutil.rmtree(work, ignore_errors=True)

    # A fresh start with no model, downloading from the mock hub.
    work = tempfile.mkdtemp(prefix="smollm3-bot-e2e-wizard-")
    hub, url = start_mock_hub(work)
    llama, llama_url = start_llama_server()
    os.environ["SMOLLM3_BOT_DATA_DIR"] = os.path.join(work, "data")
    os.environ["SMOLLM3_MODELS_DIR"] = os.path.join(work, "models")
    os.environ["HF_ENDPOINT"] = url
    proc = start_driver(driver_bin)
    try:
        d = start_session()
        try:
            check("wizard downloads and loads a model", wizard_downloads_and_loads, d)
            check("the openai client uses the app's API", api_lists_the_model, d)
            check("the models screen downloads another model and deletes one",
                  models_screen(os.path.join(work, "models")), d)
            check("replies come from llama.cpp's server chosen in the Engine dialog",
                  engine_on_a_server(llama_url), d)
        finally:
            d.quit()
    finally:
        stop(proc)
        stop(hub)
        if llama:
            stop(llama)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
