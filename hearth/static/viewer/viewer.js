// The page a person signs in on. It follows the session's live status (server-sent events) and shows the words the
// server chose for it (hearth/signin/wording.py: headline, status line, stepper, button) — never raw state names,
// internal tags, exit codes or file paths: those stay under "Details".
//
// remote_browser: connects noVNC through the gateway when the sandbox is ready (the remote desktop follows this
// window's size; Ctrl/Cmd+V pastes this computer's clipboard into the remote browser; on phones the Keyboard button
// brings up the on-screen keyboard and types into the remote browser, Paste sends text), reconnects after network
// drops. direct: no desktop; a button that opens the provider's sign-in page, the link to copy, its QR code (finish on
// a phone), the device code with a copy button, and a field for a code to paste back.
//
// Embedded in an HEARTH_EMBED_ORIGINS page, it posts every status to the parent (`hearth.status` messages, shapes in
// the README). At the end it offers the session's return_url; the done page goes there after a few seconds.
// Paths are relative, so the page works behind a reverse proxy under any path prefix.
import RFB from "../novnc/core/rfb.js";

const CONFIG = (() => {
  try { return JSON.parse(document.getElementById("hearth-config").textContent); } catch { return {}; }
})();
const UI = CONFIG.ui || {};
const STEPS = CONFIG.steps || [];
const REDIRECT_SECONDS = 5;

const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const viewOnly = params.get("view_only") === "1";  // the gateway drops a view token's input either way
const pagePath = location.pathname.replace(/\/$/, ""); // <prefix>/api/auth/session/{id}/novnc
const sessionId = decodeURIComponent((pagePath.match(/\/session\/([^/]+)\/novnc$/) || [])[1] || "");
const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + pagePath + "/websock?token="
  + encodeURIComponent(token);
const statusUrl = pagePath.replace(/\/novnc$/, "/status") + "?token=" + encodeURIComponent(token);
const codeUrl = pagePath.replace(/\/novnc$/, "/code") + "?token=" + encodeURIComponent(token);
const embedded = window.parent !== window;

const $ = (id) => document.getElementById(id);
const screenEl = $("screen");

// The page's fixed words come from the server (one set of strings for the page and the API).
for (const [id, key] of [["kbd-button", "keyboard"], ["paste-button", "paste"], ["copy-code", "copy_code"],
  ["copy-link", "copy_link"], ["link-label", "link_label"], ["code-label", "code_label"], ["qr-caption", "qr_caption"],
  ["paste-label", "paste_label"], ["paste-submit", "paste_submit"], ["paste-text-label", "paste_prompt"],
  ["paste-text-send", "send"]]) {
  if (UI[key]) $(id).textContent = UI[key];
}
if (UI.details) document.querySelector("#details summary").textContent = UI.details;
if (UI.keyboard_hint) $("kbd-input").setAttribute("aria-label", UI.keyboard_hint);
if (UI.stepper) $("stepper").setAttribute("aria-label", UI.stepper);

// A second, polite live region for short confirmations ("Copied") that must not replace the status line.
const announcer = document.createElement("div");
announcer.setAttribute("aria-live", "polite");
announcer.style.cssText = "position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)";
document.body.append(announcer);
function announce(text) { announcer.textContent = ""; setTimeout(() => { announcer.textContent = text; }, 50); }

const PLAIN = {
  4400: "This viewer could not talk to the remote browser.",
  4403: "This link only lets you watch; the viewer sent input and was disconnected.",
  4401: "This link is not valid any more. Ask for a new link.",
  4404: "This sign-in does not exist.",
  4408: "The browser took too long to start. Reload to try again.",
  4410: "This sign-in has no remote browser: use the button on this page instead.",
  4421: "This link points at the wrong server for this sign-in. Ask for a new link.",
  4502: "The remote browser cannot be reached.",
  4503: "The service is restarting or briefly unavailable; reconnecting…",
  1012: "The service is restarting; reconnecting…",
  1000: "The session has ended.",
  1006: "The connection dropped; reconnecting…",
};

let rfb = null;
let ended = false;
let retries = 0;
let lastStatus = "starting";
let lastStep = null;
let status = null;

window.hearthStates = [];
const TERMINAL = ["failed", "cancelled", "completed", "expired"];

