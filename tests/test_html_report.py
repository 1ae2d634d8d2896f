"""The results pages in a real headless browser (Playwright driving the system's Chromium):
``foundir-eval --out DIR`` -> ``DIR/index.html`` over two methods, and ``shard_tools preview
--html``. Each page loads without console errors, every image resolves, the per-image table
sorts, the degradation filter hides rows and cards, and the slider moves.

The browser is Debian's ``chromium`` (``.ci/run`` installs it and ``playwright``); without one
the tests skip with the reason, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image, ImageFilter

from foundir_model.restore import images
from foundir_model.eval.evaluate import load_items
from foundir_model.eval.evaluate import main as eval_main
from shard_tools.cli import main as shard_main

BROWSERS = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome")


def _browser_or_skip() -> str:
    exe = os.environ.get("FOUNDIR_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    why = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        why = "playwright is not installed (pip install playwright)"
    if why is None and exe is None:
        why = "no Chromium found (apt-get install chromium, or set FOUNDIR_CHROMIUM)"
    if why is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the browser test: {why}; .ci/run installs both")
        pytest.skip(why)
    return exe


@pytest.fixture(scope="module")
def browser():
    exe = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start.
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, path: Path):
    """The page at ``path`` with its console errors, page errors and failed requests collected."""
    pg = browser.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    pg.on("request", lambda r: errors.append(f"network request: {r.url}") if not r.url.startswith(("file:", "data:")) else None)
    pg.goto(path.resolve().as_uri())
    pg.wait_for_load_state("load")
    return pg, errors


def check_images(pg, folder: Path) -> int:
    """Every <img> resolves: its relative file exists and the browser decoded it."""
    srcs = pg.eval_on_selector_all("img", "els => els.map(e => e.getAttribute('src'))")
    assert srcs
    for src in srcs:
        assert not src.startswith(("/", "http:", "https:")), src  # relative: the folder is self-contained
        assert (folder / unquote(src)).is_file(), src
    pg.eval_on_selector_all("img", "els => els.forEach(e => { e.loading = 'eager'; })")
    pg.wait_for_function("[...document.images].every(i => i.complete)")
    broken = pg.eval_on_selector_all("img", "els => els.filter(e => !(e.naturalWidth > 0)).map(e => e.src)")
    assert broken == []
    return len(srcs)


def column(pg, table: str, i: int) -> list[str]:
    return pg.eval_on_selector_all(f"#{table} tbody tr", f"rows => rows.map(r => r.children[{i}].dataset.sort)")


def check_sort(pg, table: str, header: str) -> None:
    heads = pg.eval_on_selector_all(f"#{table} th", "els => els.map(e => e.textContent)")
    i = heads.index(header)
    before = column(pg, table, i)
    pg.click(f"#{table} th:nth-child({i + 1})")
    up = column(pg, table, i)
    nums = [float(v) for v in up if v != ""]
    assert nums == sorted(nums) and sorted(up) == sorted(before)
    pg.click(f"#{table} th:nth-child({i + 1})")
    down = [float(v) for v in column(pg, table, i) if v != ""]
    assert down == sorted(down, reverse=True)


def check_filter(pg, table: str, value: str) -> None:
    total = pg.locator(f"#{table} tbody tr").count()
    want = pg.locator(f'#{table} tbody tr[data-degradation="{value}"]').count()
    assert 0 < want < total
    pg.select_option("#filter", value)
    assert pg.locator(f"#{table} tbody tr:visible").count() == want
    cards = pg.locator(".card:visible")
    assert cards.count() >= 1
    assert set(cards.evaluate_all("els => els.map(e => e.dataset.degradation)")) == {value}
    pg.select_option("#filter", "")
    assert pg.locator(f"#{table} tbody tr:visible").count() == total


def check_slider(pg) -> None:
    slider = pg.locator(".slider").first
    slider.locator("input[type=range]").fill("20")
    assert slider.locator("img.over").evaluate("e => e.style.clipPath") == "inset(0px 80% 0px 0px)"


@pytest.fixture(scope="module")
def eval_dir(packed, tmp_path_factory):
    """Two methods evaluated into one --out folder: a copy of LQ and a blurred LQ."""
    base = tmp_path_factory.mktemp("evalpage")
    for it in load_items(str(packed)):
        lq = images.decode_rgb8(it.read_lq(), it.lq_name)
        for name, im in (("copy", Image.fromarray(lq)), ("blur", Image.fromarray(lq).filter(ImageFilter.BoxBlur(1)))):
            (base / name / it.rel).parent.mkdir(parents=True, exist_ok=True)
            im.save(base / name / f"{it.rel}.png")
    out = base / "report"
    for name, method in (("copy", "Copy of LQ"), ("blur", "Box blur")):
        assert eval_main([str(packed), "--pred", str(base / name), "--method", method, "--out", str(out),
                          "--no-progress"]) == 0
    return out


def test_eval_page_files_and_numbers(eval_dir):
    html = (eval_dir / "index.html").read_text()
    assert "FoundIR (paper)" in html and "LQ input" in html and "Copy of LQ" in html and "Box blur" in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network
    # The copy of the LQ scores exactly the LQ input's PSNR: the page's numbers are the report's.
    import json

    rec = json.loads((eval_dir / "page" / "methods" / "Copy-of-LQ.json").read_text())
    assert all(abs(r["psnr"] - rec["lq_psnr"][r["rel"]]) < 1e-9 for r in rec["per_image"])


def test_eval_page_in_browser(browser, eval_dir):
    pg, errors = open_page(browser, eval_dir / "index.html")
    n = check_images(pg, eval_dir)
    assert n == 40 * 4 + 40 * 2  # per image: LQ, two methods, GT; slider: two more
    check_sort(pg, "per-image", "Box blur PSNR")
    check_filter(pg, "per-image", "Haze")
    check_slider(pg)
    assert errors == []
    pg.close()


def test_preview_html_in_browser(browser, packed, tmp_path):
    out = tmp_path / "pv"
    assert shard_main(["preview", str(packed), "--html", str(out), "--per-type", "2"]) == 0
    pg, errors = open_page(browser, out / "index.html")
    assert check_images(pg, out) == 40 * 4
    check_sort(pg, "pairs", "LQ bytes")
    check_filter(pg, "pairs", "Lowlight_Blur")
    check_slider(pg)
    # Metadata on hover: the title holds the pair's key, sources and sizes.
    tip = pg.locator(".card h3").first.get_attribute("title")
    assert "key: " in tip and "lq_source: " in tip and "lq_width: " in tip
    assert errors == []
    pg.close()


def test_save_view_scales_down_and_keeps_small_images(tmp_path):
    from foundir_data.output.html_report import save_view

    big = np.random.default_rng(0).integers(0, 256, (300, 900, 3), dtype=np.uint8)
    with Image.open(save_view(big, tmp_path / "a.png", 450)) as im:
        assert im.size == (450, 150)
    with Image.open(save_view(big[:50, :60], tmp_path / "b.png", 450)) as im:
        assert np.array_equal(np.asarray(im), big[:50, :60])  # lossless, unscaled
