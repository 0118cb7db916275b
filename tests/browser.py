"""Open local HTML pages in Debian's headless Chromium and report whether every image, audio
and video element on them loaded; take screenshots. No WebDriver: a harness page loads each
target in an iframe (same origin under --allow-file-access-from-files), waits for each
element's load or error event, and writes a JSON report into its own DOM, which
`--dump-dom` prints."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

CHROMIUM_NAMES = ("chromium-headless-shell", "chromium", "chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files", "--mute-audio"]
# Virtual time runs on while media decode on other threads, so a loaded machine can spend a budget
# before the harness reports: a report still pending is asked for again with a bigger budget.
VIRTUAL_TIME_BUDGETS_MS = (20_000, 120_000, 600_000)
TIMEOUT_S = 300

HARNESS = """<!doctype html><html><body><pre id="report">pending</pre><iframe id="frame" width="1200" height="900"></iframe>
<script>
const pages = %(pages)s;
function outcome(el, ok) {
  return {page: el.ownerDocument.location.href, tag: el.tagName.toLowerCase(), src: el.currentSrc || el.getAttribute("src"),
          ok: ok, width: el.naturalWidth || el.videoWidth || 0, duration: el.duration || 0};
}
function settle(el) {
  return new Promise(done => {
    if (el.tagName === "IMG") {
      if (el.complete) return done(outcome(el, el.naturalWidth > 0));
      el.addEventListener("load", () => done(outcome(el, el.naturalWidth > 0)));
      el.addEventListener("error", () => done(outcome(el, false)));
      return;
    }
    if (el.readyState >= 1) return done(outcome(el, true));
    el.addEventListener("loadedmetadata", () => done(outcome(el, true)));
    el.addEventListener("error", () => done(outcome(el, false)), true);
    el.preload = "metadata";
    el.load();
  });
}
function visit(url) {
  return new Promise(done => {
    const frame = document.getElementById("frame");
    frame.onload = async () => {
      const elements = [...frame.contentDocument.querySelectorAll("img, audio, video")];
      done(await Promise.all(elements.map(settle)));
    };
    frame.src = url;
  });
}
(async () => {
  const results = [];
  for (const url of pages) results.push(...await visit(url));
  document.getElementById("report").textContent = JSON.stringify(results);
})();
</script></body></html>
"""


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    raise FileNotFoundError(f"no headless Chromium ({', '.join(CHROMIUM_NAMES)}); scripts/setup.sh installs it")


def media_report(pages: list[Path], workdir: Path) -> list[dict]:
    """One entry per <img>, <audio> and <video> on `pages`: its page, source, and whether it loaded."""
    harness = workdir / "media-check.html"
    harness.write_text(HARNESS % {"pages": json.dumps([page.resolve().as_uri() for page in pages])})
    for budget in VIRTUAL_TIME_BUDGETS_MS:
        out = subprocess.run(
            [chromium(), *FLAGS, f"--virtual-time-budget={budget}", "--dump-dom", harness.as_uri()],
            capture_output=True, text=True, timeout=TIMEOUT_S,
        )
        match = re.search(r'<pre id="report">(.*?)</pre>', out.stdout, re.S)
        if match is not None and match.group(1) != "pending":
            return json.loads(match.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    raise RuntimeError(f"the harness did not finish: {out.stderr[-2000:]}")


def screenshot(page: Path, target: Path, size: str = "1280,2400") -> Path:
    subprocess.run([chromium(), *FLAGS, f"--screenshot={target}", f"--window-size={size}",
                    f"--virtual-time-budget={VIRTUAL_TIME_BUDGETS_MS[0]}", page.resolve().as_uri()],
                   capture_output=True, timeout=TIMEOUT_S, check=True)
    return target
