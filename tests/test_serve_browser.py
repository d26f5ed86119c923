"""The dashboard in a real browser: Debian's chromium driven by Playwright opens the overview,
follows a spec to a finding, reads the numbers and the charts against the store, and saves a
screenshot of each page in test-artifacts/. With a token, no page shows without it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconcile.serve import ServeSettings
from reconcile.store import AuditStore

from .dashboard_cases import HEALED, OPEN_MISMATCH, RETURNED, World, build_world
from .serve_support import ARTIFACTS, live_server, program

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

# Headless, and nothing that reaches for the network on its own: the pages must work offline.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("browser") / "w")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = program("chromium", "/usr/bin/chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    requests: list[str] = []
    pg.on("request", lambda r: requests.append(r.url))
    pg.requests = requests
    yield pg
    context.close()


def _shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, path
    return path


def _int(text: str) -> int:
    return int(text.strip().replace(",", ""))


def test_overview_to_spec_to_finding(page: Any, world: World) -> None:
    store = AuditStore(world.store_url)
    counts = store.finding_counts()
    store.dispose()
    with live_server(ServeSettings(store_url=world.store_url, specs=(str(world.specs_dir),))) as base:
        # The overview: one row per spec, worst first, the numbers of the store.
        page.goto(base + "/")
        rows = page.locator("table.overview tbody tr")
        assert rows.count() == 3
        assert [rows.nth(i).get_attribute("data-spec") for i in range(3)] == ["gated", "stock", "clean"]
        stock = page.locator('tr[data-spec="stock"]')
        assert stock.get_attribute("data-state") == "drift"
        for kind in ("missing", "orphan", "mismatch", "duplicate"):
            shown = _int(stock.locator(f'td[data-kind="{kind}"]').inner_text())
            assert shown == counts.get(("stock", kind, "open"), 0), kind
        assert _int(stock.locator("td.correcting").inner_text()) == 2
        assert _int(page.locator("#open-total").inner_text()) == 2
        spark = stock.locator("svg.chart.spark")
        assert spark.is_visible() and spark.get_attribute("data-max") == str(HEALED)
        assert page.locator('tr[data-spec="gated"] .badge').first.inner_text() == "preflight failed"
        _shot(page, "overview")

        # Follow the spec.
        stock.locator("td.name a").click()
        page.wait_for_url(base + "/specs/stock")
        assert page.locator("h1").first.inner_text().startswith("stock")
        bars = page.locator("#drift svg.chart.bars")
        assert bars.is_visible() and bars.get_attribute("data-points") == "3"
        totals = [_int(v) for v in bars.locator("g.bar").evaluate_all("els => els.map(e => e.dataset.value)")]
        assert totals == [HEALED, 3, 5]
        box = bars.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 50  # drawn, not collapsed
        assert page.locator("#drift svg.chart.line").count() == 2
        assert _int(page.locator("#tile-open .big").inner_text()) == 2
        assert _int(page.locator("#time-to-heal td.n").first.inner_text()) == HEALED
        funnel = page.locator("svg.chart.funnel g.step")
        steps = {
            funnel.nth(i).get_attribute("data-label"): funnel.nth(i).get_attribute("data-value")
            for i in range(funnel.count())
        }
        assert steps["found"] == str(HEALED + 5) and steps["healed by correction"] == str(HEALED)
        row = page.locator(f'table.findings tr[data-key="{OPEN_MISMATCH}"]')
        assert row.locator('tr.differs[data-column="on_hand"]').count() == 1
        assert row.locator('tr[data-column="title"]').get_attribute("class") == ""
        assert page.locator("table.runs tbody tr").count() == 4
        _shot(page, "spec")

        # Follow a finding: both sides, its episode, and an entity with a healed past.
        row.locator("td.key a").click()
        page.wait_for_url(f"{base}/specs/stock/findings/{OPEN_MISMATCH}")
        episode = page.locator("section.episode")
        assert episode.count() == 1 and episode.get_attribute("data-status") == "open"
        on_hand = episode.locator('table.values tr[data-column="on_hand"]')
        assert (on_hand.locator("td.truth").inner_text(), on_hand.locator("td.projection").inner_text()) == (
            "20",
            "27",
        )
        _shot(page, "finding")
        page.goto(f"{base}/specs/stock/findings/{RETURNED}")
        episodes = page.locator("section.episode")
        assert [episodes.nth(i).get_attribute("data-status") for i in range(2)] == ["open", "resolved"]
        healed = episodes.nth(1).locator("table.events tbody tr")
        verified = healed.locator("td.verified").inner_text()
        assert (
            healed.count() == 1 and verified.startswith("20") and "UTC" in verified and "by run" in verified
        )
        assert "UTC" in healed.locator("td.relayed").inner_text()
        _shot(page, "finding-two-episodes")
    # Nothing was fetched from anywhere but the dashboard itself.
    assert page.requests and all(u.startswith(base) for u in page.requests), page.requests


def test_with_a_token_no_page_shows_without_it(page: Any, world: World) -> None:
    settings = ServeSettings(store_url=world.store_url, specs=(str(world.specs_dir),), token="br0wser")
    with live_server(settings) as base:
        for path in ("/", "/specs/stock", f"/specs/stock/findings/{OPEN_MISMATCH}", "/metrics"):
            response = page.goto(base + path)
            assert response is not None and response.status == 401, path
            assert "stock" not in page.locator("body").inner_text().replace("/specs/stock", ""), path
        page.goto(base + "/specs/stock")
        page.fill('input[name="token"]', "wrong")
        page.click('button[type="submit"]')
        assert page.locator("#login-error").inner_text() == "That is not the token."  # still the form
        page.fill('input[name="token"]', "br0wser")
        page.click('button[type="submit"]')
        page.wait_for_url(base + "/specs/stock")
        assert page.locator("h1").first.inner_text().startswith("stock")
        _shot(page, "spec-after-token")
