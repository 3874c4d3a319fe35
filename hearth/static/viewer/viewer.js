// hearth viewer: follows the session's live status, connects noVNC through the gateway when the sandbox is ready,
// reconnects after network drops, and shows close reasons in plain words. Paths are relative, so the page works
// behind a reverse proxy under any path prefix.
import RFB from "../novnc/core/rfb.js";

const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const viewOnly = params.get("view_only") === "1";
const pagePath = location.pathname.replace(/\/$/, ""); // <prefix>/api/auth/session/{id}/novnc
const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + pagePath + "/websock?token="
  + encodeURIComponent(token);
const statusUrl = pagePath.replace(/\/novnc$/, "/status") + "?token=" + encodeURIComponent(token);

const stateEl = document.getElementById("state");
const stagesEl = document.getElementById("stages");
const messageEl = document.getElementById("message");
const screenEl = document.getElementById("screen");

const PLAIN = {
  4401: "This link is not valid any more (the viewer token is wrong or expired). Ask for a new link.",
  4404: "This session does not exist.",
  4408: "The browser took too long to start. Reload to try again.",
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
  rfb.resizeSession = false;
  rfb.viewOnly = viewOnly;
  rfb.addEventListener("connect", () => {
    retries = 0;
    setState(viewOnly ? "ready (view only)" : "ready", "ready");
    showMessage("");
  });
  rfb.addEventListener("disconnect", (e) => {
    rfb = null;
    const code = window.hearthLastClose?.code;
    const reason = window.hearthLastClose?.reason || "";
    if (e.detail.clean && code === 1000 && reason.includes("cancelled")) { ended = true; }
    if (TERMINAL.includes(lastStatus)) return;  // the status channel already said why, in plain words
    if ([4401, 4404].includes(code) || ended) {
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

function followStatus() {
  const es = new EventSource(statusUrl);
  es.onmessage = (ev) => {
    const s = JSON.parse(ev.data);
    lastStatus = s.status;
    showStages(s.timings);
    if (s.status === "starting") {
      setState("starting", "starting");
      showMessage("Starting your browser…", Object.keys(s.timings || {}).join(" → "));
    } else if (TERMINAL.includes(s.status)) {
      ended = s.status !== "ready";
      setState(s.status, s.status === "completed" ? "ready" : "failed");
      showMessage(s.status === "failed" ? "The browser sandbox failed." : `The session is ${s.status}.`, s.reason || "");
      if (rfb) rfb.disconnect();
      es.close();
    } else {
      connect();
    }
  };
  es.onerror = () => { if (!ended) setState("status lost, retrying", "starting"); };
}

followStatus();
