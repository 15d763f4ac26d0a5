"use strict";
// The demo page's script. `RENDERED_AT_ID` is set by the page itself.

const MAX_SHOWN = 200;

const app = {
  source: null,                           // the current EventSource
  topics: ["public"],                     // what it watches
  name: "",                               // the toy identity, sent as `?as=`; "" is anonymous
  lastId: RENDERED_AT_ID,                 // the newest id received...
  lastIdAs: "",                           // ...on a stream of this identity
  types: new Set(["message"]),            // event types listened for
  topicOfId: new Map(),                   // ids this page published -> topic
  switches: { read_only: false, degraded: false }, // what the buttons show
  greeting: false,                        // whether the next `server.state` is the greeting
  reconnectAt: 0,                         // after a `shutdown` event: when the browser retries
  countdown: 0,                           // its timer
  inbox: new Map(),                       // trace -> received notification (one card each)
  sent: new Map(),                        // trace -> notification sent from here (or replied to us)
  pendingAcks: new Set(),                 // traces whose ack was refused: sent again once writable
};

// Event types with their own handler; anything else is shown as is.
const SPECIAL = {
  resync: onResync,
  "server.state": onServerState,
  shutdown: onShutdown,
  notification: onNotification,
  "notification.reply": onReply,
};

const $ = (id) => document.getElementById(id);

// --- the toy identity ----------------------------------------------------

// `path` with `?as=NAME` added: every request of this page says who it is
// (a toy: the demo server believes it; a real app would use its session).
function withAs(path, name = app.name) {
  if (!name) return path;
  const url = new URL(path, location.href);
  url.searchParams.set("as", name);
  return url.pathname + url.search;
}

// Becomes `name`: forgets the previous identity's notifications, keeps the
// name in this tab's address (so a reload keeps it, and each tab can be
// someone else), and reconnects.
function setName(name) {
  name = name.trim();
  $("name").value = name;
  if (name === app.name && app.source) return;
  app.name = name;
  const url = new URL(location.href);
  if (name) url.searchParams.set("as", name);
  else url.searchParams.delete("as");
  history.replaceState(null, "", url);
  document.title = "tower-sse demo" + (name ? " · " + name : "");
  $("who").textContent = name || "anonymous";
  app.inbox.clear();
  app.sent.clear();
  app.pendingAcks.clear();
  $("inbox").replaceChildren();
  $("sent").replaceChildren();
  updateEmpty();
  connect();
}

// --- connection ---------------------------------------------------------

function eventsUrl(topics, lastId) {
  const query = new URLSearchParams();
  for (const topic of topics) query.append("topic", topic);
  if (lastId) query.set("lastEventId", lastId);
  if (app.name) query.set("as", app.name);
  return "/events?" + query;
}

// (Re)connects to the current topics, resuming after the newest id seen.
// Later automatic reconnects send the Last-Event-ID header themselves.
//
// An id resumes only a stream of the identity it was received as: the
// mailbox takes a resume id as proof that every notification sent before
// it arrived, which is true of this page's own stream and false of an id
// rendered into the page or received as somebody else. A new identity
// starts live, and its held notifications come first.
function connect() {
  if (app.source) app.source.close();
  const resume = app.lastIdAs === app.name ? app.lastId : "";
  const watching = "watching " + app.topics.join(", ") + (app.name ? " as " + app.name : "");
  setState("connecting", watching);
  const source = new EventSource(eventsUrl(app.topics, resume));
  source.onopen = () => {
    app.greeting = true; // every stream starts with the state, without an id
    stopCountdown();
    setState("open", watching);
  };
  source.onerror = () => {
    $("mode").classList.add("stale"); // last known, until the next greeting
    if (app.reconnectAt && source.readyState !== EventSource.CLOSED) return; // counting down
    stopCountdown();
    setState("error", source.readyState === EventSource.CLOSED
      ? "the server refused the stream; fix the topics or the name and reconnect"
      : "lost the stream; the browser reconnects by itself");
  };
  app.source = source;
  for (const type of app.types) listen(source, type);
  for (const [type, handler] of Object.entries(SPECIAL)) source.addEventListener(type, handler);
}

