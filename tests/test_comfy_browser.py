"""The shipped workflows in ComfyUI's own frontend, in headless Chromium (issue 2, layer 4).

Debian's chromium driven by PyPI playwright (never `playwright install`), a fresh profile, the real server
of tests/test_comfy_server.py. Each workflow is loaded with app.loadGraphData as the Workflows menu does;
it must bring every node type, raise no missing-nodes dialog and no warning (the frontend checks the file
against its schema), and keep every widget value. Screenshots go to test-artifacts/<workflow>.png.
"""

import json
import os
from pathlib import Path

import pytest

from onestep_sr.testing import comfy_host as host_lib

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
APP_READY = "() => window.app && window.app.graph && window.LiteGraph && window.app.extensionManager"
LOAD_AND_REPORT = """async (workflow) => {
    await app.loadGraphData(workflow);
    const nodes = app.graph._nodes;
    return {
        unregistered: workflow.nodes.map(n => n.type).filter(t => !(t in LiteGraph.registered_node_types)),
        types: nodes.map(n => n.type),
        broken: nodes.filter(n => n.has_errors).map(n => n.type),
        widgets: Object.fromEntries(nodes.map(n => [String(n.id), n.serialize().widgets_values ?? []])),
    };
}"""


@pytest.fixture(scope="module")
def browser(comfy_server, tmp_path_factory):
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} is missing; `apt-get install -y chromium` (scripts/run_tests.sh does)"
        if os.environ.get(host_lib.HOST_ENV):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    comfy_server.post_json("/api/settings/Comfy.TutorialCompleted", True)  # else the templates dialog covers all
    comfy_server.post_json("/api/settings/Comfy.Workflow.Persist", False)  # else a page reopens the last workflow
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=FLAGS, viewport={"width": 2560, "height": 1440})
        yield context
        context.close()


def open_workflow(browser, server, workflow):
    """A fresh page with `workflow` loaded; returns (page, what the frontend made of it)."""
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_function(APP_READY, timeout=60_000)
    report = page.evaluate(LOAD_AND_REPORT, workflow)
    page.wait_for_timeout(500)  # dialogs and toasts appear just after loading; nodes get their sizes when drawn
    page.evaluate('() => app.extensionManager.command.execute("Comfy.Canvas.FitView")')
    page.wait_for_timeout(200)
    report["warnings"] = page.locator(".p-toast-message-warn, .p-toast-message-error").all_inner_texts()
    report["dialogs"] = page.locator(".p-dialog").all_inner_texts()
    return page, report


@pytest.mark.parametrize("path", host_lib.workflow_files(), ids=lambda p: p.name)
def test_workflow_loads_in_the_frontend(browser, comfy_server, path):
    workflow = json.loads(path.read_text())
    page, report = open_workflow(browser, comfy_server, workflow)
    host_lib.ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(host_lib.ARTIFACTS / f"{path.stem}.png"))
    page.close()
    assert not report["unregistered"], f"node types the frontend does not know: {report['unregistered']}"
    assert not report["broken"] and not report["dialogs"], report["dialogs"]
    assert sorted(report["types"]) == sorted(node["type"] for node in workflow["nodes"])
    assert not report["warnings"], report["warnings"]
    for node in workflow["nodes"]:
        assert report["widgets"][str(node["id"])] == node.get("widgets_values", []), (
            f"node {node['id']} ({node['type']}): the frontend reads its widget values differently")


def test_frontend_check_catches_a_missing_node_type(browser, comfy_server):
    shipped = host_lib.workflow_files()
    assert shipped, f"no workflows in {host_lib.WORKFLOWS}"
    workflow = json.loads(shipped[0].read_text())
    workflow["nodes"][0]["type"] = "OneStepSR_NoSuchNode"
    page, report = open_workflow(browser, comfy_server, workflow)
    page.close()
    assert report["unregistered"] == ["OneStepSR_NoSuchNode"] and report["broken"] == ["OneStepSR_NoSuchNode"]
    assert any("missing nodes" in text for text in report["dialogs"]), report["dialogs"]
