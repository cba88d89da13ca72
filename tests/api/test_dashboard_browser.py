"""The dashboard page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium; `make test` installs them when root): the single server with the real gemma model, and a gateway
over a network-namespace test-bed whose node is killed with SIGKILL.

``EDGEINFER_DASHBOARD_SHOT=path.png`` saves the gateway page's screenshot (after the kill) there:
docs/img/dashboard.png is made this way."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
import yaml

from edgeinfer.process import ServerProcess

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
KEY = "sk-dash-browser-0123456789"
GEMMA = "gemma-3-270m"
N_TOKENS = 48  # the shared test machine may generate only a few tokens per second


def _why_no_browser() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} missing: apt-get install {package} (make test does it as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


NO_BROWSER = _why_no_browser()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(NO_BROWSER is not None, reason=f"browser: {NO_BROWSER}"),
    pytest.mark.timeout(400),
]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
    ):
        opts.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(what: str, predicate: Callable[[], object], timeout: float = 60.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - an element not rendered yet
            last = exc
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def text(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def errors_in_console(driver) -> list[str]:
    try:
        return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    except Exception:  # noqa: BLE001 - not every driver keeps the log
        return []


# --- (a) the single server, real gemma model ------------------------------------------------------------
@pytest.fixture(scope="module")
def server(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("dash-browser") / "serve.log"
    with ServerProcess(["-m", GEMMA, "-t", "2", "--api-key", KEY], log=log) as srv:
        yield srv


def test_page_asks_for_the_key_then_shows_the_model_and_live_numbers(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/dashboard")
    form = wait_until("the key form", lambda: browser.find_element(By.ID, "keyform").is_displayed())
    assert form and not browser.find_element(By.ID, "main").is_displayed()
    browser.find_element(By.ID, "key").send_keys("sk-not-the-key\n")
    wait_until("a refused key is said so", lambda: "refused" in text(browser, "#keyerror"))
    browser.find_element(By.ID, "key").send_keys(KEY + "\n")
    wait_until("the model", lambda: text(browser, f'[data-model="{GEMMA}"]'))
    assert "ready" in text(browser, f'[data-model="{GEMMA}"]') and text(browser, "#kind") == "server"
    assert browser.execute_script("return sessionStorage.getItem('edgeinfer.apiKey')") == KEY
    assert text(browser, "#running") == "0" and text(browser, "#waiting") == "0"
    before = int(text(browser, "#gen-tokens"))

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)
    done = threading.Event()

    def generate() -> None:
        try:
            for _ in client.completions.create(
                model=GEMMA, prompt="1, 2, 3, 4, 5,", max_tokens=N_TOKENS, temperature=0, stream=True
            ):
                pass
        finally:
            done.set()

    worker = threading.Thread(target=generate)
    worker.start()
    try:
        wait_until("the request shown running", lambda: text(browser, "#running") == "1")
        first = int(text(browser, "#gen-tokens"))
        moved = wait_until(
            "generated tokens move while it streams",
            lambda: not done.is_set() and int(text(browser, "#gen-tokens")) > first,
        )
        assert moved
        wait_until("a tok/s figure", lambda: float(text(browser, "#tps")) > 0 or done.is_set())
    finally:
        worker.join(300)
    wait_until("the request done", lambda: text(browser, "#running") == "0")
    wait_until("every token counted", lambda: int(text(browser, "#gen-tokens")) == before + N_TOKENS)
    ttft = wait_until("TTFT p50", lambda: text(browser, '#latency tr[data-metric="ttft"] td').endswith("ms"))
    assert ttft
    assert int(text(browser, "#requests")) > 0
    assert errors_in_console(browser) == [] or all("401" in e for e in errors_in_console(browser))
    browser.save_screenshot(str(tmp_path / "single.png"))


# --- (b) a gateway over a test-bed cluster --------------------------------------------------------------
def _netns_reason() -> str | None:
    from edgeinfer.testbed import netns

    return netns.available()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[ServerProcess, list[subprocess.Popen], list[str]]]:
    reason = _netns_reason()
    if reason is not None:
        pytest.skip(f"test-bed: {reason}")
    from edgeinfer.cluster.testbed import NODE_PORT, node_argv
    from edgeinfer.engine.shard import Shard
    from edgeinfer.models.synthetic import write_tiny_gguf
    from edgeinfer.testbed import netns

    tmp = tmp_path_factory.mktemp("dash-cluster")
    tiny = write_tiny_gguf(tmp / "tiny.gguf", arch="llama", n_layers=6)
    whole = Shard(tiny, 0, 6, threads=1)
    limit = int(whole.weight_bytes * 0.6) + (256 << 10)  # no node holds the whole model: it must split
    whole.close()
    with netns.Testbed(3, rate="100mbit") as tb:
        procs, names = [], []
        for i in range(3):
            out = (tmp / f"n{i}.log").open("ab")
            procs.append(tb.popen(i, node_argv(NODE_PORT, f"n{i}", 1, str(64 << 20)), stdout=out, stderr=out))
            names.append(f"n{i}")
        doc = {
            "model": str(tiny),
            "name": "tiny",
            "nodes": [
                {"name": f"n{i}", "address": f"{h.ip}:{NODE_PORT}", "memory_limit": limit}
                for i, h in enumerate(tb.hosts)
            ],
            "wire_dtype": "f32",
            "ctx_size": 256,  # the planner reserves a full context's KV cache per stage (64 KiB a layer)
            "planner": {"replicas": 1},  # the node the plan leaves out stands by
            "failover": {"heartbeat": 0.2, "ban": 30.0},
        }
        cfg = tmp / "cluster.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        try:
            with ServerProcess(["--cluster", str(cfg)], log=tmp / "gateway.log") as gw:
                wait_until("the gateway loaded", lambda: _ready(gw.url), timeout=120, every=0.5)
                yield gw, procs, names
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)


def _ready(url: str) -> bool:
    import httpx

    return httpx.get(url + "/v1/models", timeout=5).json()["data"][0]["status"] == "ready"


def test_gateway_page_shows_the_real_nodes_and_a_killed_node_turns_down(browser, cluster, tmp_path):
    from selenium.webdriver.common.by import By

    gw, procs, names = cluster
    browser.get(gw.url + "/dashboard")
    wait_until("the topology", lambda: browser.find_element(By.ID, "topology").is_displayed(), timeout=30)
    assert text(browser, "#kind") == "gateway"
    rows = {
        r.get_attribute("data-node"): r for r in browser.find_elements(By.CSS_SELECTOR, "#nodes tbody tr")
    }
    assert sorted(rows) == names
    # the layer map covers the model's 6 layers with contiguous ranges of the nodes that hold them
    cells = browser.find_elements(By.CSS_SELECTOR, "#layermap div")
    spans = [c.text.split()[1] for c in cells]
    assert len(cells) >= 2, "the model must be split (no node holds it whole)"
    starts = [int(s.split("–")[0]) for s in spans]
    ends = [int(s.split("–")[1]) for s in spans]
    assert (
        starts[0] == 0
        and ends[-1] == 5
        and all(a == b + 1 for a, b in zip(starts[1:], ends[:-1], strict=True))
    )
    holders = [c.get_attribute("data-node") for c in cells]
    spare = [n for n in names if n not in holders]
    for name in spare:  # 3 nodes, 2 stages: the third holds one stage's layers warm
        assert rows[name].get_attribute("data-state") == "standby"
        assert "standby" in rows[name].text
    for name in holders:
        assert browser.find_element(By.CSS_SELECTOR, f'#topo g[data-node="{name}"]').get_attribute(
            "data-state"
        ) in ("up", "unknown")
    # a request through the pipeline: per-node step times appear
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0, timeout=300)
    client.completions.create(model="tiny", prompt="the ship sails", max_tokens=24, temperature=0)
    wait_until(
        "step times per node",
        lambda: all("ms" in text(browser, f'#nodes tr[data-node="{n}"] td:nth-child(5)') for n in holders),
    )
    wait_until("the request done", lambda: text(browser, "#running") == "0")
    wait_until("its TTFT", lambda: text(browser, '#latency tr[data-metric="ttft"] td').endswith("ms"))
    assert int(text(browser, "#requests")) == 1 and int(text(browser, "#errors")) == 0

    victim = holders[-1]
    procs[names.index(victim)].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    wait_until(
        f"{victim} shown down",
        lambda: (
            browser.find_element(By.CSS_SELECTOR, f'#nodes tr[data-node="{victim}"]').get_attribute(
                "data-state"
            )
            == "down"
        ),
        timeout=10,
    )
    took = time.monotonic() - t0
    assert took < 5.0, f"{victim} took {took:.1f} s to show down"
    assert (
        browser.find_element(By.CSS_SELECTOR, f'#topo g[data-node="{victim}"]').get_attribute("data-state")
        == "down"
    )
    browser.save_screenshot(os.environ.get("EDGEINFER_DASHBOARD_SHOT") or str(tmp_path / "gateway-down.png"))
