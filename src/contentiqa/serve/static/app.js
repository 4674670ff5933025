// contentiqa browser page: score dropped photos with this server's API, best first.
// Everything is local (no CDN); the photos go to this server only.
"use strict";

// HTTP headers carry Latin-1 only, and the server takes printable ASCII keys: a key pasted with
// a zero-width space or a curly quote would make every fetch throw before it is sent.
const KEY_CHARS = /^[\x20-\x7e]+$/;
const stored = sessionStorage.getItem("contentiqa-key") || "";
const state = { key: KEY_CHARS.test(stored) ? stored : "", model: null, cards: [] };
const $ = (sel) => document.querySelector(sel);
// The multipart form's own lines around a photo's bytes (its boundaries and part header, which
// names the file): what the server's limit counts beside the photo.
const formOverhead = (file) => 256 + 2 * new TextEncoder().encode(file.name).length;

function headers() {
  return state.key ? { "X-API-Key": state.key } : {};
}

function setStatus(text) { $("#status").textContent = text; }

function askForKey() {
  // A 401: no key yet, or the one given was refused (a typo, or the server's key changed).
  $("#key-box").hidden = false;
  $("#model-info").textContent = state.key
    ? "the server refused this API key: check it and enter it again"
    : "this server needs an API key: enter it below";
  $("#api-key").focus();
}

async function loadModel() {
  let res;
  try {
    res = await fetch("/v1/models", { headers: headers() });
  } catch (e) {  // the server is unreachable (stopped, or the network): say so and try again
    $("#model-info").textContent = `cannot reach the server (${e.message}); trying again…`;
    setTimeout(loadModel, 3000);
    return false;
  }
  if (res.status === 401) {
    askForKey();
    return false;
  }
  if (res.status === 503) {
    $("#model-info").textContent = "the model is loading…";
    setTimeout(loadModel, 1000);
    return false;
  }
  if (!res.ok) { $("#model-info").textContent = `server error ${res.status}`; return false; }
  const body = await res.json();
  state.model = body.models[0];
  state.limits = body.limits;
  const m = state.model;
  const dir = m.higher_is_better ? "higher is better" : "lower is better";
  $("#model-info").textContent =
    `model ${m.name}${m.weights ? " (" + m.weights + ")" : ""}, contentiqa ${m.version}; ` +
    (m.predicts_score === false ? "content categories only (this model gives no score)"
      : `scores on [${m.score_range[0]}, ${m.score_range[1]}], ${dir}`);
  // No heatmaps from this server: say why once, instead of leaving their place empty.
  $("#explain-note").textContent = m.explain ? "" : `No heatmaps: ${m.explain_note || "this server cannot explain"}.`;
  $("#explain-note").hidden = !!m.explain;
  $("#key-box").hidden = true;
  return true;
}

function better(a, b) {
  // Sort key: scored cards first, best first (the model's direction), failed ones last; a
  // content-only model's cards (a category, no score) in the order they were dropped.
  if (!!a.failed !== !!b.failed) return a.failed ? 1 : -1;
  const sa = a.score, sb = b.score;
  if (sa == null && sb == null) return a.order - b.order;
  if (sa == null) return 1;
  if (sb == null) return -1;
  return state.model && !state.model.higher_is_better ? sa - sb : sb - sa;
}

function resort() {
  const list = $("#results");
  state.cards.sort(better).forEach((c) => list.appendChild(c.el));
}

function makeCard(file) {
  const el = $("#card-template").content.firstElementChild.cloneNode(true);
  el.querySelector(".name").textContent = file.name;
  el.querySelector(".photo").src = URL.createObjectURL(file);
  el.querySelector(".photo").alt = file.name;
  el.querySelector(".heat-fig").hidden = true;
  const card = { el, file, score: null, order: state.cards.length };
  state.cards.push(card);
  $("#results").appendChild(el);
  return card;
}

async function post(path, file) {
  const form = new FormData();
  form.append(path === "/v1/score" ? "files" : "file", file, file.name);
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(path, { method: "POST", body: form, headers: headers() });
    if (res.status === 503 && attempt < 5) {  // queue full: wait as the server asks
      const wait = Number(res.headers.get("Retry-After") || "1");
      await new Promise((r) => setTimeout(r, Math.min(wait, 10) * 1000));
      continue;
    }
    return res;
  }
}

async function errorText(res) {
  if (res.status === 401) { askForKey(); return "the server refused the API key: enter it again above"; }
  // a server error's id matches the log's traceback: shown, so a report of it can name it
  const id = res.status >= 500 ? res.headers.get("X-Request-ID") : null;
  const said = (text) => (id ? `${text} (request ${id})` : text);
  try { const b = await res.json(); return said(b.detail ? String(b.detail) : `HTTP ${res.status}`); }
  catch (e) { return said(`HTTP ${res.status}`); }
}