// The connection's state: for Details and tests (window.hearthState); the person reads #message.
function setState(text) {
  window.hearthState = text;
  window.hearthStates.push(text);
  showDetails();
}
function setMessage(text, problem = false) {
  const el = $("message");
  if (el.textContent !== text) el.textContent = text;
  el.classList.toggle("problem", problem);
  window.hearthMessage = text;
}
function setHeadline(text) {
  $("headline").textContent = text;
  document.title = text;
  window.hearthHeadline = text;
}

function showDetails() {
  const s = status || {};
  const lines = [];
  if (s.status) lines.push(`state: ${s.status}`);
  if (window.hearthState) lines.push(`connection: ${window.hearthState}`);
  if (s.reason) lines.push(`reason: ${s.reason}`);
  if (s.hop) lines.push(`hop: ${s.hop}`);
  if (s.signin && s.signin.detail) lines.push(`sign-in tool said: ${s.signin.detail}`);
  const order = ["lease", "namespace", "process", "kernel", "agent", "display", "vnc", "rfb", "browser"];
  const t = s.timings || {};
  const stages = order.filter((k) => k in t).map((k) => `${k} ${Number(t[k]).toFixed(2)}s`).join(" · ");
  if (stages) lines.push(`stages: ${stages}`);
  if (sessionId) lines.push(`session: ${sessionId}`);
  $("stages").textContent = lines.join("\n");
}

// --- the stepper ---------------------------------------------------------------------------------------------
function buildStepper() {
  const ol = $("stepper");
  ol.innerHTML = "";
  for (const step of STEPS) {
    const li = document.createElement("li");
    li.dataset.step = step.id;
    li.textContent = step.label;
    ol.append(li);
  }
}
function showStepper(s) {
  const ol = $("stepper");
  ol.hidden = !s.provider || STEPS.length === 0;
  if (ol.hidden) return;
  const current = s.step || lastStep;  // an ending without a step stops where it was
  if (s.step) lastStep = s.step;
  const at = STEPS.findIndex((x) => x.id === current);
  const stopped = !s.step && TERMINAL.includes(s.status) && s.status !== "completed";
  ol.querySelectorAll("li").forEach((li, i) => {
    li.classList.toggle("done", i < at || (s.status === "completed" && i === at));
    li.classList.toggle("stopped", stopped && i === at);
    if (i === at && s.status !== "completed" && !stopped) li.setAttribute("aria-current", "step");
    else li.removeAttribute("aria-current");
    const state = li.classList.contains("done") ? UI.step_done : li.hasAttribute("aria-current") ? UI.step_current : "";
    li.setAttribute("aria-label", state ? `${STEPS[i].label} (${state})` : STEPS[i].label);
  });
  window.hearthStep = current;
}

// --- embedding: status to the parent page -------------------------------------------------------------------------
function postToParent(s) {
  if (!embedded) return;
  const final = TERMINAL.includes(s.status);
  const msg = {
    source: "hearth", type: "hearth.status", version: 1, session_id: sessionId, status: s.status,
    step: s.step, headline: s.headline, message: s.message, final,
    return_url: final ? s.return_url || null : null,
  };
  // Only HEARTH_EMBED_ORIGINS (and hearth itself) receive it: the browser drops a message for another origin.
  for (const origin of new Set([...(CONFIG.embed_origins || []), location.origin])) {
    try { window.parent.postMessage(msg, origin); } catch { /* an origin the browser refuses: skip it */ }
  }
}

// --- remote browser ------------------------------------------------------------------------------------------------
function connect() {
  if (rfb || ended) return;
  setState("connecting");
  rfb = new RFB(screenEl, wsUrl, { wsProtocols: ["binary"], shared: true });
  rfb.scaleViewport = true;
  rfb.resizeSession = !viewOnly;  // the remote desktop follows this window (SetDesktopSize)
  rfb.viewOnly = viewOnly;
  rfb.addEventListener("connect", () => {
    retries = 0;
    setState(viewOnly ? "ready (view only)" : "ready");
    const watching = viewOnly || Boolean(status?.watching);
    $("tools").hidden = watching;
    setMessage(watching ? UI.view_only || "" : status?.message || "");
  });
  rfb.addEventListener("disconnect", (e) => {
    rfb = null;
    $("tools").hidden = true;
    const code = window.hearthLastClose?.code;
    const reason = window.hearthLastClose?.reason || "";
    if (e.detail.clean && code === 1000 && reason.includes("cancelled")) { ended = true; }
    if (TERMINAL.includes(lastStatus)) return;  // the status channel already said why, in plain words
    if ([4400, 4401, 4403, 4404, 4410, 4421].includes(code) || ended) {
      ended = true;
      setState(code === 1000 ? "ended" : `closed (${code})`);
      setMessage(PLAIN[code] || "Disconnected.", code !== 1000);
      return;
    }
    // Network drop or a transient failure: reconnect with back-off.
    retries += 1;
    const delay = Math.min(500 * 2 ** (retries - 1), 8000);
    setState(`reconnecting (${retries}) after ${code || "drop"}`);
    setMessage(PLAIN[code] || UI.reconnecting || "Connection lost, reconnecting…", true);
    setTimeout(connect, delay);
  });
}

