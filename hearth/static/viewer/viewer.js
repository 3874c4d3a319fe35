// The page a person signs in on: follows the session's live status and says what is happening in plain words for
// this provider. remote_browser: connects noVNC through the gateway when the sandbox is ready (the remote desktop
// follows this window's size; Ctrl/Cmd+V pastes this computer's clipboard into the remote browser), reconnects
// after network drops, shows close reasons in plain words. direct: no desktop; shows the sign-in link, the device
// code, and a field for a code to paste back. Stage timings sit behind "Details". Paths are relative, so the page
// works behind a reverse proxy under any path prefix.
import RFB from "../novnc/core/rfb.js";

const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const viewOnly = params.get("view_only") === "1";
const pagePath = location.pathname.replace(/\/$/, ""); // <prefix>/api/auth/session/{id}/novnc
const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + pagePath + "/websock?token="
  + encodeURIComponent(token);
const statusUrl = pagePath.replace(/\/novnc$/, "/status") + "?token=" + encodeURIComponent(token);
const codeUrl = pagePath.replace(/\/novnc$/, "/code") + "?token=" + encodeURIComponent(token);

const stateEl = document.getElementById("state");
const stagesEl = document.getElementById("stages");
const messageEl = document.getElementById("message");
const screenEl = document.getElementById("screen");
const headlineEl = document.getElementById("headline");
const $ = (id) => document.getElementById(id);

const PLAIN = {
  4400: "This viewer did not speak the remote-desktop protocol.",
  4403: "This link only lets you watch; the viewer sent input and was disconnected.",
  4401: "This link is not valid any more (the viewer token is wrong or expired). Ask for a new link.",
  4404: "This session does not exist.",
  4408: "The browser took too long to start. Reload to try again.",
  4410: "This sign-in has no remote desktop: open the link shown on this page in your own browser.",
  4502: "The browser sandbox cannot be reached.",
  4503: "The service is restarting or briefly unavailable; reconnecting…",
  1012: "The service is restarting; reconnecting…",
  1000: "The session has ended.",
  1006: "The connection dropped without a reason.",
};

let rfb = null;
let ended = false;
let retries = 0;
let lastStatus = "starting";

window.hearthStates = [];
const TERMINAL = ["failed", "cancelled", "completed", "expired"];
function setState(text, cls) {
  stateEl.textContent = text;
  stateEl.className = cls;
  window.hearthState = text;
  window.hearthStates.push(text);
}
function showMessage(text, detail) {
  messageEl.innerHTML = "";
  messageEl.append(document.createTextNode(text));
  if (detail) { const s = document.createElement("small"); s.textContent = detail; messageEl.append(s); }
  messageEl.style.display = text ? "block" : "none";
}

function setHeadline(text) {
  headlineEl.textContent = text;
  document.title = text;
  window.hearthHeadline = text;
}

function showStages(timings) {
  const order = ["lease", "namespace", "process", "kernel", "agent", "display", "vnc", "rfb"];
  stagesEl.textContent = order.filter((k) => k in (timings || {}))
    .map((k) => `${k} ${timings[k].toFixed(2)}s`).join(" · ");
}

