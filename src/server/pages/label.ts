/**
 * `/label`: human labeling. Served without a key; its script lists pairs awaiting judgment
 * (`GET /v1/pairs`) with the key from the URL fragment, shows the prompt and responses A and B side by
 * side, and posts the verdict with the annotator's name (`POST /v1/pairs/:id/feedback`), then moves on.
 * Keys: a or 1 for A, b or 2 for B, t or 0 for a tie, s to skip. A pair someone else judged first (409)
 * or that expired is skipped with a notice.
 */
import { htmlPage, type StaticPage } from "./_page.ts";

const BODY = String.raw`<header class="top">
  <h1>Label pairs</h1>
  <nav><a href="/">Dashboard</a><a href="/label">Label pairs</a></nav>
  <span class="right">
    <label for="annotator">Annotator</label>
    <input id="annotator" autocomplete="off" maxlength="200" placeholder="your name">
    <span id="count" class="muted">0 labeled</span>
  </span>
</header>
<main>
  <p id="notice" class="notice" role="status"></p>
  <p id="loading" class="muted">Loading…</p>
  <section id="empty" class="empty" hidden>
    <h2>Nothing awaits judgment</h2>
    <p class="muted">New pairs appear here as the server samples them; this page looks again every 5 seconds.</p>
  </section>
  <section id="pair" hidden>
    <div id="meta" class="meta muted"></div>
    <h2>Prompt</h2>
    <div id="prompt" class="prompt"></div>
    <div class="responses">
      <article class="response" id="responseA"><h3>Response A</h3><div class="text" id="textA"></div></article>
      <article class="response" id="responseB"><h3>Response B</h3><div class="text" id="textB"></div></article>
    </div>
    <textarea id="reason" rows="2" maxlength="4000" placeholder="Reason (optional; Esc leaves the box)"></textarea>
    <div class="actions">
      <button type="button" id="chooseA" data-choice="a">A is better <kbd>A</kbd> <kbd>1</kbd></button>
      <button type="button" id="chooseTie" data-choice="tie">Tie <kbd>T</kbd> <kbd>0</kbd></button>
      <button type="button" id="chooseB" data-choice="b">B is better <kbd>B</kbd> <kbd>2</kbd></button>
      <button type="button" id="skip">Skip <kbd>S</kbd></button>
    </div>
  </section>
</main>`;

const CSS = String.raw`
main { max-width: 1200px; margin: 0 auto; }
h2 { font-size: 15px; margin: 14px 0 6px; }
.notice { min-height: 1.45em; margin: 0 0 6px; color: var(--muted); }
.notice.warn { color: var(--warn); }
.notice.bad { color: var(--bad); }
.prompt, .response .text { white-space: pre-wrap; overflow-wrap: anywhere; }
.prompt { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
  max-height: 30vh; overflow: auto; }
.prompt .role { font-size: 12px; font-weight: 600; color: var(--muted); text-transform: uppercase; }
.responses { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; margin: 14px 0; }
@media (max-width: 700px) { .responses { grid-template-columns: 1fr; } }
.response { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
  min-height: 120px; }
.response h3 { margin: 0 0 6px; font-size: 13px; color: var(--muted); }
.response.picked { border-color: var(--accent); box-shadow: 0 0 0 2px #cfe0ff; }
textarea { width: 100%; resize: vertical; }
.actions { display: flex; gap: 10px; margin-top: 10px; }
.actions button { padding: 8px 16px; }
#chooseA, #chooseB { font-weight: 600; }
.empty { text-align: center; padding: 40px 0; }
`;