// Record the close code/reason of the gateway's WebSocket (noVNC exposes only clean/unclean).
const NativeWS = window.WebSocket;
window.WebSocket = function (url, protocols) {
  const ws = new NativeWS(url, protocols);
  ws.addEventListener("close", (ev) => { window.hearthLastClose = { code: ev.code, reason: ev.reason }; });
  return ws;
};
window.WebSocket.prototype = NativeWS.prototype;
Object.assign(window.WebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });

// Typing into the remote browser: one key event pair per character (keysym = Latin-1 code point, else 0x01000000 +
// code point), which works with Xvnc and x11vnc alike.
const PASTE_MAX = 4096;
const KEYS = { Enter: 0xff0d, Backspace: 0xff08, Tab: 0xff09, Escape: 0xff1b, Delete: 0xffff, ArrowLeft: 0xff51,
  ArrowUp: 0xff52, ArrowRight: 0xff53, ArrowDown: 0xff54, Home: 0xff50, End: 0xff57 };
function keysymOf(ch) {
  const cp = ch.codePointAt(0);
  if (ch === "\n") return 0xff0d;
  if (ch === "\t") return 0xff09;
  return cp < 0x100 ? cp : 0x01000000 + cp;
}
function typeText(text) {
  if (!rfb || viewOnly || !text) return 0;
  const chars = Array.from(text.replace(/\r\n?/g, "\n")).slice(0, PASTE_MAX);
  for (const ch of chars) {
    if (ch.codePointAt(0) < 0x20 && ch !== "\n" && ch !== "\t") continue;
    rfb.sendKey(keysymOf(ch), null);
  }
  window.hearthTyped = (window.hearthTyped || "") + chars.join("");
  return chars.length;
}

// Ctrl/Cmd+V in the viewer pastes this computer's clipboard into the remote browser (password managers). The
// clipboard message goes first (Xvnc serves it to X clients as CLIPBOARD/PRIMARY); then the text is typed.
window.addEventListener("keydown", (ev) => {
  if (ev.target === $("kbd-input") || ev.target === $("paste-text")) return;  // the phone keyboard's own input
  if (!rfb || viewOnly || !(ev.ctrlKey || ev.metaKey) || ev.key.toLowerCase() !== "v") return;
  if (!navigator.clipboard || !navigator.clipboard.readText) return;  // no Clipboard API: noVNC sends the keys
  ev.preventDefault();
  ev.stopImmediatePropagation();
  navigator.clipboard.readText().then((text) => {
    if (!rfb || !text) return;
    rfb.clipboardPasteFrom(text);
    // The Ctrl/Cmd key of this shortcut went to the remote desktop already: release it there before typing.
    for (const [sym, code] of [[0xffe3, "ControlLeft"], [0xffe4, "ControlRight"], [0xffe7, "MetaLeft"], [0xffe8, "MetaRight"], [0xffeb, "OSLeft"], [0xffec, "OSRight"]]) {
      rfb.sendKey(sym, code, false);
    }
    typeText(text);
    window.hearthPasted = (window.hearthPasted || 0) + 1;
  }).catch(() => {});
}, true);

