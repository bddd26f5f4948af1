"""The web UI in a real browser: Debian's Chromium driven by Playwright, against `tessera up` with its
node agent on simulated GPUs. Screenshots go to test-artifacts/web/ (docs/images/ has copies)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import ROOT, LocalCluster

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "web"
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make test installs it)"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(home=Path(tmp_path_factory.mktemp("web")) / "home").start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # root (CI) cannot use the sandbox
        launched = p.chromium.launch(executable_path=CHROMIUM, args=args)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, cluster: LocalCluster) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.set_default_timeout(20_000)
    yield page
    context.close()
    # Chromium logs every 4xx answer as an error; the tests cause a 401 (a wrong token) and a 422 (bad
    # input) and one a 429 (load shed) on purpose. Anything else logged as an error is a bug.
    expected = ("status of 401", "status of 422", "status of 429")
    assert [e for e in errors if not any(x in e for x in expected)] == []


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, cluster: LocalCluster) -> None:
    page.goto(cluster.url + "/")
    page.fill("#token", cluster.token)
    page.press("#token", "Enter")  # the form submits from the keyboard
    page.wait_for_selector("#user")
    assert page.text_content("#user") == "admin"


def test_sign_in_submit_watch_logs_cancel_and_the_gpu_map(page: Any, cluster: LocalCluster) -> None:
    page.goto(cluster.url + "/")
    page.wait_for_selector("#token")
    shot(page, "signin")
    page.fill("#token", "tsr_wrong")
    page.click("#sign-in")
    page.wait_for_selector("#toast:has-text('not recognised')")
    sign_in(page, cluster)

    # a long job to cancel later, from the API
    blocker = cluster.submit("sleeper", "sleep", "300", flags=("--gpu-memory", "20Gi", "--gpu-compute", "40"))
    assert blocker["status"]["state"] == "PENDING"

    # submit from the form; it runs with live logs
    page.click("[data-nav=submit]")
    form = page.locator("#submit-form")
    form.locator("[name=name]").fill("web-burn")
    # the reference workload: holds 6 GiB of its slice and keeps 25% busy, printing progress
    burn = f"{sys.executable} -m tessera.gpushare.burn --memory 6Gi --compute 25 --seconds 20 --progress 1"
    form.locator("[name=command]").fill(burn)
    form.locator("[name=gpu_memory]").fill("8Gi")
    form.locator("[name=gpu_compute]").fill("30")
    form.locator("[name=env]").fill("PYTHONUNBUFFERED=1")
    shot(page, "submit")
    page.click("#submit")
    page.wait_for_url(re.compile(r"#/jobs/"))
    page.wait_for_selector("#job-state:has-text('RUNNING')", timeout=60_000)
    page.check("#follow")
    page.wait_for_selector("#logs:has-text('progress')", timeout=30_000)
    # the node's measurements of the slice, drawn as they arrive (two points make a line)
    # (a flat line has no height, so it is "attached" rather than "visible" to Playwright)
    line = "#sparklines svg.sparkline path.spark-memory[d*='L']"
    page.wait_for_selector(line, state="attached", timeout=30_000)
    shot(page, "job")

    # the GPU map shows both jobs' slices
    page.click("[data-nav=overview]")
    page.wait_for_selector("#gpu-map [data-gpu]")
    page.wait_for_selector("[data-slice-job=sleeper]", timeout=30_000)
    assert page.locator("#gpu-map [data-gpu]").count() == 2
    shot(page, "overview")

    # the queue holds both jobs' slices, as the scheduler counts them
    page.click("[data-nav=queues]")
    used = page.locator("tr[data-queue=default] .used")
    expect(used).not_to_have_text("0 GPU · 0 CPU · 0 MiB")
    expect(page.locator("tr[data-queue=default] .share")).to_contain_text("/ 100%")
    shot(page, "queues")

    # the form job finishes with its whole output
    page.goto(cluster.url + "/#/jobs")
    page.wait_for_selector("tr[data-job=web-burn] .state:has-text('SUCCEEDED')", timeout=60_000)

    # cancel the sleeper from the jobs list (bulk, with a confirm dialog)
    page.fill("#job-search", "sleeper")
    row = page.locator("tr[data-job=sleeper]")
    row.wait_for()
    expect(page.locator("#jobs-table tbody tr")).to_have_count(1)  # the search applies as you type
    row.locator("input.select").check()
    page.click("#bulk-cancel")
    page.click("#confirm-yes")
    page.wait_for_selector("tr[data-job=sleeper] .state:has-text('CANCELLED')", timeout=30_000)
    shot(page, "jobs")
    assert cluster.job("sleeper")["status"]["state"] == "CANCELLED"

    # and its slice leaves the map
    page.click("[data-nav=overview]")
    page.wait_for_selector("#gpu-map [data-gpu]")
    page.wait_for_selector("[data-slice-job=sleeper]", state="detached", timeout=30_000)


def test_bad_input_is_shown_at_its_field_and_nothing_is_stored(page: Any, cluster: LocalCluster) -> None:
    sign_in(page, cluster)
    page.click("[data-nav=submit]")
    form = page.locator("#submit-form")
    form.locator("[name=name]").fill("bad-web")
    form.locator("[name=command]").fill("python -c pass")
    form.locator("[name=gpu_memory]").fill("lots")
    page.click("#submit")
    error = page.locator(".field-error[data-field*=gpu_memory]")
    error.wait_for()
    assert "10Gi" in (error.text_content() or "")
    assert all(j["name"] != "bad-web" for j in cluster.api("GET", "/api/v1/jobs").json()["items"])


def test_every_page_renders_on_a_phone(browser: Any, cluster: LocalCluster) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        sign_in(page, cluster)
        for name in ("overview", "jobs", "submit", "queues", "nodes", "datasets", "services"):
            page.goto(f"{cluster.url}/#/{name}")
            page.wait_for_selector("main")
            page.wait_for_load_state("networkidle")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390 + 1, f"{name} is {width}px wide on a 390px phone"
        page.goto(f"{cluster.url}/#/overview")
        page.wait_for_selector("#gpu-map [data-gpu]")
        shot(page, "phone-overview")
    finally:
        context.close()


def test_the_keyboard_alone_reaches_every_page(page: Any, cluster: LocalCluster) -> None:
    sign_in(page, cluster)
    page.wait_for_selector("#gpu-map")
    for target in ("jobs", "submit", "services"):
        page.locator("body").focus()
        page.evaluate("document.activeElement && document.activeElement.blur()")
        for _ in range(40):  # Tab through the header until the nav link has the focus
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement?.dataset?.nav") == target:
                break
        else:
            raise AssertionError(f"Tab never reached the {target} link")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(f"#/{target}"))
    # the submit form is filled and sent from the keyboard too
    page.goto(cluster.url + "/#/submit")
    page.locator("#submit-form [name=name]").focus()
    page.keyboard.type("typed")
    page.locator("#submit-form [name=command]").focus()
    page.keyboard.type("python -c pass")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"#/jobs/"))
    assert cluster.job("typed")["spec"]["groups"][0]["command"] == ["python", "-c", "pass"]


# records every error banner or toast that is shown (an element of class error that stops being hidden)
SHOWN_ERRORS = """() => {
  window.shownErrors = [];
  new MutationObserver((changes) => {
    for (const c of changes) {
      const el = c.target;
      const shown = el.classList && el.classList.contains("error") && !el.hidden;
      if (shown) window.shownErrors.push(el.textContent);
    }
  }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ["hidden"] });
}"""


def test_a_busy_control_plane_is_asked_again_and_node_conditions_show(
    page: Any, cluster: LocalCluster
) -> None:
    # a node whose agent says its log disk is full (an admin token may speak for any node)
    inventory = {
        "cpu": 4,
        "memory": "8Gi",
        "conditions": [{"type": "LogDiskFull", "message": "tasks keep running"}],
    }
    r = cluster.api("POST", "/api/v1/nodes", json={"name": "sick", "inventory": inventory})
    assert r.status_code == 200, r.text
    sign_in(page, cluster)
    # the API sheds load with 429 + Retry-After: the first read of the nodes is refused, and the
    # page asks again after the wait instead of showing an error
    calls: list[str] = []

    def shed(route: Any) -> None:
        calls.append(route.request.url)
        if len(calls) == 1:
            body = '{"title": "Too Many Requests", "status": 429, "detail": "slow down"}'
            headers = {"Retry-After": "1", "Content-Type": "application/problem+json"}
            route.fulfill(status=429, headers=headers, body=body)
        else:
            route.continue_()

    page.route(re.compile(r".*/api/v1/nodes$"), shed)
    page.evaluate(SHOWN_ERRORS)
    page.click("[data-nav=nodes]")
    badge = page.locator("tr[data-node=sick] [data-condition=LogDiskFull]")
    badge.wait_for()
    assert len(calls) >= 2 and badge.get_attribute("title") == "tasks keep running"
    assert page.evaluate("window.shownErrors") == []  # the 429 never reached the user