async function scoreCard(card) {
  const el = card.el;
  try {
    const res = await post("/v1/score", card.file);
    if (!res.ok) throw new Error(await errorText(res));
    const row = (await res.json()).results[0];
    if (row.error) throw new Error(row.error);
    card.score = row.score;
    el.dataset.score = String(row.score);
    if (row.score != null) {
      el.querySelector(".score").textContent = row.score.toFixed(2);
      el.querySelector(".scale").textContent = `on [${row.scale[0]}, ${row.scale[1]}]`;
    } else {  // a content-only model: its category is the result
      el.querySelector(".score").textContent = "–";
    }
    if (row.category) {
      el.querySelector(".category").textContent =
        `${row.category} (${(100 * row.category_confidence).toFixed(0)} %)`;
    }
    el.querySelector(".notes").textContent = row.notes || "";
    return true;
  } catch (e) {
    return failCard(card, e.message);
  } finally {
    card.el.classList.add("done");
    resort();
  }
}

function bytesText(n) {
  return n >= 2 ** 20 ? `${+(n / 2 ** 20).toFixed(1)} MiB` : `${+(n / 1024).toFixed(1)} KiB`;
}

function failCard(card, message) {
  card.failed = true;
  card.el.classList.add("failed", "done");
  card.el.querySelector(".score").textContent = "–";
  card.el.querySelector(".error").textContent = message;
  resort();
  return false;
}

async function heatmapCard(card) {
  if (!state.model || !state.model.explain) return;
  try {
    const target = state.model.predicts_score === false ? "category" : "quality";
    const res = await post(`/v1/explain?target=${target}&max_size=400`, card.file);
    if (!res.ok) return;
    const blob = await res.blob();
    const img = card.el.querySelector(".heatmap");
    img.src = URL.createObjectURL(blob);
    img.alt = `heatmap of ${card.file.name}`;
    // the target the map is of, and an empty map said (drawn flat, it would read as "everywhere alike")
    const caption = card.el.querySelector(".heat-fig figcaption");
    caption.textContent = res.headers.get("X-Heatmap-Empty")
      ? `empty ${target} map: no region raised the ${target === "quality" ? "score" : "category"}`
      : `where the model looked (${target})`;
    card.el.querySelector(".heat-fig").hidden = false;
  } catch (e) { /* the score matters more than its heatmap */ }
}

async function handleFiles(fileList) {
  const picked = Array.from(fileList);
  const files = picked.filter((f) => f.type.startsWith("image/") || f.type === "");
  // Files the browser knows are not images are not sent, but said: none vanishes unexplained.
  const skipped = picked.filter((f) => !files.includes(f)).map((f) => f.name);
  const skipNote = skipped.length ? `; skipped ${skipped.join(", ")} (not an image)` : "";
  if (!files.length) { setStatus(`nothing to score${skipNote}`); return; }
  if (!state.model && !(await loadModel())) { setStatus(`not connected to the model yet${skipNote}`); return; }
  const cards = files.map(makeCard);
  let next = 0, done = 0, failed = 0;
  // A photo over the server's upload limit is refused before it is sent: the server answers
  // such a request at once and closes the connection, which a browser still sending the body
  // may report as a bare network error instead of the server's reason.
  const limit = state.limits && state.limits.max_upload_bytes;
  const tooLarge = (card) => limit && card.file.size + formOverhead(card.file) > limit;
  // A photo that could not be scored is counted as such, never as scored.
  const tally = () => `${done - failed} of ${cards.length} photo(s) scored` + (failed ? `, ${failed} failed` : "");
  setStatus(`scoring ${cards.length} photo(s)…`);
  // A few requests at a time: the server batches them together.
  async function worker() {
    while (next < cards.length) {
      const card = cards[next++];
      const ok = tooLarge(card)
        ? failCard(card, `larger than this server's upload limit of ${bytesText(limit)} (the photo and its form)`)
        : await scoreCard(card);
      if (!ok) failed++;
      done++;
      setStatus(tally());
    }
  }
  await Promise.all([worker(), worker(), worker(), worker()]);
  setStatus(`${tally()}; computing heatmaps…`);
  for (const card of cards) if (!card.failed) await heatmapCard(card);
  setStatus(`${tally()}; done${skipNote}`);
}

function setup() {
  const drop = $("#drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => handleFiles(e.dataTransfer.files));
  $("#file-input").addEventListener("change", (e) => { handleFiles(e.target.files); e.target.value = ""; });
  $("#key-save").addEventListener("click", () => {
    const key = $("#api-key").value.trim();
    if (!KEY_CHARS.test(key)) {
      const bad = [...key].find((ch) => !KEY_CHARS.test(ch));
      $("#model-info").textContent = bad === undefined
        ? "enter the API key first"
        : `an API key has printable ASCII characters only: this one has U+${bad.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")} (pasted along with it?)`;
      $("#api-key").focus();
      return;
    }
    state.key = key;
    sessionStorage.setItem("contentiqa-key", key);
    loadModel();
  });
  loadModel();
}

setup();
