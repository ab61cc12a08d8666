"""Checks of the browser UI of `smollm3-bot serve`, in headless Chromium, as people would use it.

Started by run.sh, which runs the server on BASE_URL with a tiny synthetic model. Two browsers
with separate profiles (so separate cookie jars): the first gets a session cookie, sends a
message and watches the reply stream in and finish with its figures; then both send at the same
time and both replies are written at once (the engine batches them; a reply waiting for a
place in the queue is checked in tests/http_sessions.rs), and both finish; neither sees the
other's conversations; a reply holding markup stays inert. Every wait is bounded.
"""

import os
import shutil
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

BASE = os.environ["BASE_URL"]
SHOTS = os.environ.get("SCREENSHOTS", "target/browser-screenshots")
TIMEOUT = 30
# A reply from the model itself can take a while on a loaded machine.
REPLY_TIMEOUT = 120

passed = 0
failed = 0


def browser(profile):
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", f"--user-data-dir={profile}", "--no-first-run"):
        opts.add_argument(arg)
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    d = webdriver.Chrome(options=opts, service=service)
    d.set_page_load_timeout(TIMEOUT)
    d.set_script_timeout(TIMEOUT)
    d.implicitly_wait(0)
    return d


def wait(d, cond, what, seconds=TIMEOUT):
    # Swaps replace elements under the test's feet; a stale element just means "look again".
    return WebDriverWait(
        d, seconds, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
    ).until(lambda d: cond(d), message=what)


def shot(d, name):
    path = os.path.join(SHOTS, name + ".png")
    d.save_screenshot(path)
    print(f"  screenshot {path}")


def js(d, code, *args):
    return d.execute_script(code, *args)


def send(d, text):
    box = wait(d, lambda d: d.find_element(By.ID, "prompt"), "message box")
    js(d, "arguments[0].value = arguments[1]", box, text)
    box.send_keys(Keys.END)
    box.send_keys(Keys.ENTER)


def replies(d):
    return len(d.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant"))


def streaming(d):
    return bool(d.find_elements(By.CSS_SELECTOR, "#messages .msg.streaming"))


def last_reply(d):
    return d.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant")[-1]


def answer_length(d):
    return js(d, "const a=document.querySelector('#messages .msg.streaming .answer');"
                 "return a ? a.textContent.length : -1")


def sidebar_titles(d):
    return js(d, "return [...document.querySelectorAll('#conversation-list .conv-title')].map(a => a.textContent)")


def check(name, fn, *drivers):
    global passed, failed
    print(f"- {name}")
    try:
        fn(*drivers)
        passed += 1
        print("  ok")
    except Exception as e:  # noqa: BLE001 - report every failure and go on
        failed += 1
        print(f"  FAILED: {type(e).__name__}: {e}")
        for i, d in enumerate(drivers):
            try:
                shot(d, f"failed-{name.replace(' ', '-')}-{i + 1}")
            except WebDriverException:
                pass


def first_visit(d):
    d.get(BASE + "/")
    wait(d, lambda d: d.find_element(By.ID, "empty-state").is_displayed(), "empty state shown")
    assert "No conversations yet" in d.find_element(By.ID, "conversation-list").text
    cookie = next((c for c in d.get_cookies() if c["name"] == "smollm3_client"), None)
    assert cookie is not None, f"a session cookie: {d.get_cookies()}"
    assert cookie["httpOnly"], cookie
    assert cookie.get("sameSite") == "Strict", cookie
    assert cookie["path"] == "/", cookie
    assert js(d, "return document.cookie.includes('smollm3_client')") is False, "scripts cannot read it"
    shot(d, "01-first-visit")


def shorter_replies(d):
    # Settings are the server's, shared by every browser: replies of a few hundred tokens keep
    # the test quick while still streaming long enough to watch.
    status = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/settings', {method: 'POST', body: 'max_tokens=300',"
        " headers: {'Content-Type': 'application/x-www-form-urlencoded'}}).then(r => done(r.status))")
    assert status == 200, status


def reply_streams_and_finishes(d):
    shorter_replies(d)
    send(d, "Tell me about the sea.")
    wait(d, lambda d: replies(d) == 1, "a reply appears")
    # Tokens arrive while the reply is still streaming: the text grows between observations.
    seen = []
    took = False
    deadline = time.time() + REPLY_TIMEOUT
    while time.time() < deadline and streaming(d):
        n = answer_length(d) or 0
        if n > 0 and (not seen or n != seen[-1]):
            seen.append(n)
            if len(seen) == 2 and not took:
                shot(d, "02-streaming")
                took = True
        time.sleep(0.02)
    wait(d, lambda d: not streaming(d), "the reply finishes", REPLY_TIMEOUT)
    assert len(seen) >= 2 and seen[-1] > seen[0], f"saw the text grow: {seen}"
    meta = last_reply(d).find_element(By.CSS_SELECTOR, ".msg-meta").text
    assert "tokens" in meta and "tok/s" in meta, f"figures under the reply: {meta!r}"
    assert last_reply(d).find_elements(By.CSS_SELECTOR, ".answer.md"), "rendered once finished"
    shot(d, "03-finished-with-stats")