// Phones: the Keyboard button focuses a hidden input, which brings up the on-screen keyboard. Text entered there is
// sent as keys (the input's value is compared with what was already sent, so autocorrect and IME compositions that
// rewrite a word send backspaces and the new letters); Enter, Backspace on an empty field, Tab, arrows go as keys.
const kbd = $("kbd-input");
let sent = "";
function kbdReset() { kbd.value = ""; sent = ""; }
let kbdOpen = false;  // the person opened the keyboard: a tap on the remote page (to pick a field) keeps it open
$("kbd-button").addEventListener("click", () => {
  if (document.activeElement === kbd) { kbdOpen = false; kbd.blur(); return; }
  kbdOpen = true;
  kbdReset();
  kbd.focus({ preventScroll: true });
});
for (const type of ["touchend", "mouseup"]) {
  screenEl.addEventListener(type, () => {
    // noVNC focuses its canvas on a tap (the tap itself reaches the remote page first); give the focus back.
    if (kbdOpen && rfb) setTimeout(() => { kbdReset(); kbd.focus({ preventScroll: true }); }, 0);
  }, true);
}
kbd.addEventListener("focus", () => $("kbd-button").setAttribute("aria-pressed", "true"));
kbd.addEventListener("blur", (ev) => {
  $("kbd-button").setAttribute("aria-pressed", "false");
  if (!ev.relatedTarget || !screenEl.contains(ev.relatedTarget)) kbdOpen = false;  // left for another control
});
kbd.addEventListener("keydown", (ev) => {
  if (ev.isComposing || !(ev.key in KEYS)) return;
  if (ev.key === "Backspace" && kbd.value.length > 0) return;  // the input event sends it
  ev.preventDefault();
  if (rfb && !viewOnly) rfb.sendKey(KEYS[ev.key], ev.code || null);
  if (ev.key === "Enter") kbdReset();
});
kbd.addEventListener("input", (ev) => {
  if (ev.isComposing) return;
  const now = kbd.value;
  let same = 0;
  while (same < now.length && same < sent.length && now[same] === sent[same]) same += 1;
  if (rfb && !viewOnly) for (let i = same; i < sent.length; i += 1) rfb.sendKey(KEYS.Backspace, "Backspace");
  typeText(now.slice(same));
  sent = now;
  if (now.length > 200) kbdReset();  // keep the hidden field short
});
kbd.addEventListener("compositionend", () => kbd.dispatchEvent(new Event("input")));

// Paste: this device's clipboard when the browser lets us read it, else a field to paste into and send.
$("paste-button").addEventListener("click", async () => {
  let text = "";
  try { text = navigator.clipboard && navigator.clipboard.readText ? await navigator.clipboard.readText() : ""; } catch { text = ""; }
  if (text) {
    rfb?.clipboardPasteFrom(text);
    typeText(text);
    window.hearthPasted = (window.hearthPasted || 0) + 1;
    return;
  }
  $("paste-text-form").hidden = false;
  $("paste-text").focus();
});
$("paste-text-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  typeText($("paste-text").value);
  window.hearthPasted = (window.hearthPasted || 0) + 1;
  $("paste-text").value = "";
  $("paste-text-form").hidden = true;
});

// --- direct mode -----------------------------------------------------------------------------------------------
async function copy(text, button) {
  let ok = false;
  try { await navigator.clipboard.writeText(text); ok = true; } catch { ok = false; }
  if (!ok) {  // no Clipboard API (plain http, old browsers): select the text for the person
    const field = $("link");
    if (text === field.value) { field.focus(); field.select(); ok = document.execCommand && document.execCommand("copy"); }
  }
  const label = button.textContent;
  button.textContent = ok ? UI.copied || "Copied" : UI.copy_failed || "Select the text and copy it";
  announce(button.textContent);
  setTimeout(() => { button.textContent = label; }, 2000);
}
$("copy-link").addEventListener("click", () => copy($("link").value, $("copy-link")));
$("copy-code").addEventListener("click", () => copy($("code").textContent, $("copy-code")));