function listen(source, type) {
  if (!(type in SPECIAL)) source.addEventListener(type, onEvent);
}

// Listens for `type` from now on, on this and later connections.
function addType(type) {
  if (app.types.has(type)) return;
  app.types.add(type);
  if (app.source) listen(app.source, type);
}

// Remembers the id of an event that carried one, as this identity's.
function noteId(e) {
  if (!e.lastEventId) return;
  app.lastId = e.lastEventId;
  app.lastIdAs = app.name;
}

function setState(state, detail) {
  const badge = $("state");
  badge.textContent = state;
  badge.className = "badge " + state;
  $("state-detail").textContent = detail;
}

function parseTopics(text) {
  const topics = text.split(",").map((t) => t.trim()).filter(Boolean);
  return topics.length ? topics : ["public"];
}

// --- received events ----------------------------------------------------

function onEvent(e) {
  noteId(e);
  show({ id: e.lastEventId, type: e.type, topic: topicOf(e.lastEventId), body: pretty(e.data) });
}

// The server could not resume from our id (or we fell behind): whatever
// state the page derived from events is stale and should be reloaded.
function onResync(e) {
  noteId(e);
  let info = {};
  try { info = JSON.parse(e.data); } catch (_) { /* shown raw below */ }
  let body = "resync: " + (info.reason || e.data);
  if (info.missed !== undefined) body += ", missed " + info.missed + " event(s)";
  body += " (reload your state; live events follow)";
  show({ id: e.lastEventId, type: "resync", topic: "", body, className: "resync" });
}

// The server's mode: first the greeting of every new stream (the state
// now), then one event per change. `since` is RFC 3339.
function onServerState(e) {
  const greeting = app.greeting;
  app.greeting = false;
  if (!greeting) noteId(e);
  let state;
  try { state = JSON.parse(e.data); } catch (_) { return; }
  const mode = $("mode");
  mode.textContent = state.shutting_down ? "shutting down" : state.mode;
  mode.className = "mode-name " + (state.shutting_down ? "stopping" : state.mode);
  const since = new Date(state.since);
  let detail = (state.shutting_down ? "was " + state.mode + " · " : "") +
    (state.reason ? "reason: " + state.reason + " · " : "") +
    "since " + since.toLocaleTimeString();
  if (state.mode !== "normal" || state.shutting_down) detail += " · writes answer 503";
  $("mode-detail").textContent = detail;
  // Degraded hides whether read-only is on underneath: keep the last known.
  if (state.mode === "normal") setSwitches({ read_only: false, degraded: false });
  if (state.mode === "read-only") setSwitches({ read_only: true, degraded: false });
  if (state.mode === "degraded") setSwitches({ ...app.switches, degraded: true });
  show({ id: greeting ? "(greeting)" : e.lastEventId, type: e.type, topic: "(all)",
    body: pretty(e.data), className: "system" });
  refreshReady();
  // Writable again: the acks that were refused meanwhile go out now.
  if (state.mode === "normal" && !state.shutting_down) retryAcks();
}

// The stream's last frame: the server is stopping, and the browser
// reconnects after `retry` milliseconds.
function onShutdown(e) {
  let retry = 5000;
  try { retry = JSON.parse(e.data).retry; } catch (_) { /* keep the default */ }
  show({ id: "(last)", type: e.type, topic: "(all)", body: pretty(e.data), className: "system" });
  app.reconnectAt = Date.now() + retry;
  tick();
}

function tick() {
  clearTimeout(app.countdown);
  const left = Math.max(0, Math.ceil((app.reconnectAt - Date.now()) / 1000));
  setState("stopping", "server stopping, reconnecting in " + left + " s");
  if (left > 0) app.countdown = setTimeout(tick, 1000);
  else app.reconnectAt = 0; // now errors are errors again
}