function connect() {
  if (rfb || ended) return;
  setState("connecting", "starting");
  rfb = new RFB(screenEl, wsUrl, { wsProtocols: ["binary"], shared: true });
  rfb.scaleViewport = true;
  rfb.resizeSession = !viewOnly;  // the remote desktop follows this window (SetDesktopSize)
  rfb.viewOnly = viewOnly;
  rfb.addEventListener("connect", () => {
    retries = 0;
    const waiting = window.hearthStatus?.provider ? " — waiting for you to finish signing in" : "";
    setState(viewOnly ? "ready (view only)" : `ready${waiting}`, "ready");
    showMessage("");
  });
  rfb.addEventListener("disconnect", (e) => {
    rfb = null;
    const code = window.hearthLastClose?.code;
    const reason = window.hearthLastClose?.reason || "";
    if (e.detail.clean && code === 1000 && reason.includes("cancelled")) { ended = true; }
    if (TERMINAL.includes(lastStatus)) return;  // the status channel already said why, in plain words
    if ([4400, 4401, 4403, 4404, 4410].includes(code) || ended) {
      ended = true;
      setState(code === 1000 ? "ended" : "closed", "closed");
      showMessage(PLAIN[code] || "Disconnected.", reason);
      return;
    }
    // Network drop or a transient failure: reconnect with back-off.
    retries += 1;
    const delay = Math.min(500 * 2 ** (retries - 1), 8000);
    setState(`reconnecting (${retries})`, "starting");
    showMessage(PLAIN[code] || "Connection lost, reconnecting…", reason);
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

// Ctrl/Cmd+V in the viewer pastes this computer's clipboard into the remote browser (password managers). The
// clipboard message goes first (Xvnc serves it to X clients as CLIPBOARD/PRIMARY); then the text is typed — one key
// event pair per character (keysym = Latin-1 code point, else 0x01000000 + code point) — which also works with
// x11vnc 0.9.16 (HEARTH_VNC_SERVER=x11vnc: it takes ClientCutText but serves no selection).
const PASTE_MAX = 4096;
function keysymOf(ch) {
  const cp = ch.codePointAt(0);
  if (ch === "\n") return 0xff0d;
  if (ch === "\t") return 0xff09;
  return cp < 0x100 ? cp : 0x01000000 + cp;
}
window.addEventListener("keydown", (ev) => {
  if (!rfb || viewOnly || !(ev.ctrlKey || ev.metaKey) || ev.key.toLowerCase() !== "v") return;
  if (!navigator.clipboard || !navigator.clipboard.readText) return;  // no Clipboard API: noVNC sends the keys
  ev.preventDefault();
  ev.stopImmediatePropagation();
  navigator.clipboard.readText().then((text) => {
    if (!rfb || !text) return;
    const chars = Array.from(text.replace(/\r\n?/g, "\n")).slice(0, PASTE_MAX);
    rfb.clipboardPasteFrom(chars.join(""));
    // The Ctrl/Cmd key of this shortcut went to the remote desktop already: release it there before typing.
    for (const [sym, code] of [[0xffe3, "ControlLeft"], [0xffe4, "ControlRight"], [0xffe7, "MetaLeft"], [0xffe8, "MetaRight"], [0xffeb, "OSLeft"], [0xffec, "OSRight"]]) {
      rfb.sendKey(sym, code, false);
    }
    for (const ch of chars) {
      if (ch.codePointAt(0) < 0x20 && ch !== "\n" && ch !== "\t") continue;
      rfb.sendKey(keysymOf(ch), null);
    }
    window.hearthPasted = (window.hearthPasted || 0) + 1;
  }).catch(() => {});
}, true);

function nameOf(s) { return s.provider_name || "your account"; }

// What the person reads, per mode and state.
function headlineFor(s) {
  const name = nameOf(s);
  if (s.status === "completed") return s.provider ? `Done — ${name} is signed in in your workspace` : "Done";
  if (s.status === "credentials_captured" || s.status === "delivered") return `Saving your ${name} sign-in to your workspace…`;
  if (s.status === "failed") return s.provider ? `Signing in to ${name} failed` : "The browser sandbox failed";
  if (s.status === "cancelled" || s.status === "expired") return `This sign-in has ${s.status === "expired" ? "expired" : "been cancelled"}`;
  if (s.mode === "direct") {
    if (s.watching) return `Signing in to ${name} happens in the person's own browser`;
    if (!s.signin) return `Getting your sign-in link for ${name}…`;
    return `Sign in to ${name} in your own browser`;
  }
  if (s.status === "starting") return s.provider ? `Preparing your sign-in to ${name}…` : "Starting your browser…";
  return s.provider ? `Sign in to ${name} in the window below` : "Your remote browser";
}

function showDirect(s) {
  $("direct").style.display = "block";
  screenEl.style.display = "none";  // no remote desktop in direct mode
  const p = s.signin;
  const live = !TERMINAL.includes(s.status) && s.status !== "credentials_captured" && s.status !== "delivered";
  $("open-step").hidden = !p || !live;
  $("code-step").hidden = !p || !p.user_code || !live;
  $("paste").hidden = !p || !p.awaiting_code || !live;
  $("waiting").hidden = !p || p.awaiting_code || !live;
  if (!p) return;
  if ($("link").href !== p.url) { $("link").href = p.url; $("link").textContent = p.url; }
  $("code").textContent = p.user_code || "";
  $("cli-message").hidden = !p.message;
  $("cli-message").textContent = p.message || "";
  if (p.awaiting_code && document.activeElement !== $("paste-input")) $("paste-input").focus();
}

$("paste").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("paste-input");
  const button = $("paste").querySelector("button");
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
      $("waiting").textContent = "Checking your code… Waiting for you to finish signing in";
    }
  } finally {
    button.disabled = false;
  }
});

function followStatus() {
  const es = new EventSource(statusUrl);
  es.onmessage = (ev) => {
    const s = JSON.parse(ev.data);
    lastStatus = s.status;
    window.hearthStatus = s;
    showStages(s.timings);
    setHeadline(headlineFor(s));
    if (s.mode === "direct") {
      ended = true;  // no desktop to connect to
      setState(s.status, TERMINAL.includes(s.status) && s.status !== "completed" ? "failed" : "ready");
      showDirect(s);
      if (TERMINAL.includes(s.status)) {
        showMessage(s.status === "completed" ? headlineFor(s) : `${headlineFor(s)}.`, s.status === "completed" ? "" : s.reason || "");
        es.close();
      } else {
        showMessage(s.signin || s.watching ? "" : "Preparing your sign-in…");
      }
      return;
    }
    if (s.status === "starting") {
      setState("starting", "starting");
      showMessage("Starting your browser…", Object.keys(s.timings || {}).join(" → "));
    } else if (TERMINAL.includes(s.status)) {
      ended = s.status !== "ready";
      setState(s.status, s.status === "completed" ? "ready" : "failed");
      if (s.status === "completed") showMessage(headlineFor(s), "");
      else if (s.status === "failed") showMessage(s.provider ? `${headlineFor(s)}.` : "The browser sandbox failed.", s.reason || "");
      else showMessage(`The session is ${s.status}.`, s.reason || "");
      if (rfb) rfb.disconnect();
      es.close();
    } else {
      connect();
    }
  };
  es.onerror = () => { if (!ended) setState("status lost, retrying", "starting"); };
}

followStatus();
