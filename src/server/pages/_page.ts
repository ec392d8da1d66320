/**
 * What the two pages share: the HTML shell with a strict Content-Security-Policy (the one inline script is
 * allowed by its hash, nothing is loaded from elsewhere), the CSS, the key form, and the client helpers
 * for the key (taken from the URL fragment, kept in sessionStorage, asked for again on a 401) and for
 * building DOM nodes from untrusted text without innerHTML.
 */

/** A page served as is: no server-side data goes into it, the page's script fetches the API. */
export interface StaticPage {
  html: string;
  /** The response headers, the CSP with the script's hash among them. */
  headers(): Promise<Record<string, string>>;
}

/** Parts of a page. */
export interface PageParts {
  title: string;
  /** Extra CSS after the shared rules. */
  css: string;
  /** The body's markup (static: no data). */
  body: string;
  /** The page's script, after the shared helpers. */
  script: string;
}

/** Builds a page from its parts. */
export function htmlPage(parts: PageParts): StaticPage {
  const script = `"use strict";\n${CLIENT_HELPERS}\n${parts.script}`;
  if (/<\/script/i.test(script)) throw new Error(`Cannot build page '${parts.title}': its script contains '</script'`);
  const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>${parts.title}</title>
<style>${SHARED_CSS}${parts.css}</style>
</head>
<body>
${KEY_FORM}
${parts.body}
<script>${script}</script>
</body>
</html>
`;
  let headers: Promise<Record<string, string>> | undefined;
  return {
    html,
    headers() {
      headers ??= sha256Base64(script).then((hash) => ({
        "content-type": "text/html; charset=utf-8",
        "content-security-policy": [
          "default-src 'none'",
          `script-src 'sha256-${hash}'`,
          "style-src 'unsafe-inline'",
          "connect-src 'self'",
          "img-src 'self' data:",
          "base-uri 'none'",
          "form-action 'none'",
          "frame-ancestors 'none'",
        ].join("; "),
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-cache",
      }));
      return headers;
    },
  };
}

async function sha256Base64(text: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
  return btoa(String.fromCharCode(...digest));
}

const KEY_FORM = `<form id="keyform" class="keyform" hidden>
  <label for="keyinput">Key</label>
  <input id="keyinput" type="password" autocomplete="off" placeholder="API key or label key">
  <button type="submit">Use key</button>
  <span id="keymsg" role="alert"></span>
</form>`;

const SHARED_CSS = String.raw`
:root { --fg: #1d2330; --muted: #667085; --line: #d9dee7; --bg: #f6f7f9; --card: #fff; --accent: #2f6fde;
  --good: #1a7f4b; --bad: #c4321f; --warn: #b26a00; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Liberation Sans", sans-serif;
  color: var(--fg); background: var(--bg); }
header.top { display: flex; align-items: baseline; gap: 16px; padding: 10px 20px; background: var(--card);
  border-bottom: 1px solid var(--line); }
header.top h1 { font-size: 18px; margin: 0; }
header.top nav a { color: var(--accent); text-decoration: none; margin-right: 12px; }
header.top .right { margin-left: auto; color: var(--muted); font-size: 12px; }
main { padding: 16px 20px; }
.keyform { display: flex; gap: 8px; align-items: center; padding: 10px 20px; background: #fff4e5;
  border-bottom: 1px solid #f0c98a; }
.keyform[hidden] { display: none; }
.keyform input { width: 22em; }
#keymsg { color: var(--bad); }
input, textarea, button { font: inherit; }
input, textarea { padding: 4px 6px; border: 1px solid var(--line); border-radius: 4px; }
button { padding: 5px 12px; border: 1px solid var(--line); border-radius: 4px; background: var(--card);
  cursor: pointer; }
button:hover { border-color: var(--accent); }
kbd { font: 12px ui-monospace, monospace; padding: 0 4px; border: 1px solid var(--line); border-bottom-width: 2px;
  border-radius: 3px; background: #fafafa; }
.muted { color: var(--muted); }
.error { color: var(--bad); }
`;

/** Client helpers every page script can use (plain browser JavaScript). */
const CLIENT_HELPERS = String.raw`
const KEY_STORAGE = "dpo-key";

/** A request the key did not allow: the key form is shown, the caller stops. */
class KeyRefused extends Error {}

/** Moves a key given as #key=... into sessionStorage and out of the address bar. */
function takeKeyFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const key = params.get("key");
  if (key === null) return;
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  params.delete("key");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
}

function currentKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function showKeyForm(message) {
  const form = document.getElementById("keyform");
  form.hidden = false;
  document.getElementById("keymsg").textContent = message;
  document.getElementById("keyinput").focus();
}

/** Wires the key form: a key entered is kept for the session, then onKey() runs. */
function setupKeyForm(onKey) {
  const form = document.getElementById("keyform");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("keyinput");
    const key = input.value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    input.value = "";
    form.hidden = true;
    onKey();
  });
}

/** fetch with the key; a missing or refused key shows the key form and throws KeyRefused. */
async function api(path, init) {
  const key = currentKey();
  if (!key) {
    showKeyForm("Enter a key (or open this page with #key=... in the address).");
    throw new KeyRefused("no key");
  }
  const headers = { authorization: "Bearer " + key };
  if (init && init.body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, Object.assign({}, init, { headers }));
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => null);
    const why = body && body.error ? body.error.message : "HTTP " + response.status;
    showKeyForm((response.status === 401 ? "The key was refused: " : "This key may not do that: ") + why);
    throw new KeyRefused(why);
  }
  return response;
}

/** An element with attributes and children; strings become text nodes, never markup. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A number for people: integers as is, others with 4 significant digits, non-numbers as a dash. */
function fmtNumber(x) {
  if (typeof x !== "number" || !isFinite(x)) return "–";
  if (Number.isInteger(x)) return x.toLocaleString("en-US");
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(2);
  return String(Number(x.toPrecision(4)));
}

function fmtPercent(x) {
  return typeof x === "number" && isFinite(x) ? (x * 100).toFixed(1) + "%" : "–";
}

function fmtClock(ms) {
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, "0");
  return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
}

function fmtAgo(ms, now) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}
`;
