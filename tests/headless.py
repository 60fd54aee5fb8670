"""Open a page in a headless Chromium and count the images it renders: the page is copied beside
itself with a script that, once the page has loaded, asks every image to load (the gallery's are
lazy), waits for each, and writes "<rendered>/<total>" into the DOM that Chromium dumps."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
COUNTER = """<script>
window.addEventListener("load", async () => {
  const images = [...document.images];
  images.forEach((image) => { image.loading = "eager"; });
  await Promise.all(images.map((image) => image.complete ? null :
    new Promise((done) => { image.onload = done; image.onerror = done; })));
  const rendered = images.filter((image) => image.complete && image.naturalWidth > 0).length;
  const out = document.createElement("pre");
  out.id = "rendered";
  out.textContent = rendered + "/" + images.length;
  document.body.appendChild(out);
});
</script>"""


def browser() -> str:
    """The headless browser's path. `make test` installs Debian's chromium-headless-shell where
    it can (root with apt); elsewhere the check needs one of BROWSERS on PATH, and without one
    it is skipped, saying so."""
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        pytest.skip("no headless Chromium on PATH: install chromium-headless-shell to check "
                    "the gallery in a browser")
    return found


def browser_environment() -> dict:
    """The test process's environment without the OpenBLAS that `python -m mlx_imgen.blas`
    preloads for MLX: Chromium's GPU process dies with it."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def rendered_images(page: Path) -> tuple[int, int]:
    """(images rendered, images on the page) of `page` in a headless Chromium."""
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", COUNTER + "</body>"),
                     encoding="utf-8")
    try:
        out = subprocess.run(
            [browser(), "--headless", "--no-sandbox", "--disable-gpu",
             "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
             probe.resolve().as_uri()], capture_output=True, text=True, timeout=120,
            env=browser_environment())
    finally:
        probe.unlink()
    found = re.search(r'<pre id="rendered">(\d+)/(\d+)</pre>', out.stdout)
    assert found, f"the page did not report its images: {out.stderr[-500:]}"
    return int(found.group(1)), int(found.group(2))
