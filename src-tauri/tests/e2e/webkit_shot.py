"""Screenshots of the app's WebKitGTK window over WebDriver, for the e2e suite and the bundle
smoke test.

WebKitWebDriver answers a screenshot after the page's next paint. Without compositing (the
app's choice where there is no GPU, as under Xvfb) an idle page does not paint again, and the
request would wait for ever. A one-pixel, all but transparent mark shown and removed in the
corner just after the request makes that paint. A person never waits on this: it is only how
the driver takes its picture.
"""

NUDGE_PAINT = """
    let n = 0;
    const t = setInterval(() => {
        const m = document.createElement('div');
        m.style.cssText = 'position:fixed;right:0;bottom:0;width:1px;height:1px;' +
            'background:rgba(0,0,0,0.01);pointer-events:none';
        document.documentElement.appendChild(m);
        setTimeout(() => m.remove(), 50);
        if (++n >= 10) clearInterval(t);
    }, 150);
"""


def save_screenshot(driver, path):
    """`driver.save_screenshot(path)` that cannot wait for ever on an idle page."""
    driver.execute_script(NUDGE_PAINT)
    driver.save_screenshot(path)