def both_at_once(a, b):
    b.get(BASE + "/")
    wait(b, lambda d: d.find_element(By.ID, "empty-state").is_displayed(), "second browser ready")
    # The first browser's long message (in a new conversation) keeps the model busy while the
    # second one's arrives.
    a.find_element(By.ID, "new-chat").click()
    wait(a, lambda d: "Say hello" in d.find_element(By.ID, "messages").text, "a new conversation")
    send(a, "Tell me a long story about ships and storms and the people on them. " * 20)
    wait(a, lambda d: streaming(d), "first reply started")
    send(b, "Hello from the second browser")
    wait(b, lambda d: replies(d) == 1, "second reply appears")
    # The second reply streams beside the first instead of waiting for it to end.
    wait(b, lambda d: (answer_length(d) or 0) > 0 or not streaming(d), "the second reply streams",
         REPLY_TIMEOUT)
    assert streaming(a), "the second reply waited for the first to end"
    shot(b, "04-second-browser-streaming-beside-the-first")
    wait(a, lambda d: not streaming(d), "first reply finishes", REPLY_TIMEOUT)
    wait(b, lambda d: not streaming(d), "second reply finishes", REPLY_TIMEOUT)
    for d, name in ((a, "05-first-browser-done"), (b, "06-second-browser-done")):
        meta = last_reply(d).find_element(By.CSS_SELECTOR, ".msg-meta").text
        assert "tokens" in meta, f"figures under the reply: {meta!r}"
        assert not last_reply(d).find_elements(By.CSS_SELECTOR, ".queue-note"), "no queue note left"
        shot(d, name)


def sidebars_are_separate(a, b):
    mine = sidebar_titles(a)
    theirs = sidebar_titles(b)
    assert len(mine) == 2 and "Tell me about the sea." in mine, mine
    assert theirs == ["Hello from the second browser"], theirs
    assert not set(mine) & set(theirs), (mine, theirs)
    # Asking for the other's conversation by its id finds nothing.
    other = a.find_element(By.CSS_SELECTOR, "#conversation-list .conv").get_attribute("data-conversation-id")
    status = b.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/conversations/' + arguments[0]).then(r => r.text().then(t => done([r.status, t])))", other)
    assert status[0] == 404, status
    assert "ships and storms" not in status[1], status
    # A reload keeps each browser's own list (the cookie survives).
    b.refresh()
    wait(b, lambda d: sidebar_titles(d) == ["Hello from the second browser"], "second browser's list after reload")
    shot(b, "07-second-browser-sidebar")


def markup_stays_inert(d):
    n = replies(d)
    send(d, '/quote <script>window.__pwned=1</script> <img src=x onerror="window.__pwned=2"> end')
    wait(d, lambda d: replies(d) == n + 1, "a new reply")
    wait(d, lambda d: not streaming(d), "the reply finishes")
    time.sleep(0.5)
    text = last_reply(d).find_element(By.CSS_SELECTOR, ".answer").text
    assert "<script>window.__pwned=1</script>" in text, text
    assert js(d, "return document.querySelectorAll('#messages script, #messages img').length") == 0
    assert js(d, "return window.__pwned === undefined"), "no injected code ran"
    shot(d, "08-markup-inert")


def main():
    os.makedirs(SHOTS, exist_ok=True)
    profiles = [tempfile.mkdtemp(prefix="smollm3-bot-chromium-") for _ in range(2)]
    drivers = []
    try:
        a = browser(profiles[0])
        drivers.append(a)
        b = browser(profiles[1])
        drivers.append(b)
        check("first visit gets a session cookie", first_visit, a)
        check("a reply streams and finishes with figures", reply_streams_and_finishes, a)
        check("two browsers at once: both replies stream together and finish", both_at_once, a, b)
        check("each browser sees only its own conversations", sidebars_are_separate, a, b)
        check("markup in a reply stays inert", markup_stays_inert, a)
    finally:
        for d in drivers:
            try:
                d.quit()
            except WebDriverException:
                pass
        for p in profiles:
            shutil.rmtree(p, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
