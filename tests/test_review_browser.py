"""The review page in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright over a page made from a small real run (tiny shards, one LIMIT epoch,
rank_labels, review_labels). Filter, decide with the keyboard, undo, export, and read the
CSV back with pipeline/fixes.py and train one epoch on it (--label-fixes); then time the page
with 20,000 suspects.

Skips with a reason only where no browser can be had (`make test` installs it).
REVIEW_SCREENSHOT=PATH also saves a screenshot of the page (docs/review-page.png)."""
import json
import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.fixes import read_fixes
from tests.shardkit import make_digit_shards
from tools import review_labels as rl
from tools.review import page as review_page
from tools.rank_labels import cli as rank_cli
from train.limit import cli as train_cli

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
READY_S = 2.0          # the page must be interactive within 2 s with 20,000 suspects


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]'; `make test` does it)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium; `make test` does it)")
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _playwright()
    with sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def train_one_epoch(shards, out, *extra):
    """LIMIT, one epoch on 400 digits with 30% uniform noise."""
    assert train_cli(["--data", str(shards / "digits-{000..003}.tar"), "--model", "mnist_cnn", "--batch-size", "64",
                      "--workers", "0", "--noise", "uniform:0.3", "--method", "limit", "--epochs", "1",
                      "--predictor-model", "mnist_cnn", "--max-train-samples", "400", "--out", str(out), *extra]) == 0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch LIMIT run, ranked."""
    root = tmp_path_factory.mktemp("review_run")
    shards = make_digit_shards(root / "digits", n_train=500, n_test=50)
    out = root / "runs" / "limit"
    train_one_epoch(shards, out)
    assert rank_cli(["--run", str(out), "--out", str(out / "labels"), "--workers", "0"]) == 0
    return shards, out


@pytest.fixture(scope="module")
def page(run):
    shards, out = run
    assert rl.cli(["--labels", str(out / "labels"), "--out", str(out / "review"), "--top", "200"]) == 0
    return out / "review" / "index.html"


def open_page(browser, path, **kw):
    ctx = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 900}, **kw)
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    local = ("file:", "blob:", "data:")            # anything else would be a network request
    pg.on("request", lambda r: None if r.url.startswith(local) else errors.append("network: " + r.url))
    start = time.perf_counter()
    pg.goto(Path(path).resolve().as_uri())
    pg.wait_for_selector("body[data-ready]")   # selectors, not wait_for_function: the page's
    return ctx, pg, errors, start              # CSP forbids the eval that its polling uses


def test_review_in_browser(browser, page, run, tmp_path):
    shards, _ = run
    ctx, pg, errors, _ = open_page(browser, page)
    classes = json.loads((shards / "digits.json").read_text())["classes"]
    # filter by a given class: the most common one among the suspects
    given = pg.evaluate("(() => { const v = window.review.view(); return v.length; })()")
    assert given == 200
    pg.select_option("#f-given", "3")
    pg.locator("#grid").focus()
    view = pg.evaluate("window.review.view()")
    assert 0 < len(view) < 200
    first = pg.evaluate("window.review.selected()")
    assert first == view[0]
    assert pg.locator(".card.sel").count() == 1
    # three decisions with the keyboard: accept, drop, class 5; then undo the last one
    pg.keyboard.press("a")
    pg.keyboard.press("ArrowRight")          # skip one
    pg.keyboard.press("d")
    pg.keyboard.press("5")
    assert len(pg.evaluate("window.review.decisions()")) == 3
    pg.keyboard.press("u")
    decided = pg.evaluate("window.review.decisions()")
    assert len(decided) == 2
    # the decisions survive a reload (localStorage, keyed by the run)
    pg.reload()
    pg.wait_for_selector("body[data-ready]")
    assert pg.evaluate("window.review.decisions()") == decided
    with pg.expect_download() as dl:
        pg.click("#b-export")
    csv_path = tmp_path / "decisions.csv"
    dl.value.save_as(csv_path)
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "key,index,given,decision,new_label" and len(lines) == 3
    assert all(line.split(",")[2] == "3" for line in lines[1:])
    m = pq.read_table(shards / "digits.parquet").to_pydict()
    fixes = read_fixes(csv_path, dict(zip(m["key"], m["index"])), max(m["index"]) + 1, classes)
    assert fixes.n_dropped == 1
    assert fixes.n_relabelled + fixes.n_kept == 1       # "accept" of a prediction equal to the given is a keep
    # ... and a training run takes it as --label-fixes, with the counts recorded
    train_one_epoch(shards, tmp_path / "fixed", "--label-fixes", str(csv_path))
    applied = json.loads((tmp_path / "fixed" / "config.json").read_text())["label_fixes_applied"]
    assert (applied["dropped"], applied["relabelled"] + applied["kept"]) == (1, 1)
    assert applied["sha256"] == fixes.sha256
    # any class by the keyboard: C focuses the class list, typing picks, Enter decides
    before = len(pg.evaluate("window.review.decisions()"))
    pg.keyboard.press("c")
    pg.keyboard.type("7")
    pg.keyboard.press("Enter")
    after = pg.evaluate("window.review.decisions()")
    assert len(after) == before + 1 and 7 in [v["l"] for v in after.values()]
    shot = os.environ.get("REVIEW_SCREENSHOT")
    if shot:                                  # the README's picture: a few decisions in sight
        pg.select_option("#f-given", "")
        pg.locator("#grid").focus()
        for key in ("Home", "a", "k", "ArrowRight", "d", "a"):
            pg.keyboard.press(key)
        pg.screenshot(path=shot)
    assert not errors, errors
    ctx.close()


def test_20000_suspects_interactive_within_2s(browser, page, tmp_path):
    """A page of 20,000 suspects (the real page's rows repeated under new indices, its
    thumbnails reused): the time from navigation to a keyboard move shown on the page."""
    html = page.read_text()
    start_tag = '<script id="review-data" type="application/json">'
    head, rest = html.split(start_tag, 1)
    payload = json.loads(rest.split("</script>", 1)[0])
    rows, n = payload["rows"], len(payload["rows"]["index"])
    big = {k: [v[i % n] for i in range(20000)] for k, v in rows.items()}
    big["index"] = list(range(20000))
    big["rank"] = list(range(1, 20001))
    payload.update(rows=big, run_id="perf/20000")
    out = tmp_path / "big"
    shutil.copytree(page.parent / "thumbs", out / "thumbs")
    big_page = review_page.write_page(out, payload)
    assert big_page.stat().st_size > 1_000_000
    ctx, pg, errors, start = open_page(browser, big_page)
    pg.locator("#grid").focus()
    pg.keyboard.press("ArrowRight")
    pg.wait_for_selector('.card.sel[data-i="1"]')
    wall = time.perf_counter() - start
    ready_ms = pg.evaluate("window.review.ready")
    cards = pg.locator(".card").count()
    print(f"\nreview page, 20000 suspects: script ready {ready_ms:.0f} ms after navigation start; "
          f"goto -> keyboard move shown {wall:.2f} s; {cards} cards in the DOM")
    assert cards < 400                                   # virtualized: only what is in sight
    assert wall < READY_S, wall
    pg.evaluate("document.getElementById('grid').scrollTop = 1e6")
    pg.wait_for_selector('.card[data-i="19999"]')
    assert not errors, errors
    ctx.close()
