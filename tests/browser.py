"""A real headless Chromium driven over the DevTools protocol: open a page, collect its console errors and uncaught
exceptions, evaluate JavaScript in it. Started and stopped by the test that uses it (a context manager)."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("no Chromium on this machine: `apt-get install chromium` (scripts/test.sh installs it "
                       "when it runs as root)")


class Browser:
    """``with Browser() as b: page = b.open(url)``; stopped (and its profile folder removed) on exit."""

    def __init__(self, timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)

    def __enter__(self) -> Browser:
        from websockets.sync.client import connect

        self._profile = tempfile.mkdtemp(prefix="agreemate-chromium-")
        self.proc = subprocess.Popen(
            [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--allow-file-access-from-files", "--remote-debugging-port=0",
             f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode} before it listened")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=self.timeout_s)
        self.events: list[dict] = []
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            shutil.rmtree(self._profile, ignore_errors=True)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """One DevTools command; events that arrive meanwhile are kept in :attr:`events`."""
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def pump(self, seconds: float) -> None:
        """Collect events for a while."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                self.events.append(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return

    def open(self, url: str) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=session)
        page = Page(self, session, url)
        self.send("Page.navigate", {"url": url}, session=session)
        deadline = time.monotonic() + self.timeout_s
        while not any(e.get("method") == "Page.loadEventFired" and e.get("sessionId") == session
                      for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading in {self.timeout_s} s")
            self.pump(0.2)
        return page


class Page:
    def __init__(self, browser: Browser, session: str, url: str):
        self.browser, self.session, self.url = browser, session, url

    def evaluate(self, expression: str):
        r = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                   "awaitPromise": True}, session=self.session)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{self.url}: {expression!r} threw {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30.0):
        """Poll a JavaScript expression until it is truthy; returns its value. An error on the page meanwhile fails
        at once (AssertionError naming it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if self.errors():
                raise AssertionError(f"{self.url}: {self.errors()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}: {expression!r} still falsy after {timeout_s} s")
            self.browser.pump(0.2)

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (failed loads included) of this page."""
        out = []
        for e in self.browser.events:
            if e.get("sessionId") != self.session:
                continue
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("exception: " + str(d.get("exception", {}).get("description", d.get("text"))))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def close(self) -> None:
        self.browser.send("Target.detachFromTarget", {"sessionId": self.session})


#: Every image of the page loaded (complete, with a width): [alt, src prefix] of the ones that did not.
BROKEN_IMAGES_JS = ("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                    ".map(i => [i.alt, i.src.slice(0, 60)])")
#: A Vega-Embed chart drew something: the size of its canvas or SVG (0 when nothing was drawn).
CHART_DRAWN_JS = ("(() => { const c = document.querySelector('#vis canvas, #vis svg');"
                  " if (!c) return 0; const r = c.getBoundingClientRect(); return r.width * r.height; })()")


def check_report_in_browser(report: Path, browser: Browser) -> dict:
    """Open the report: every image loads, its own script runs, and every interactive chart it links renders
    without a console error. Returns what it saw; raises AssertionError naming the page and the problem."""
    page = browser.open(report.resolve().as_uri())
    page.browser.pump(0.5)
    broken = page.evaluate(BROKEN_IMAGES_JS)
    n_images = page.evaluate("document.images.length")
    assert not broken, f"{report}: images that did not load: {broken}"
    links = page.evaluate("Array.from(document.querySelectorAll('a.interactive')).map(a => a.href)")
    browser_filled = page.evaluate("(document.getElementById('ca') || {innerHTML: ''}).innerHTML.length")
    assert not page.errors(), f"{report}: {page.errors()}"
    page.close()
    drawn = {}
    for url in links:
        chart = browser.open(url)
        drawn[url.rsplit("/", 1)[-1]] = chart.wait_for(CHART_DRAWN_JS)
        chart.browser.pump(0.3)
        assert not chart.errors(), f"{url}: {chart.errors()}"
        chart.close()
    return {"images": n_images, "charts": drawn, "transcript_browser_chars": browser_filled}