let shownUrl = null;
function showDirect(s) {
  $("direct").hidden = false;
  screenEl.hidden = true;  // no remote desktop in direct mode
  const p = s.signin;
  const live = !TERMINAL.includes(s.status) && s.step === "sign_in";
  $("open-step").hidden = !p || !live;
  $("link-step").hidden = !p || !live;
  $("code-step").hidden = !p || !p.user_code || !live;
  $("qr-step").hidden = !p || !s.qr || !live;
  $("paste").hidden = !p || !p.awaiting_code || !live;
  $("waiting").hidden = true;
  if (!p) return;
  $("open").textContent = s.button;
  if (p.url !== shownUrl) {
    $("open").href = p.url;
    $("link").value = p.url;
    $("qr").innerHTML = s.qr || "";  // inline SVG made by hearth (segno), not by the page's input
    $("qr").setAttribute("role", "img");
    $("qr").setAttribute("aria-label", UI.qr_caption || "QR code of the sign-in link");
    const first = shownUrl === null;
    shownUrl = p.url;
    if (first && live && !p.awaiting_code) $("open").focus();
    // A refused code renewed the link: the new one stands out (and takes the focus), so nobody opens the old one.
    const fresh = !first && !!p.renewed;
    for (const id of ["open-step", "link-step"]) $(id).classList.toggle("renewed", fresh);
    $("open").dataset.badge = fresh ? UI.new_link || "New link" : "";
    if (fresh && live) $("open").focus();
  }
  $("code").textContent = p.user_code || "";
  $("cli-message").hidden = !p.message;
  $("cli-message").textContent = p.message || "";
  const renewed = $("open-step").classList.contains("renewed");  // the new link goes first, then the code
  if (live && p.awaiting_code && !renewed && document.activeElement !== $("paste-input")) $("paste-input").focus();
}

$("paste").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("paste-input");
  const button = $("paste-submit");
  button.disabled = true;
  try {
    const r = await fetch(codeUrl, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ code: input.value }),
    });
    const out = await r.json().catch(() => ({}));
    if (!r.ok) {
      $("cli-message").hidden = false;
      $("cli-message").textContent = out.error || `The code was not accepted (HTTP ${r.status}).`;
    } else {
      input.value = "";
      $("paste").hidden = true;
      $("waiting").hidden = false;
      $("waiting").textContent = UI.code_checking || "Checking your code…";
    }
  } finally {
    button.disabled = false;
  }
});

// --- the end: next step, the way back --------------------------------------------------------------------------
let countdown = null;
function showEnd(s) {
  kbdOpen = false;
  $("end").hidden = false;
  $("direct").hidden = true;
  $("tools").hidden = true;
  $("paste-text-form").hidden = true;
  screenEl.hidden = true;
  $("next-step").hidden = !s.next_step;
  $("next-step").textContent = s.next_step || "";
  const back = s.return_url;
  $("return-step").hidden = !back;
  if (!back) return;
  const link = $("return");
  link.href = back;
  link.textContent = UI.return || "Back to the app";
  if (embedded) link.target = "_top";  // a framed page leaves to its parent's window; the parent got the message
  if (s.status !== "completed" || embedded || countdown !== null) return;
  let left = REDIRECT_SECONDS;
  const tick = () => {
    $("return-count").textContent = (UI.return_in || "Taking you back in {seconds} s…").replace("{seconds}", left);
    if (left <= 0) { clearInterval(countdown); window.hearthRedirected = back; location.assign(back); }
    left -= 1;
  };
  tick();
  countdown = setInterval(tick, 1000);
}

// --- the status channel ------------------------------------------------------------------------------------------
function followStatus() {
  const es = new EventSource(statusUrl);
  es.onmessage = (ev) => {
    const s = JSON.parse(ev.data);
    const changed = !status || status.status !== s.status || status.message !== s.message;
    status = s;
    lastStatus = s.status;
    window.hearthStatus = s;
    window.hearthSaid = [...(window.hearthSaid || []), { status: s.status, step: s.step, headline: s.headline, message: s.message }];
    setHeadline(s.headline);
    showStepper(s);
    showDetails();
    if (changed) postToParent(s);
    const final = TERMINAL.includes(s.status);
    const problem = final && s.status !== "completed";
    if (s.mode === "direct") {
      ended = true;  // no desktop to connect to
      setMessage(s.message, problem);
      if (final) { showEnd(s); es.close(); } else showDirect(s);
      return;
    }
    if (final) {
      ended = true;
      setMessage(s.message, problem);
      if (rfb) rfb.disconnect();
      showEnd(s);
      es.close();
      return;
    }
    if (s.status === "queued" || s.status === "starting") {
      setState(s.status);
      setMessage(s.message);
      return;
    }
    if (!rfb || window.hearthState === "ready" || window.hearthState === "ready (view only)") {
      setMessage(viewOnly || s.watching ? UI.view_only || s.message : s.message);
    }
    connect();
  };
  es.onerror = () => { if (!ended) setState("status lost, retrying"); };
}

buildStepper();
followStatus();