function stopCountdown() {
  clearTimeout(app.countdown);
  app.reconnectAt = 0;
}

async function refreshReady() {
  const ready = $("ready");
  try {
    const response = await fetch(withAs("/ready"), { cache: "no-store" });
    const answer = await response.json();
    ready.textContent = response.status + (answer.ready ? " ready" : " not ready: " + answer.reason);
    ready.className = "result " + (answer.ready ? "ok" : "error");
  } catch (_) {
    ready.textContent = "no answer";
    ready.className = "result error";
  }
}

function topicOf(id) {
  if (app.topicOfId.has(id)) return app.topicOfId.get(id);
  return app.topics.length === 1 ? app.topics[0] : "?";
}

function pretty(data) {
  try { return JSON.stringify(JSON.parse(data), null, 1); } catch (_) { return data; }
}

function show({ id, type, topic, body, className }) {
  const item = document.createElement("li");
  if (className) item.className = className;
  item.dataset.id = id;
  item.append(cell("span", id, "id"), cell("span", type), cell("span", topic), cell("pre", body));
  const list = $("events");
  list.prepend(item);
  while (list.children.length > MAX_SHOWN) list.lastChild.remove();
}

function cell(tag, text, className) {
  const el = document.createElement(tag);
  el.textContent = text;
  if (className) el.className = className;
  return el;
}

function time(rfc3339) {
  const date = new Date(rfc3339);
  return isNaN(date) ? "" : date.toLocaleTimeString();
}

function updateEmpty() {
  $("inbox-empty").hidden = app.inbox.size > 0;
  $("sent-empty").hidden = app.sent.size > 0;
}

function flash(el) {
  el.classList.remove("fresh");
  void el.offsetWidth; // restart the animation
  el.classList.add("fresh");
}

// --- notifications received ---------------------------------------------

// `{"trace", "from", "payload", "expects_reply", "created"}`, at least once:
// one card per trace, however often it arrives.
function onNotification(e) {
  noteId(e);
  show({ id: e.lastEventId, type: e.type, topic: "(yours)", body: pretty(e.data), className: "mailbox" });
  let n;
  try { n = JSON.parse(e.data); } catch (_) { return; }
  if (!n || typeof n.trace !== "string") return;
  const known = app.inbox.get(n.trace);
  if (known) {
    known.seen += 1;
    known.els.seen.textContent = "arrived " + known.seen + "×";
    if (!known.acked) ack(known);
    return;
  }
  const item = { n, seen: 1, acked: false, acking: false, replied: false, els: {} };
  app.inbox.set(n.trace, item);
  $("inbox").prepend(renderReceived(item));
  updateEmpty();
  // Shown: tell the server, so that it stops sending it again.
  ack(item);
}

function renderReceived(item) {
  const { n, els } = item;
  const li = document.createElement("li");
  li.dataset.trace = n.trace;
  li.className = "fresh";
  const head = document.createElement("div");
  head.className = "head";
  const from = document.createElement("span");
  from.append("from ", cell("b", n.from));
  els.seen = cell("span", "");
  els.ack = cell("span", "acknowledging…", "state wait");
  head.append(from, cell("span", time(n.created)), cell("span", n.trace, "trace"), els.seen, els.ack);
  li.append(head, cell("pre", JSON.stringify(n.payload, null, 1)));
  if (n.expects_reply) {
    const form = document.createElement("form");
    form.className = "reply";
    const text = document.createElement("textarea");
    text.rows = 1;
    text.value = '{"text": "yes"}';
    text.setAttribute("aria-label", "reply (JSON)");
    const button = document.createElement("button");
    button.textContent = "Reply";
    els.replyResult = cell("span", "", "state");
    form.append(text, button, els.replyResult);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      reply(item, text.value, form);
    });
    els.replyForm = form;
    li.append(form);
  }
  return li;
}

