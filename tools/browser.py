"""A headless Chromium driven over the DevTools protocol on a pipe (no network port, no extra package).

``--remote-debugging-pipe`` makes Chromium read commands from fd 3 and write
replies and events to fd 4, each a JSON object ended by a NUL byte. That is
enough to load a page, hear every console message and uncaught exception,
read the page's text and take a screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = ("install it (Debian/Ubuntu: apt-get update && apt-get install -y chromium) "
                "or set BREAKIT_CHROMIUM to a Chromium or Chrome binary")

# Draw the screenshot on a canvas in Chromium itself and count its colours: a blank page has one.
_COLOURS_JS = """
new Promise((ok, fail) => {
  const img = new Image();
  img.onload = () => {
    const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
    const g = c.getContext('2d'); g.drawImage(img, 0, 0);
    const px = g.getImageData(0, 0, c.width, c.height).data, seen = new Set();
    for (let i = 0; i < px.length && seen.size < 64; i += 4) seen.add(px[i] << 16 | px[i + 1] << 8 | px[i + 2]);
    ok(seen.size);
  };
  img.onerror = () => fail(new Error('screenshot does not decode'));
  img.src = 'data:image/png;base64,' + DATA;
})
"""


class BrowserMissing(RuntimeError):
    """No Chromium on this machine."""


def find_chromium() -> str:
    """The Chromium binary: ``$BREAKIT_CHROMIUM`` or the first of CANDIDATES on PATH."""
    given = os.environ.get("BREAKIT_CHROMIUM")
    if given:
        if shutil.which(given):
            return shutil.which(given)
        raise BrowserMissing(f"BREAKIT_CHROMIUM={given!r} is not an executable; {INSTALL_HINT}")
    for name in CANDIDATES:
        if shutil.which(name):
            return shutil.which(name)
    raise BrowserMissing(f"no Chromium found (looked for {', '.join(CANDIDATES)} on PATH); {INSTALL_HINT}")


@dataclass(kw_only=True)
class PageCheck:
    """What one page did in the browser."""

    url: str
    """The page loaded."""
    errors: list[str] = field(default_factory=list)
    """Console errors, uncaught exceptions and failed loads (``Log.entryAdded`` at level error)."""
    text: str = ""
    """``document.body.innerText`` with every ``<details>`` opened (after the screenshot)."""
    colours: int = 0
    """Distinct colours in the screenshot (up to 64): 1 is a blank page."""


class Chromium:
    """One headless browser; ``with Chromium(path) as b: b.check(url, png)``."""

    def __init__(self, binary: str, *, timeout_s: float = 30.0) -> None:
        self.binary, self.timeout_s, self._next = binary, timeout_s, 0
        self._buf = b""

    def __enter__(self) -> Chromium:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        self._profile = tempfile.TemporaryDirectory(prefix="breakit-chromium-")

        def fds() -> None:  # the child's fd 3 reads commands, fd 4 writes replies
            hi_r, hi_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w))
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        self.proc = subprocess.Popen(
            [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--no-first-run", "--no-default-browser-check", f"--user-data-dir={self._profile.name}",
             "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._send("Browser.close", {})
        except (OSError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)
        self._profile.cleanup()

    def _send(self, method: str, params: dict, session: str | None = None) -> int:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        return self._next

    def _read(self, deadline_at: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline_at - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer within {self.timeout_s:g} s")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (status {self.proc.poll()})")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, *, session: str | None = None,
             events: list[dict] | None = None) -> dict:
        """Send one command, wait for its reply; events met on the way go to ``events``."""
        wanted = self._send(method, params or {}, session)
        deadline_at = time.monotonic() + self.timeout_s
        while True:
            msg = self._read(deadline_at)
            if msg.get("id") == wanted:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            if events is not None and "method" in msg:
                events.append(msg)

    def check(self, url: str, png: Path, *, width: int = 1280, height: int = 1400) -> PageCheck:
        """Load ``url``, wait for its load event, take a screenshot into ``png``; report what went wrong."""
        events: list[dict] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.call(method, session=sid, events=events)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=sid)
        self.call("Page.navigate", {"url": url}, session=sid, events=events)
        deadline_at = time.monotonic() + self.timeout_s
        while not any(e.get("method") == "Page.loadEventFired" for e in events):
            events.append(self._read(deadline_at))
        shot = self.call("Page.captureScreenshot", {"format": "png"}, session=sid, events=events)["data"]
        png.write_bytes(base64.b64decode(shot))
        # The screenshot shows the page as it opens; the text is read with every <details> expanded.
        expand = "document.querySelectorAll('details').forEach(d => d.open = true);"
        text = self.call("Runtime.evaluate", {"expression": expand + "document.body ? document.body.innerText : ''",
                                              "returnByValue": True}, session=sid, events=events)
        count = self.call("Runtime.evaluate", {"expression": _COLOURS_JS.replace("DATA", json.dumps(shot)),
                                               "awaitPromise": True, "returnByValue": True}, session=sid)
        self.call("Target.closeTarget", {"targetId": target})
        return PageCheck(url=url, errors=_errors(events), text=text.get("result", {}).get("value", ""),
                         colours=int(count.get("result", {}).get("value", 0)))


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description", "")))
                                                                for a in p.get("args", [])))
        elif e.get("method") == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append("uncaught: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".rstrip())
    return out


if __name__ == "__main__":  # ``python -m tools.browser``: which Chromium, or why none (exit 2)
    import sys

    try:
        print(f"chromium: {find_chromium()}")
    except BrowserMissing as exc:
        print(f"nox -s report: {exc}", file=sys.stderr)
        sys.exit(2)
