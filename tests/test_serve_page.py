"""The service's browser page, run: app.js in Node with a stand-in page and server.

String checks on app.js cannot see an exception a browser would throw (a header value it
cannot send) or a request it should never have made; running the script can.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node.js to run the page's script")

APP_JS = Path(__file__).resolve().parents[1] / "src/contentiqa/serve/static/app.js"

# A stand-in for the page's elements, sessionStorage and the server. Each scenario is a list of
# steps; the script prints what the page shows and which requests it made, as JSON.
HARNESS = r"""
const fs = require("fs");
const [appPath, scenarioJson] = process.argv.slice(2);
const scenario = JSON.parse(scenarioJson);
function element(name) {
  const handlers = {};
  return {
    name, textContent: "", hidden: name === "#key-box", value: "", src: "", alt: "", dataset: {},
    classList: { set: new Set(), add(...c) { c.forEach((x) => this.set.add(x)); } },
    addEventListener(type, fn) { handlers[type] = fn; }, fire(type, ev) { return handlers[type](ev); },
    focus() {}, appendChild() {}, querySelector(sel) { return this.parts[sel] || (this.parts[sel] = element(sel)); },
    parts: {},
  };
}
const els = {};
global.document = {
  querySelector(sel) {
    if (sel === "#card-template") {
      return { content: { firstElementChild: { cloneNode: () => element("card") } } };
    }
    return els[sel] || (els[sel] = element(sel));
  },
};
const storage = new Map(Object.entries(scenario.storage || {}));
global.sessionStorage = { getItem: (k) => storage.get(k) ?? null, setItem: (k, v) => storage.set(k, v) };
URL.createObjectURL = () => "blob:x";
const requests = [];
const rejections = [];
process.on("unhandledRejection", (e) => rejections.push(String(e && e.message || e)));
global.fetch = async (path, opts = {}) => {
  const key = (opts.headers || {})["X-API-Key"];
  // as a browser's fetch does: a header value outside Latin-1 throws before anything is sent
  if (key !== undefined && [...key].some((ch) => ch.codePointAt(0) > 255)) {
    throw new TypeError("Cannot convert argument to a ByteString");
  }
  requests.push(path);
  if (scenario.down) throw new TypeError("fetch failed");
  if (scenario.key && key !== scenario.key) {
    return new Response(JSON.stringify({ detail: "missing or wrong API key" }), { status: 401 });
  }
  if (path === "/v1/models") {
    return Response.json({
      models: [{ name: "m", weights: "w", version: "0", score_range: [0, 100], higher_is_better: true, explain: false }],
      limits: { max_upload_bytes: scenario.max_upload_bytes || 2 ** 20 },
    });
  }
  if (scenario.fail500) {  // as the service answers an error of its own
    return Response.json({ detail: "internal server error", request_id: "abc123" },
                         { status: 500, headers: { "X-Request-ID": "abc123" } });
  }
  return Response.json({ results: [{ score: 50, scale: [0, 100], category: null, notes: "" }] });
};
global.setTimeout = (fn) => 0;  // no retries during the test: the first answer is what is shown
require("vm").runInThisContext(fs.readFileSync(appPath, "utf8") + "\n;globalThis.app = { state, handleFiles };");
const { state, handleFiles } = globalThis.app;
(async () => {
  const settle = async () => { for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r)); };
  for (const step of scenario.steps) {
    await settle();
    if (step.key !== undefined) {
      els["#api-key"].value = step.key;
      els["#key-save"].fire("click");
    }
    if (step.files) {
      const files = step.files.map(([name, size]) => new File([new Uint8Array(size)], name, { type: "image/jpeg" }));
      await handleFiles(files);
    }
  }
  await settle();
  const cards = state.cards.map((c) => ({ name: c.file.name, failed: !!c.failed, error: c.el.parts[".error"]?.textContent || "" }));
  console.log(JSON.stringify({
    info: els["#model-info"]?.textContent, keyBoxHidden: els["#key-box"]?.hidden,
    status: els["#status"]?.textContent, stored: storage.get("contentiqa-key") ?? null,
    requests, rejections, cards,
  }));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def run_page(tmp_path: Path, **scenario) -> dict:
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    out = subprocess.run([NODE, str(harness), str(APP_JS), json.dumps(scenario)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_good_key_connects_and_scores(tmp_path):
    page = run_page(tmp_path, key="sekrit", steps=[{"key": " sekrit "}, {"files": [["a.jpg", 100]]}])
    assert page["rejections"] == [] and page["stored"] == "sekrit", page
    assert page["info"].startswith("model m") and page["keyBoxHidden"] is True
    assert page["cards"] == [{"name": "a.jpg", "failed": False, "error": ""}]
    assert "/v1/score" in page["requests"]


def test_a_key_the_browser_cannot_send_is_refused_on_the_page_and_not_kept(tmp_path):
    # a zero-width space pasted along with the key: trim() keeps it, fetch would throw
    page = run_page(tmp_path, key="sekrit", steps=[{"key": "sekrit\u200b"}])
    assert page["rejections"] == [], page
    assert "U+200B" in page["info"] and page["stored"] is None
    assert page["keyBoxHidden"] is False  # the box stays, to enter it again
    # one stored earlier (a reload of the same tab) is not sent either: the page asks again
    page = run_page(tmp_path, key="sekrit", storage={"contentiqa-key": "sekrit\u201d"}, steps=[])
    assert page["rejections"] == [] and page["keyBoxHidden"] is False, page
    assert "needs an API key" in page["info"]


def test_a_server_error_shows_its_request_id_to_match_the_log(tmp_path):
    page = run_page(tmp_path, fail500=True, steps=[{"files": [["a.jpg", 100]]}])
    assert page["rejections"] == [], page
    assert page["cards"][0]["failed"] and page["cards"][0]["error"].endswith("internal server error (request abc123)")


def test_an_unreachable_server_is_said_not_left_connecting(tmp_path):
    page = run_page(tmp_path, down=True, steps=[{"files": [["a.jpg", 100]]}])
    assert page["rejections"] == [], page
    assert "cannot reach the server" in page["info"] and "not connected" in page["status"]


def test_a_photo_over_the_upload_limit_fails_on_its_card_unsent_and_the_rest_score(tmp_path):
    page = run_page(tmp_path, max_upload_bytes=4096,
                    steps=[{"files": [["big.jpg", 8000], ["small.jpg", 100], ["fits.jpg", 3500]]}])
    assert page["rejections"] == [], page
    cards = {c["name"]: c for c in page["cards"]}
    assert cards["big.jpg"]["failed"] and "upload limit of 4 KiB" in cards["big.jpg"]["error"]
    # a photo whose form (about 170 bytes around it) fits is sent
    assert not cards["small.jpg"]["failed"] and not cards["fits.jpg"]["failed"]
    assert page["requests"].count("/v1/score") == 2  # not the big one
    assert page["status"].startswith("2 of 3 photo(s) scored, 1 failed")
