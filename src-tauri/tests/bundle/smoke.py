"""Checks an installed or unpacked Linux package of the app, then starts it until the first-run
wizard shows (run by bundle/run.sh under Xvfb).

`--installed ROOT`: the .deb installed with dpkg (its file list after `--`); `--unpacked ROOT`:
the .rpm unpacked into a folder. For each: exactly one program in usr/bin, a desktop entry whose
Exec names it and whose Icon exists in the hicolor theme at several sizes; then the program is
started through tauri-driver with an empty data folder, and the wizard's first page must show.
"""

import argparse
import configparser
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.options import ArgOptions
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from webkit_shot import save_screenshot  # noqa: E402

SHOTS = os.environ.get("SCREENSHOTS", "target/bundle-screenshots")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_layout(root, label, listed=None):
    """The package's program, desktop entry and icons; returns the program's path."""
    programs = [p for p in glob.glob(os.path.join(root, "usr/bin/*")) if os.access(p, os.X_OK)]
    if listed is not None:
        programs = [p for p in programs if p in listed]
    assert len(programs) == 1, f"{label}: expected one program in usr/bin, found {programs}"
    program = programs[0]
    entries = glob.glob(os.path.join(root, "usr/share/applications/*.desktop"))
    if listed is not None:
        entries = [e for e in entries if e in listed]
    assert len(entries) == 1, f"{label}: expected one desktop entry, found {entries}"
    entry = configparser.ConfigParser(interpolation=None)
    entry.read(entries[0])
    desk = entry["Desktop Entry"]
    assert desk.get("Type") == "Application", f"{label}: desktop entry type {desk.get('Type')}"
    assert desk.get("Name") == "SmolLM3 Bot", f"{label}: desktop entry name {desk.get('Name')}"
    exec_name = os.path.basename(desk.get("Exec", "").split()[0])
    assert exec_name == os.path.basename(program), f"{label}: Exec={desk.get('Exec')} but the program is {program}"
    icon = desk.get("Icon", "")
    icons = glob.glob(os.path.join(root, f"usr/share/icons/hicolor/*/apps/{icon}.png"))
    assert len(icons) >= 2, f"{label}: icon {icon!r} has {len(icons)} sizes in the hicolor theme"
    print(f"bundle: {label}: {program[len(root.rstrip('/')):]} (Exec={desk.get('Exec')}), "
          f"icon {icon} in {len(icons)} sizes", flush=True)
    return program


def first_run_window(program, label):
    """Starts the program with nothing set up and waits for the wizard's first page."""
    work = tempfile.mkdtemp(prefix="smollm3-bot-bundle-")
    env = dict(os.environ)
    env.pop("MODEL_PATH", None)
    env.update(SMOLLM3_BOT_DATA_DIR=os.path.join(work, "data"), SMOLLM3_MODELS_DIR=os.path.join(work, "models"),
               HF_HOME=os.path.join(work, "hf"), HOME=work)
    driver_port, native_port = free_port(), free_port()
    driver_bin = shutil.which("tauri-driver") or os.path.expanduser("~/.cargo/bin/tauri-driver")
    proc = subprocess.Popen([driver_bin, "--port", str(driver_port), "--native-port", str(native_port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", driver_port)) == 0:
                    break
            assert time.time() < deadline, "tauri-driver did not start"
            time.sleep(0.2)
        opts = ArgOptions()
        opts.set_capability("browserName", "wry")
        opts.set_capability("tauri:options", {"application": program})
        d = webdriver.Remote(command_executor=f"http://127.0.0.1:{driver_port}", options=opts)
        try:
            WebDriverWait(d, 120, poll_frequency=0.2).until(
                lambda d: d.find_elements(By.ID, "wizard-begin") and d.find_element(By.ID, "wizard-begin").is_displayed(),
                message=f"{label}: the first-run wizard did not show")
            title = d.title
            assert "SmolLM3" in title, f"{label}: window title {title!r}"
            os.makedirs(SHOTS, exist_ok=True)
            path = os.path.join(SHOTS, f"first-run-{label}.png")
            save_screenshot(d, path)
            print(f"bundle: {label}: first-run wizard shown in the window {title!r} ({path})", flush=True)
        finally:
            d.quit()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--installed", required=True)
    ap.add_argument("--unpacked", required=True)
    ap.add_argument("listed", nargs="*")
    a = ap.parse_args()
    deb = check_layout(a.installed, "deb", listed=set(a.listed))
    rpm = check_layout(a.unpacked, "rpm")
    first_run_window(deb, "deb")
    first_run_window(rpm, "rpm")
    print("bundle: 2 packages checked", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