// `POST /notifications/{trace}/ack?as=NAME` (204). Refused while the
// server is not writable: retried when it is; never fatal, since an
// unacknowledged notification is only sent again (and deduplicated here).
async function ack(item) {
  if (item.acking || item.acked) return;
  item.acking = true;
  const trace = item.n.trace;
  try {
    const response = await fetch(withAs("/notifications/" + trace + "/ack"), { method: "POST" });
    if (response.status === 204) {
      item.acked = true;
      app.pendingAcks.delete(trace);
      setText(item.els.ack, "acknowledged", "state ok");
    } else if (response.status === 404) {
      app.pendingAcks.delete(trace);
      setText(item.els.ack, "gone from the mailbox (expired)", "state error");
    } else {
      app.pendingAcks.add(trace);
      const answer = await response.json().catch(() => ({}));
      setText(item.els.ack, "ack refused (" + response.status + (answer.error ? ": " + answer.error : "") +
        "), retried once writable", "state wait");
    }
  } catch (err) {
    app.pendingAcks.add(trace);
    setText(item.els.ack, "ack failed, retried later", "state wait");
  } finally {
    item.acking = false;
  }
}

function retryAcks() {
  for (const trace of [...app.pendingAcks]) {
    const item = app.inbox.get(trace);
    if (item) ack(item);
    else app.pendingAcks.delete(trace);
  }
}