const SCRIPT = String.raw`
const ANNOTATOR_STORAGE = "dpo-annotator";
const POLL_MS = 5000;
const CHOICE_NAMES = { a: "A", b: "B", tie: "tie" };
let queue = [];
let current = null;
let busy = false;
let labeled = 0;
let pollTimer = null;
const passed = new Set(); // pairs skipped or answered here: not shown again in this session

const $ = (id) => document.getElementById(id);

function notice(text, kind) {
  $("notice").textContent = text;
  $("notice").className = "notice" + (kind ? " " + kind : "");
}

function show(section) {
  $("loading").hidden = section !== "loading";
  $("empty").hidden = section !== "empty";
  $("pair").hidden = section !== "pair";
}

async function loadQueue() {
  clearTimeout(pollTimer);
  try {
    const response = await api("/v1/pairs?status=awaiting_judgment&limit=50");
    const body = await response.json();
    if (!response.ok) throw new Error(body && body.error ? body.error.message : "HTTP " + response.status);
    queue = body.pairs.filter((p) => !passed.has(p.id));
  } catch (err) {
    if (err instanceof KeyRefused) return show("loading");
    notice("Cannot load pairs: " + err.message, "bad");
    pollTimer = setTimeout(loadQueue, POLL_MS);
    return;
  }
  showNext();
}

function showNext() {
  current = queue.shift() || null;
  if (current === null) {
    show("empty");
    pollTimer = setTimeout(loadQueue, POLL_MS);
    return;
  }
  const p = current;
  $("pair").dataset.pair = p.id;
  $("meta").textContent = "pair " + p.id + " · policy v" + p.policy_version + " · sampled " +
    new Date(p.created_at).toLocaleString() + (p.expires_at ? " · expires " + new Date(p.expires_at).toLocaleString() : "");
  const prompt = $("prompt");
  if (p.messages) {
    prompt.replaceChildren(...p.messages.map((m) => el("div", { class: "message" },
      el("div", { class: "role" }, m.role), el("div", {}, m.content))));
  } else {
    prompt.replaceChildren(document.createTextNode(p.prompt));
  }
  $("textA").textContent = p.a;
  $("textB").textContent = p.b;
  $("responseA").classList.remove("picked");
  $("responseB").classList.remove("picked");
  $("reason").value = "";
  show("pair");
}

async function submit(choice) {
  if (current === null || busy) return;
  const annotator = $("annotator").value.trim();
  if (!annotator) {
    notice("Enter your name as annotator first: it is recorded with every verdict.", "warn");
    $("annotator").focus();
    return;
  }
  busy = true;
  const pair = current;
  if (choice !== "tie") $(choice === "a" ? "responseA" : "responseB").classList.add("picked");
  const body = { choice, annotator };
  const reason = $("reason").value.trim();
  if (reason) body.reason = reason;
  try {
    const response = await api("/v1/pairs/" + encodeURIComponent(pair.id) + "/feedback", {
      method: "POST",
      body: JSON.stringify(body),
    });
    if (response.ok) {
      labeled++;
      $("count").textContent = labeled + " labeled";
      notice("Recorded " + CHOICE_NAMES[choice] + " for pair " + pair.id + ".");
    } else if (response.status === 409 || response.status === 404) {
      notice("Pair " + pair.id + " was judged by someone else or expired: moved on.", "warn");
    } else {
      const err = await response.json().catch(() => null);
      notice("Cannot record the verdict: " + (err && err.error ? err.error.message : "HTTP " + response.status), "bad");
      return;
    }
    passed.add(pair.id);
    if (queue.length === 0) await loadQueue();
    else showNext();
  } catch (err) {
    if (!(err instanceof KeyRefused)) notice("Cannot record the verdict: " + err.message, "bad");
  } finally {
    busy = false;
  }
}

function skip() {
  if (current === null || busy) return;
  passed.add(current.id);
  notice("Skipped pair " + current.id + ".");
  if (queue.length === 0) loadQueue();
  else showNext();
}

const KEYS = { a: "a", 1: "a", b: "b", 2: "b", t: "tie", 0: "tie" };
document.addEventListener("keydown", (event) => {
  const target = event.target;
  if (target.closest && target.closest("input, textarea")) {
    if (event.key === "Escape") target.blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
  const key = event.key.toLowerCase();
  if (key === "s") {
    event.preventDefault();
    skip();
  } else if (Object.hasOwn(KEYS, key)) {
    event.preventDefault();
    submit(KEYS[key]);
  }
});
for (const button of document.querySelectorAll("[data-choice]")) {
  button.addEventListener("click", () => submit(button.dataset.choice));
}
$("skip").addEventListener("click", skip);
$("annotator").value = localStorage.getItem(ANNOTATOR_STORAGE) || "";
$("annotator").addEventListener("input", () => localStorage.setItem(ANNOTATOR_STORAGE, $("annotator").value.trim()));

takeKeyFromFragment();
setupKeyForm(loadQueue);
loadQueue();
`;

/** The labeling page. */
export const LABEL_PAGE: StaticPage = htmlPage({
  title: "Online DPO · label pairs",
  css: CSS,
  body: BODY,
  script: SCRIPT,
});
