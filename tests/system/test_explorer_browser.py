"""The block explorer page in a real headless browser (Debian's chromium through selenium), against
four real ``peerdb node run`` daemons anchoring into the session's regtest node.

The consortium is driven into what the page must show: a fork (firm-a and firm-b make blocks
that firm-c and firm-d never see, then firm-c and firm-d a longer chain of their own; when all
four meet, firm-a's blocks lose and stay in its tree as a side branch), a stopped member
(firm-d: its signatures go missing on the heights after), and Bitcoin anchors. The page, opened
with the read token in its address fragment, must show firm-d's missing signatures in the
matrix, the lost branch as a side branch, an anchor with its Bitcoin txid, a block's detail on
a click, and new heights without being reloaded. ``PEERDB_SCREENSHOT=path.png`` saves what the
browser shows (docs/explorer.png is made that way).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from peerdb.anchor.regtest import RegtestNode
from peerdb.localnet import LocalConsortium, poll_until
from tests.helpers.browser import headless_chromium, wait_in_page

pytestmark = [pytest.mark.slow, pytest.mark.bitcoin]

PARAMS = {"heartbeat_ms": 200, "turn_timeout_ms": 1000, "anchor_interval_s": 2, "anchor_confirmations": 1}
WAIT_S = 90.0
READ_TOKEN = "explorer-read-token-0123456789"
FORK_BLOCKS = 3
"""Blocks each side of the partition makes beyond the other, so the second side is heavier."""


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    try:
        poll_until(predicate, timeout, what)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


@contextmanager
def mining(regtest: RegtestNode, interval_s: float = 1.0) -> Iterator[None]:
    """Mine a regtest block every second, as the Bitcoin network would, so anchors confirm."""
    stop = threading.Event()

    def mine() -> None:
        while not stop.wait(interval_s):
            regtest.mine(1)
    thread = threading.Thread(target=mine, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def get(net: LocalConsortium, name: str, path: str) -> Any:
    try:
        with net.nodes[name].client(timeout=10) as c:
            r = c.get(path)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def tip(net: LocalConsortium, name: str) -> int:
    status = get(net, name, "/v1/status")
    return -1 if status is None else int(status["heads"]["tentative"])


def test_the_explorer_shows_missing_signatures_a_side_branch_and_anchors(
        tmp_path: Path, regtest: RegtestNode) -> None:
    with LocalConsortium(tmp_path / "c", params=PARAMS, bitcoin_rpc=regtest.wallet_url, sync=False) as net, \
            mining(regtest):
        net.write_files()
        a = net.nodes["firm-a"]
        a.config.write_text(a.config.read_text().replace("[api]\n", f'[api]\nread_token = "{READ_TOKEN}"\n', 1))
        net.start_all()
        net.wait_ready()
        wait_for(lambda: (get(net, "firm-a", "/v1/status") or {}).get("heads", {}).get("anchored", 0) >= 2,
                 "the first anchored blocks")

        # A fork: firm-a and firm-b go on alone, then firm-c and firm-d longer.
        net.stop("firm-c")
        net.stop("firm-d")
        start = tip(net, "firm-a")
        wait_for(lambda: tip(net, "firm-a") >= start + FORK_BLOCKS, "firm-a and firm-b's own blocks")
        net.stop("firm-a")
        net.stop("firm-b")
        lost = net.nodes["firm-a"]
        net.start("firm-c")
        net.start("firm-d")
        net.wait_ready(["firm-c", "firm-d"])
        wait_for(lambda: tip(net, "firm-c") >= start + 2 * FORK_BLOCKS + 1, "firm-c and firm-d's longer chain")
        net.start("firm-a")
        net.start("firm-b")
        net.wait_ready(["firm-a", "firm-b"])
        wait_for(lambda: bool((get(net, "firm-a", "/v1/forks") or {}).get("side_branches")),
                 "firm-a's own blocks become a side branch")
        side = get(net, "firm-a", "/v1/forks")["side_branches"][0]
        assert set().union(*(set(b["signers"]) for b in side["blocks"])) <= {"firm-a", "firm-b"}
        assert lost.name == "firm-a"

        # A stopped member: firm-d's signatures go missing while the majority moves on.
        wait_for(lambda: get(net, "firm-a", "/v1/status")["heads"]["majority"] >= tip(net, "firm-a") - 2,
                 "the majority back on one chain")
        net.stop("firm-d")
        stopped_at = tip(net, "firm-a")
        wait_for(lambda: get(net, "firm-a", "/v1/status")["heads"]["majority"] >= stopped_at + 3,
                 "majority progress without firm-d")

        with headless_chromium(tmp_path / "profile") as browser:
            browser.get(f"http://{a.api}/explorer#token={READ_TOKEN}")
            wait_in_page(browser, lambda d: d.find_elements(
                "css selector", 'td[data-member="firm-d"][data-state="missing"]'), "firm-d's missing signatures")
            # One reading of the matrix (the page redraws it every 2 s): height -> firm-d's cell.
            cells = browser.execute_script(
                "return Array.from(document.querySelectorAll('td[data-member=\"firm-d\"]'))"
                ".map(c => [Number(c.dataset.height), c.dataset.state]);")
            missing = {h for h, state in cells if state == "missing"}
            shown = {h for h, _state in cells}
            after_stop = {h for h in shown if h > stopped_at + 1}  # firm-d was gone before these were made
            assert after_stop and after_stop <= missing, (sorted(after_stop), sorted(missing))
            signed = browser.find_elements("css selector", 'td[data-member="firm-a"][data-state="signed"]')
            assert signed, "firm-a's own signatures show as signed"

            row = wait_in_page(browser, lambda d: d.find_elements(
                "css selector", f'tr[data-testid="side-branch"][data-tip="{side["tip"]}"]'), "the side branch")[0]
            # Held while fork choice could still return to it, then forgotten by the tree once the
            # settled block passes its fork point (read back from the store): either way, why it lost.
            assert side["tip"][:12] in row.text
            assert "lighter: " in row.text or "lost at a reorg" in row.text, row.text

            cell = wait_in_page(browser, lambda d: d.find_elements("css selector", 'td[data-testid="anchor-txid"]'),
                                "an anchor")[0]
            txid = cell.text
            assert re.fullmatch(r"[0-9a-f]{64}", txid), txid
            heights = cell.find_element("xpath", "..").find_elements("tag name", "td")[3].text
            first = int(re.split(r"\D", heights)[0])
            assert get(net, "firm-a", f"/v1/anchors/{first}")["bitcoin_txid"] == txid

            header = browser.find_elements("css selector", "#matrix th.h")[-1]
            block_hash = header.get_attribute("data-hash")
            header.click()
            wait_in_page(browser, lambda d: any(e.text == block_hash for e in d.find_elements(
                "css selector", '[data-testid="block-hash"]')), "the clicked block's detail")

            browser.execute_script("window.notReloaded = true;")
            drawn = int(browser.find_element("id", "updated").get_attribute("data-tip"))
            wait_in_page(browser, lambda d: int(d.find_element("id", "updated").get_attribute("data-tip")) > drawn,
                         "a newer tip without a reload")
            assert browser.execute_script("return window.notReloaded === true;")

            browser.execute_script("document.getElementById('matrix').parentElement.scrollLeft = 0; "
                                   "window.scrollTo(0, 0);")
            screenshot = os.environ.get("PEERDB_SCREENSHOT")
            browser.save_screenshot(str(tmp_path / "explorer.png"))
            if screenshot:
                browser.save_screenshot(screenshot)