// `POST /notifications/{trace}/reply?as=NAME` with the JSON as typed, so
// that the server's own validation answers a mistake in it.
async function reply(item, text, form) {
  const result = item.els.replyResult;
  setText(result, "replying…", "state wait");
  try {
    const response = await fetch(withAs("/notifications/" + item.n.trace + "/reply"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: text,
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      let message = response.status + ": " + (answer.error || response.statusText);
      if (answer.reason) message += " (" + answer.reason + ")";
      setText(result, message, response.status === 503 ? "state wait" : "state error");
      return;
    }
    item.replied = true;
    // A reply proves it arrived: no ack needed any more.
    item.acked = true;
    app.pendingAcks.delete(item.n.trace);
    const done = document.createElement("div");
    done.className = "answer";
    done.append(cell("span", "you replied at " + time(answer.replied_at), "state ok"),
      cell("pre", JSON.stringify(answer.reply, null, 1)));
    form.replaceWith(done);
    setText(item.els.ack, "delivered", "state ok");
  } catch (err) {
    setText(result, String(err.message || err), "state error");
  }
}

function setText(el, text, className) {
  el.textContent = text;
  el.className = className;
}

// --- notifications sent ---------------------------------------------------

// The JSON is sent as typed, so that the server's own validation answers a
// mistake in it; `ttl_secs` only when given.
function notifyBody(to, payloadText, expectsReply, ttl) {
  const fields = ['"to": ' + JSON.stringify(to), '"payload": ' + payloadText,
    '"expects_reply": ' + expectsReply];
  if (ttl) fields.push('"ttl_secs": ' + ttl);
  return "{" + fields.join(", ") + "}";
}

async function notify() {
  const to = $("notify-to").value.trim();
  const payloadText = $("notify-payload").value;
  const expectsReply = $("notify-expects-reply").checked;
  const ttl = $("notify-ttl").value.trim();
  try {
    const response = await fetch(withAs("/notify"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: notifyBody(to, payloadText, expectsReply, ttl),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      let message = "Refused, " + response.status + ": " + (answer.error || response.statusText);
      if (answer.reason) message += " (" + answer.reason + ")";
      if (response.status === 401) message += ". Set your name above first.";
      showNotifyResult(response.status === 503 ? "refused" : "error", message);
      return;
    }
    let payload = null;
    try { payload = JSON.parse(payloadText); } catch (_) { /* the server took it */ }
    const entry = sentEntry(answer.trace);
    Object.assign(entry, { to, payload, expectsReply });
    fillSent(entry);
    showNotifyResult("ok", "sent to " + to + ", trace " + answer.trace +
      (expectsReply ? "; its reply will show below" : ""));
  } catch (err) {
    showNotifyResult("error", String(err.message || err));
  }
}

function showNotifyResult(kind, text) {
  const result = $("notify-result");
  result.className = "result note " + kind;
  result.textContent = text;
}

// The card of a sent notification, made on first need: when the send is
// answered, or when a reply arrives for one sent from another tab.
function sentEntry(trace) {
  let entry = app.sent.get(trace);
  if (entry) return entry;
  entry = { trace, to: null, payload: undefined, expectsReply: null, reply: null, els: {} };
  const li = document.createElement("li");
  li.dataset.trace = trace;
  const head = document.createElement("div");
  head.className = "head";
  entry.els.to = cell("span", "");
  entry.els.state = cell("span", "", "state");
  const check = document.createElement("button");
  check.type = "button";
  check.textContent = "Status";
  check.addEventListener("click", () => checkStatus(entry));
  head.append(entry.els.to, cell("span", trace, "trace"), entry.els.state, check);
  entry.els.payload = cell("pre", "");
  entry.els.status = cell("div", "", "note");
  entry.els.reply = document.createElement("div");
  li.append(head, entry.els.payload, entry.els.status, entry.els.reply);
  entry.els.li = li;
  app.sent.set(trace, entry);
  $("sent").prepend(li);
  updateEmpty();
  return entry;
}

function fillSent(entry) {
  const { els } = entry;
  els.to.replaceChildren("to ", cell("b", entry.to || "?"));
  els.payload.textContent = entry.payload === undefined ? "(sent from another tab)"
    : JSON.stringify(entry.payload, null, 1);
  if (entry.reply) {
    setText(els.state, "replied", "state ok");
    const answer = document.createElement("div");
    answer.className = "answer";
    answer.append(cell("span", entry.reply.by + " replied at " + time(entry.reply.at), "state ok"),
      cell("pre", JSON.stringify(entry.reply.payload, null, 1)));
    els.reply.replaceChildren(answer);
  } else if (entry.expectsReply) {
    setText(els.state, "waiting for a reply", "state wait");
  } else {
    setText(els.state, "no reply expected", "state");
  }
}

// `{"trace", "by", "payload", "at"}` on the sender's streams, once per
// reply (again only if a resume replays it).
function onReply(e) {
  noteId(e);
  show({ id: e.lastEventId, type: e.type, topic: "(yours)", body: pretty(e.data), className: "mailbox" });
  let r;
  try { r = JSON.parse(e.data); } catch (_) { return; }
  if (!r || typeof r.trace !== "string") return;
  const entry = sentEntry(r.trace);
  if (entry.reply) return; // seen already
  entry.reply = { by: r.by, payload: r.payload, at: r.at };
  if (entry.to === null) entry.to = r.by;
  fillSent(entry);
  flash(entry.els.li);
}

// `GET /notifications/{trace}?as=NAME`: the status, for its sender or target.
async function checkStatus(entry) {
  const out = entry.els.status;
  try {
    const response = await fetch(withAs("/notifications/" + entry.trace), { cache: "no-store" });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      out.textContent = response.status + ": " + (answer.error || response.statusText);
      return;
    }
    out.textContent = (answer.delivered ? "delivered at " + time(answer.delivered_at) : "not delivered yet") +
      " · " + (answer.replied ? "replied at " + time(answer.replied_at)
        : answer.expects_reply ? "no reply yet" : "no reply expected");
    if (answer.replied && !entry.reply) {
      entry.reply = { by: answer.to, payload: answer.reply, at: answer.replied_at };
      fillSent(entry);
    }
  } catch (err) {
    out.textContent = String(err.message || err);
  }
}

// --- publishing ---------------------------------------------------------

// The data is sent as typed, so that the server's own validation answers
// a mistake in it; topic and event are left out when empty (the defaults).
function publishBody(topic, event, dataText) {
  const fields = [];
  if (topic) fields.push('"topic": ' + JSON.stringify(topic));
  if (event) fields.push('"event": ' + JSON.stringify(event));
  fields.push('"data": ' + dataText);
  return "{" + fields.join(", ") + "}";
}

async function publish() {
  const topic = $("publish-topic").value.trim();
  const event = $("publish-event").value.trim();
  if (event) addType(event); // before publishing, so that its echo is heard
  try {
    const response = await fetch(withAs("/publish"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: publishBody(topic, event, $("publish-data").value),
    });
    const answer = await response.json();
    if (response.status === 503) {
      const retry = response.headers.get("Retry-After");
      showResult("refused", "Refused, 503: " + answer.error +
        (answer.reason ? " (" + answer.reason + ")" : "") +
        (retry ? ". Try again in " + retry + " s, or lift read-only above." : "."));
      return;
    }
    if (!response.ok) throw new Error(answer.error || response.statusText);
    noteTopic(answer.id, topic || "public");
    showResult("ok", "published " + answer.id);
  } catch (err) {
    showResult("error", String(err.message || err));
  }
}

// Remembers the topic of an id this page published, and fills it in if
// the event arrived before the answer did.
function noteTopic(id, topic) {
  app.topicOfId.set(id, topic);
  const item = $("events").querySelector(`li[data-id="${CSS.escape(id)}"]`);
  if (item) item.children[2].textContent = topic;
}

function showResult(kind, text) {
  const result = $("publish-result");
  result.className = "result note " + kind;
  result.textContent = text;
}

// --- mode switches ------------------------------------------------------

// No body: the server toggles, and answers the new state with both
// switches and every cause in force. The new mode also arrives as a
// `server.state` event on every stream, this one included.
async function toggle(path) {
  const result = $("admin-result");
  result.textContent = "";
  try {
    const response = await fetch(withAs(path), { method: "POST" });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    setSwitches(answer.switches);
    result.className = "note";
    result.textContent = describeCauses(answer.causes);
  } catch (err) {
    result.className = "result error";
    result.textContent = String(err.message || err);
  }
}

function describeCauses(causes) {
  if (!causes) return "";
  const parts = [];
  if (causes.read_only) parts.push("read-only: " + causes.read_only);
  if (causes.degraded) parts.push("degraded: " + causes.degraded);
  for (const [name, error] of causes.failing_probes || []) parts.push("probe " + name + ": " + error);
  return parts.length ? "causes in force: " + parts.join(" · ") : "no cause in force";
}

function setSwitches(switches) {
  app.switches = switches;
  for (const [id, label, on] of [["toggle-read-only", "Read-only", switches.read_only],
                                 ["toggle-degraded", "Degraded", switches.degraded]]) {
    $(id).textContent = label + ": " + (on ? "on" : "off");
    $(id).setAttribute("aria-pressed", String(on));
  }
}

// --- wiring -------------------------------------------------------------

$("name-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setName($("name").value);
});
$("name").addEventListener("change", () => setName($("name").value));
$("topics-form").addEventListener("submit", (e) => {
  e.preventDefault();
  app.topics = parseTopics($("topics").value);
  connect();
});
$("publish-form").addEventListener("submit", (e) => {
  e.preventDefault();
  publish();
});
$("notify-form").addEventListener("submit", (e) => {
  e.preventDefault();
  notify();
});
$("clear").addEventListener("click", () => $("events").replaceChildren());
$("toggle-read-only").addEventListener("click", () => toggle("/admin/read-only"));
$("toggle-degraded").addEventListener("click", () => toggle("/admin/degraded"));

// The name this tab had (`?as=` in its address), else anonymous.
setName(new URLSearchParams(location.search).get("as") || "");
