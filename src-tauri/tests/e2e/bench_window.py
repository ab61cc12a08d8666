"""How fast a reply reaches the eyes in the desktop window, against the engine alone.

Started by bench_window.sh under Xvfb with the release binary and the full-size (3B) synthetic
model. Prints, in one run:
- `bench` decode (the engine alone, same binary, same model, same threads);
- the in-app decode of a reply of at least 300 tokens, from the reply's own figures (the
  engine's speed while the window shows it: what the window costs is taken from decoding);
- their ratio;
- in a 2,000-token reply, the speed at which text reached the page over the first and the last
  300 tokens (measured in the page: characters per second, converted with the reply's own
  characters per token), and the tail's ratio to the head;
- the WebKit web process's CPU share while streaming (percent of one core).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.common.options import ArgOptions
from selenium.webdriver.support.ui import WebDriverWait

APP_BIN = os.environ["APP_BIN"]
MODEL = os.environ["MODEL_PATH"]
THREADS = os.environ.get("BENCH_THREADS", str(os.cpu_count() or 2))
SHORT = int(os.environ.get("BENCH_SHORT_TOKENS", "300"))
LONG = int(os.environ.get("BENCH_LONG_TOKENS", "2000"))
WINDOW = 300


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(driver, cond, what, seconds):
    return WebDriverWait(
        driver, seconds, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
    ).until(lambda d: cond(d), message=what)


def engine_decode():
    out = subprocess.run(
        [APP_BIN, "bench", "--model", MODEL, "--prompt-tokens", "32", "--gen-tokens", str(SHORT),
         "--reps", "1", "--threads", THREADS, "--json"],
        check=True, capture_output=True, text=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    return report["decode_tps"]["median"]


def webkit_pids():
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip().startswith("WebKitWebProces"):
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def stat_seconds(stat_path):
    """User + system CPU seconds from a /proc `stat` file (a process's or a thread's); 0 when
    it is gone."""
    try:
        with open(stat_path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    return sum(stat_seconds(f"/proc/{pid}/stat") for pid in pids)


def app_pid():
    """The app's own process (the web processes are its children, named otherwise)."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.readlink(f"/proc/{pid}/exe") == os.path.realpath(APP_BIN):
                    return int(pid)
            except OSError:
                pass
    return None


def thread_seconds(pid):
    """CPU seconds of each of the app's threads by name; the main (GTK) thread is "main"."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (OSError, TypeError):
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = "main" if int(tid) == pid else f.read().strip()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + stat_seconds(f"/proc/{pid}/task/{tid}/stat")
    return out


def set_max_tokens(d, n):
    d.find_element(By.ID, "open-settings").click()
    wait(d, lambda d: d.find_element(By.ID, "settings").is_displayed(), "settings open", 30)
    box = d.find_element(By.ID, "set-max_tokens")
    box.clear()
    box.send_keys(str(n))
    d.find_element(By.ID, "save-settings").click()
    wait(d, lambda d: "Settings saved" in d.find_element(By.ID, "settings").text, "saved", 30)
    d.find_element(By.CSS_SELECTOR, ".settings-foot .js-close-overlay").click()


def streamed_length(d):
    return d.execute_script(
        "const m=document.querySelector('#messages .msg.streaming');"
        "if(!m) return -1; return m._raw === undefined ? 0 : m._raw.length;")


def reply(d, text, tokens, timeout):
    """Sends `text`, samples the streamed length once a second, returns (samples, meta)."""
    d.find_element(By.ID, "new-chat").click()
    time.sleep(0.5)
    box = wait(d, lambda d: d.find_element(By.ID, "prompt"), "message box", 30)
    box.click()
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#messages .msg.streaming"), "reply starts", 120)
    pids = webkit_pids()
    app = app_pid()
    threads0 = thread_seconds(app)
    cpu0, t0 = cpu_seconds(pids), time.time()
    samples = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        n = streamed_length(d)
        if n < 0:
            break
        samples.append((time.time(), n))
        time.sleep(1.0)
    elapsed = max(time.time() - t0, 1e-9)
    cpu = (cpu_seconds(pids) - cpu0) / elapsed
    threads = thread_seconds(app)
    # Where the app's own CPU went while the reply streamed, by thread (% of one core).
    shares = sorted(((threads[n] - threads0.get(n, 0.0)) / elapsed, n) for n in threads)
    print("  app threads while streaming: " + ", ".join(
        f"{n} {100 * c:.0f} %" for c, n in reversed(shares) if c >= 0.005), flush=True)
    metas = d.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant .msg-meta")
    meta = metas[-1].text if metas else ""
    answer = d.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant .answer")[-1].text
    return samples, meta, cpu, len(answer)


def figures(meta):
    tokens = re.search(r"(\d+) tokens", meta)
    tps = re.search(r"([\d.]+) tok/s", meta)
    return (int(tokens.group(1)) if tokens else 0, float(tps.group(1)) if tps else 0.0)


def rate(samples, lo, hi):
    """Characters per second between the first samples at or past `lo` and `hi` characters."""
    a = next((s for s in samples if s[1] >= lo), None)
    b = next((s for s in samples if s[1] >= hi), samples[-1] if samples else None)
    if not a or not b or b[0] <= a[0]:
        return 0.0
    return (b[1] - a[1]) / (b[0] - a[0])


def main():
    driver_port, native_port = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="smollm3-bot-bench-")
    os.environ["SMOLLM3_BOT_DATA_DIR"] = data
    engine = engine_decode()
    driver_bin = shutil.which("tauri-driver") or os.path.expanduser("~/.cargo/bin/tauri-driver")
    proc = subprocess.Popen([driver_bin, "--port", str(driver_port), "--native-port", str(native_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        opts = ArgOptions()
        opts.set_capability("browserName", "wry")
        opts.set_capability("tauri:options", {"application": APP_BIN})
        d = webdriver.Remote(command_executor=f"http://127.0.0.1:{driver_port}", options=opts)
        try:
            d.set_window_size(1100, 800)
            wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#statusbar .engine.ready"), "model loaded", 600)
            set_max_tokens(d, SHORT)
            _, meta, cpu_short, _ = reply(d, "Write a long story about the sea.", SHORT, 3600)
            short_tokens, short_tps = figures(meta)
            set_max_tokens(d, LONG)
            samples, meta, cpu_long, chars = reply(d, "Write a very long story about ships.", LONG, 7200)
            long_tokens, long_tps = figures(meta)
        finally:
            d.quit()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(data, ignore_errors=True)

    per_token = chars / long_tokens if long_tokens else 0.0
    window = WINDOW * per_token
    head = rate(samples, 0, window) / per_token if per_token else 0.0
    tail = rate(samples, chars - window, chars) / per_token if per_token else 0.0
    print(f"bench decode                         {engine:.2f} tok/s ({SHORT} tokens, {THREADS} threads)")
    print(f"in-app decode, {short_tokens}-token reply        {short_tps:.2f} tok/s")
    print(f"in-app / bench                       {short_tps / engine:.2f}")
    print(f"in-app decode, {long_tokens}-token reply       {long_tps:.2f} tok/s")
    if long_tokens < LONG:
        print(f"  (the model ended the reply before {LONG} tokens: the head/tail figures cover less)")
    print(f"  first {WINDOW} tokens reach the page at {head:.2f} tok/s")
    print(f"  last {WINDOW} tokens reach the page at  {tail:.2f} tok/s (tail / head {tail / head if head else 0:.2f})")
    print(f"WebKit web process while streaming   {100 * cpu_short:.0f} % of a core (short), {100 * cpu_long:.0f} % (long)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
