// patchbay operator console: live device grid over Server-Sent Events,
// controls generated from each device's settings schema, commands over the
// HTTP API. No framework; everything here is plain DOM.
//
// Rendering is batched: messages only mark devices dirty, and one pass per
// tick redraws those cards. The initial snapshot is drawn once, at its end.
"use strict";

const TAGS = "dev/+/meta,dev/+/state,dev/+/online,dev/+/event,alert/+/+,hub/scene-runs/+,hub/scenes/+/spec";
// Scenes from the hub's config, and each scene's latest run.
let scenes = [];
let venueReload = null;
const latestRun = new Map();
// Open alerts by their tag (`alert/<rule>/<device>`).
const alerts = new Map();
const devices = new Map(); // id -> {meta, state, online, events: [], busy, outcome, search}
const cards = new Map(); // id -> card element
const dirty = new Set(); // ids to redraw on the next tick
let token = localStorage.getItem("patchbay-token") || "";
let source = null;
let lastSeq = 0;
let hubInstance = null; // the hub process whose data the page shows
let loading = true; // inside a snapshot or a catch-up: draw once it ends
let query = "";
let flushTimer = 0;

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
};

function device(id) {
  if (!devices.has(id)) devices.set(id, { meta: null, state: null, online: null, events: [], busy: false, outcome: null, search: "" });
  return devices.get(id);
}

function headers(extra = {}) {
  const h = { ...extra };
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

// ---- connection -----------------------------------------------------------

function setConn(text, kind) {
  const c = $("#conn");
  c.textContent = text;
  c.className = `pill pill-${kind}`;
}

async function start() {
  let res;
  try {
    // A small authenticated read: is the token (or its absence) accepted?
    res = await fetch("/api/agents", { headers: headers() });
  } catch {
    setConn("reconnecting…", "warn");
    setTimeout(start, 2000);
    return;
  }
  if (res.status === 401) {
    askToken(token ? "That token was not accepted." : "Enter an operator or viewer token from the hub's configuration.");
    return;
  }
  openStream(false);
  loadVenue();
}

// Scenes (with Run and the latest run's progress) and schedules (with their next run).
async function loadVenue() {
  try {
    const [sc, sch] = await Promise.all(["/api/scenes", "/api/schedules"].map((p) => fetch(p, { headers: headers() }).then((r) => r.json())));
    scenes = Array.isArray(sc) ? sc : [];
    renderScenes();
    const list = $("#schedules");
    list.replaceChildren(...(Array.isArray(sch) ? sch : []).map((s) => {
      const next = s.next_ms && s.next_ms.length ? new Date(s.next_ms[0]) : null;
      const missed = s.state && s.state.missed_total ? ` · ${s.state.missed_total} missed while the hub was down` : "";
      return el("li", { "data-schedule": s.name }, el("strong", {}, s.schedule.label || s.name),
        el("span", { class: "sub" }, ` ${s.action} · next ${next ? next.toLocaleString() : "never"}${missed}`));
    }));
    $("#venue-panel").hidden = scenes.length === 0 && list.children.length === 0;
  } catch {
    // The panel stays hidden; devices still work.
  }
}

function runText(run) {
  if (!run) return "";
  const current = run.steps.findIndex((s) => s.status === "running");
  const failed = run.steps.findIndex((s) => s.status === "failed");
  if (run.status === "running") return current >= 0 ? `Running: step ${current + 1}/${run.steps.length} ${run.steps[current].what}` : "Running…";
  if (run.status === "done") return `Done at ${new Date(run.finished).toLocaleTimeString()}`;
  if (run.status === "cancelled") {
    const why = run.steps.map((s) => s.detail || "").find((d) => d.includes("cancelled by")) || "";
    return `Cancelled${why ? ` (${why.slice(why.indexOf("cancelled by"))})` : ""}`;
  }
  if (failed < 0) return run.status;
  return `Failed: step ${failed + 1} ${run.steps[failed].what}: ${run.steps[failed].detail || "failed"}`;
}

// The scenes that act on a room: a step for the room itself or for one of its devices.
function sceneRooms(scene) {
  const rooms = new Set();
  const walk = (steps) => steps.forEach((st) => {
    if (st.room) rooms.add(st.room);
    if (st.device && devices.get(st.device) && devices.get(st.device).meta) rooms.add(devices.get(st.device).meta.location);
    if (st.parallel) walk(st.parallel);
  });
  walk(scene.steps || []);
  return rooms;
}

function renderRoomScenes() {
  for (const s of document.querySelectorAll("section.location")) {
    const box = $(".room-scenes", s);
    if (!box) continue;
    const room = s.dataset.location;
    box.replaceChildren(...scenes.filter((sc) => sceneRooms(sc.scene).has(room)).map((sc) =>
      el("button", { type: "button", class: "ghost", "data-scene": sc.name, onclick: () => runScene(sc.name) }, `▶ ${sc.scene.label || sc.name}`)));
  }
}

function renderScenes() {
  renderRoomScenes();
  const list = $("#scenes");
  list.replaceChildren(...scenes.map((s) => {
    const run = latestRun.get(s.name);
    const running = run && run.status === "running";
    return el("li", { "data-scene": s.name },
      el("strong", {}, s.scene.label || s.name),
      el("button", { type: "button", class: "ghost", disabled: running, onclick: () => runScene(s.name) }, "Run"),
      running ? el("button", { type: "button", class: "ghost cancel", onclick: () => cancelRun(s.name, run.id) }, "Cancel") : null,
      el("span", { class: `scene-progress sub ${run ? run.status : ""}`, role: "status", "aria-live": "polite" }, runText(run)));
  }));
  if (scenes.length) $("#venue-panel").hidden = false;
}

async function runScene(name) {
  const res = await fetch(`/api/scenes/${encodeURIComponent(name)}/run`, { method: "POST", headers: headers({ "X-Client-Name": "console" }) });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const li = document.querySelector(`#scenes li[data-scene="${CSS.escape(name)}"] .scene-progress`);
    if (li) li.textContent = `Not started: ${body.error ? body.error.message : res.statusText}`;
    return;
  }
  log(name, `scene run ${body.run} started`, null, Date.now());
}

async function cancelRun(name, id) {
  const res = await fetch(`/api/scene-runs/${id}/cancel`, { method: "POST", headers: headers({ "X-Client-Name": "console" }) });
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    log(name, `cancel failed: ${body.error ? body.error.message : res.statusText}`, null, Date.now());
  }
}

function openStream(resume) {
  if (source) source.close();
  const q = new URLSearchParams({ tags: TAGS });
  if (token) q.set("token", token);
  if (!resume) lastSeq = 0;
  loading = true;
  performance.mark("patchbay:stream-open");
  source = new EventSource(`/api/events?${q}`);
  source.addEventListener("open", () => setConn("live", "ok"));
  source.addEventListener("error", () => {
    setConn("reconnecting…", "warn");
    // The browser reconnects by itself; what it replays up to the next snapshot marker is catch-up.
    loading = true;
  });
  source.addEventListener("msg", (e) => {
    const m = JSON.parse(e.data);
    lastSeq = Math.max(lastSeq, m.seq);
    onMessage(m);
  });
  source.addEventListener("snapshot", (e) => {
    const { seq, instance } = JSON.parse(e.data);
    // Another hub process (restarted): nothing shown so far can be trusted.
    if (hubInstance && instance && instance !== hubInstance) {
      hubInstance = instance;
      forgetEverything();
      log("hub", "the hub restarted: showing its devices afresh", null, Date.now());
      openStream(false);
      return;
    }
    // A restarted hub counts seqs from zero again: start over with a full snapshot.
    if (seq < lastSeq) {
      openStream(false);
      return;
    }
    hubInstance = instance || hubInstance;
    loading = false;
    setConn("live", "ok");
    performance.mark("patchbay:snapshot-received");
    renderAll();
  });
}

function forgetEverything() {
  devices.clear();
  cards.clear();
  dirty.clear();
  alerts.clear();
  renderAlerts();
  $("#locations").replaceChildren();
}

// The open alerts, newest first, each with Acknowledge until someone has.
function renderAlerts() {
  const list = $("#alerts");
  const items = [...alerts.values()].sort((a, b) => b.since - a.since);
  $("#alerts-panel").hidden = items.length === 0;
  list.replaceChildren(...items.map((a) => {
    const at = new Date(a.since);
    const ack = a.state === "acknowledged"
      ? el("span", { class: "sub" }, `acknowledged by ${a.acknowledged_by || "someone"}`)
      : el("button", { type: "button", class: "ghost", onclick: () => acknowledge(a) }, "Acknowledge");
    return el("li", { class: `alert ${a.state}`, "data-alert": `${a.rule}/${a.device}` },
      el("time", { datetime: at.toISOString() }, at.toLocaleString()),
      el("strong", {}, a.device), el("span", {}, `${a.rule}: ${a.message}`), ack);
  }));
}

async function acknowledge(a) {
  const res = await fetch(`/api/alerts/${encodeURIComponent(a.rule)}/${encodeURIComponent(a.device)}/ack`, {
    method: "POST",
    headers: headers({ "X-Client-Name": "console" }),
  });
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    log(a.device, `acknowledge failed: ${body.error ? body.error.message : res.statusText}`, null, Date.now());
  }
}

const searchText = (m) => [m.id, m.name, m.location, m.model, m.manufacturer, m.driver].map((f) => String(f || "")).join("\n").toLowerCase();

function onMessage(m) {
  const parts = m.tag.split("/");
  if (parts[0] === "hub" && parts[1] === "scenes") {
    // A scene defined, changed or deleted through the API: list them again (once per burst).
    if (!loading) {
      clearTimeout(venueReload);
      venueReload = setTimeout(loadVenue, 200);
    }
    return;
  }
  if (parts[0] === "hub" && parts[1] === "scene-runs") {
    const run = m.body;
    if (run && (!latestRun.has(run.scene) || latestRun.get(run.scene).id <= run.id)) {
      latestRun.set(run.scene, run);
      renderScenes();
    }
    return;
  }
  if (parts[0] === "alert") {
    if (m.body === null) alerts.delete(m.tag);
    else {
      if (!loading && !alerts.has(m.tag)) log(m.body.device, `alert: ${m.body.message}`, null, m.time);
      alerts.set(m.tag, m.body);
    }
    renderAlerts();
    return;
  }
  if (parts.length !== 3 || parts[0] !== "dev") return;
  const [, id, kind] = parts;
  const d = device(id);
  // A snapshot (or the catch-up after a reconnection) is the current state,
  // not news: only live changes go in the log, with the hub's time.
  const live = !loading;
  if (kind === "event") {
    d.events.unshift({ ...m.body, time: m.body.time || m.time });
    d.events.length = Math.min(d.events.length, 20);
    if (live) log(id, `${m.body.level}: ${m.body.message}`, m.cid, m.time);
    return;
  }
  if (m.body === null) {
    d[kind] = null;
  } else if (kind === "meta") {
    const old = d.meta;
    const rebuild = !old || JSON.stringify(old.settings) !== JSON.stringify(m.body.settings) ||
      old.location !== m.body.location || old.name !== m.body.name || old.model !== m.body.model;
    d.meta = m.body;
    d.search = searchText(m.body);
    if (rebuild) d.rebuild = true;
  } else {
    if (live && kind === "online" && (!d.online || d.online.online !== m.body.online)) {
      log(id, m.body.online ? "online" : `offline: ${m.body.reason || "no reason given"}`, null, m.time);
    }
    d[kind] = m.body;
  }
  if (live && kind === "state" && m.cid) log(id, `state: power ${show(m.body.power)}`, m.cid, m.time);
  if (!loading) schedule(id);
}

function schedule(id) {
  dirty.add(id);
  if (!flushTimer) flushTimer = setTimeout(flush, 16);
}

function flush() {
  flushTimer = 0;
  const touched = new Set();
  for (const id of dirty) {
    const s = renderDevice(id);
    if (s) touched.add(s);
  }
  dirty.clear();
  for (const s of touched) updateSection(s);
  updateEmpty();
}

// ---- rendering ------------------------------------------------------------

const POWER = { on: ["On", "ok"], off: ["Off", "wait"], warming: ["Warming up…", "transition"], cooling: ["Cooling down…", "transition"] };
// The same words for the same settings on every device, whatever the driver calls them.
const LABELS = { power: "Power", input: "Input", mute: "Mute", video_mute: "Picture mute", audio_mute: "Sound mute", freeze: "Freeze" };
const show = (v) => (v === null || v === undefined ? "—" : typeof v === "boolean" ? (v ? "yes" : "no") : String(v));
const label = (s) => LABELS[s.name] || s.label || s.name;
// On before off, everywhere; other values keep the device's order.
const ordered = (values) => {
  const first = ["on", "off"].filter((v) => values.includes(v));
  return first.length === 2 ? [...first, ...values.filter((v) => !first.includes(v))] : values;
};

function matchesSearch(d) {
  return !query || !d.meta || d.search.includes(query);
}

function section(location) {
  const key = location || "Unassigned";
  let s = document.querySelector(`section.location[data-location="${CSS.escape(key)}"]`);
  if (!s) {
    const heading = el("h2", { id: `loc-${key.replace(/\W+/g, "-")}` }, key);
    // A real room (not "Unassigned") gets one switch for all its devices.
    const actions = location ? el("div", { class: "room-actions", role: "group", "aria-label": `All devices in ${key}` },
      el("button", { type: "button", class: "ghost", "data-room-power": "on", onclick: () => roomCommand(key, { power: "on" }) }, "All on"),
      el("button", { type: "button", class: "ghost", "data-room-power": "off", onclick: () => roomCommand(key, { power: "off" }) }, "All off"),
      el("span", { class: "room-scenes" }),
      el("span", { class: "room-outcome sub", role: "status", "aria-live": "polite" })) : null;
    const head = el("div", { class: "room-head" }, heading, actions);
    s = el("section", { class: "location", "data-location": key, "aria-labelledby": heading.id }, head, el("div", { class: "grid" }));
    const all = [...document.querySelectorAll("section.location")];
    const after = all.find((o) => o.dataset.location.localeCompare(key) > 0);
    $("#locations").insertBefore(s, after || null);
  }
  return s;
}

function updateSection(s) {
  const grid = $(".grid", s);
  if (!grid.firstElementChild) {
    s.remove();
    return;
  }
  let visible = false;
  for (const c of grid.children) if (!c.hidden) { visible = true; break; }
  s.hidden = !visible;
}

function updateEmpty() {
  $("#empty").hidden = cards.size > 0;
}

// Lets the browser handle input and paint, then runs `f`. A message to
// ourselves, not a timer: timers in hidden tabs are slowed to once a second.
const yieldChannel = new MessageChannel();
const yieldQueue = [];
yieldChannel.port1.onmessage = () => yieldQueue.shift()();
function yieldThen(f) {
  yieldQueue.push(f);
  yieldChannel.port2.postMessage(null);
}

// Draws every device, a slice at a time, so that a venue's worth of cards
// never blocks the page for long.
function renderAll() {
  const ids = [...devices.keys()];
  const touched = new Set();
  let i = 0;
  // Drawn out of sight: no layout of a growing page after every slice.
  const grid = $("#locations");
  const many = ids.length - cards.size > 100;
  if (many) {
    grid.hidden = true;
    $("#loading").textContent = `Loading ${ids.length.toLocaleString()} devices…`;
    $("#loading").hidden = false;
  }
  const step = () => {
    const until = performance.now() + 30;
    while (i < ids.length && performance.now() < until) {
      const s = renderDevice(ids[i++]);
      if (s) touched.add(s);
    }
    if (i < ids.length) {
      yieldThen(step);
      return;
    }
    for (const s of touched) if (s.isConnected) updateSection(s);
    renderRoomScenes();
    updateEmpty();
    grid.hidden = false;
    $("#loading").hidden = true;
    performance.mark("patchbay:snapshot-drawn");
  };
  step();
}

/// Draws one device's card; returns the section it was in or went to.
function renderDevice(id) {
  const d = devices.get(id);
  let card = cards.get(id);
  if (!d || !d.meta) {
    // Deleted (a null meta): the card goes too.
    if (!card) return null;
    const s = card.closest("section.location");
    card.remove();
    cards.delete(id);
    if (d && !d.state && !d.online) devices.delete(id);
    return s;
  }
  let old = null;
  if (card && d.rebuild) {
    // A new description: the old card goes, not left behind as a stale twin.
    old = card.closest("section.location");
    card.remove();
    card = null;
  }
  d.rebuild = false;
  if (!card) {
    card = buildCard(id, d);
    cards.set(id, card);
    const grid = $(".grid", section(d.meta.location));
    let after = null;
    for (const c of grid.children) if (c.dataset.id.localeCompare(id) > 0) { after = c; break; }
    grid.insertBefore(card, after);
  }
  updateCard(card, d);
  card.hidden = !matchesSearch(d);
  const s = card.closest("section.location");
  if (old && old !== s) updateSection(old);
  return s;
}

function buildCard(id, d) {
  const titleId = `title-${id}`;
  const controls = el("div", { class: "controls" });
  for (const s of d.meta.settings || []) {
    if (s.writable) controls.append(buildControl(id, s));
  }
  return el("article", { class: "card", "data-id": id, "aria-labelledby": titleId },
    el("div", {},
      el("h3", { id: titleId }, d.meta.name || id),
      el("div", { class: "sub" }, `${id} · ${[d.meta.manufacturer, d.meta.model].filter(Boolean).join(" ") || d.meta.driver}`)),
    el("div", { class: "badges" },
      el("span", { class: "pill online-badge" }),
      el("span", { class: "pill power-badge", "aria-label": "Power" }),
      el("span", { class: "error-badges" })),
    el("p", { class: "reason", hidden: true }),
    el("dl", { class: "facts" }),
    controls,
    el("p", { class: "outcome", role: "status", "aria-live": "polite" }),
    el("div", {}, el("button", { type: "button", class: "ghost details", onclick: () => openDetail(id) }, "Details")));
}

function buildControl(id, s) {
  const cid = `ctl-${id}-${s.name}`;
  const send = (value) => command(id, { [s.name]: value });
  if (s.type === "enum" && s.values.length <= 3 && s.values.every((v) => v.length <= 8)) {
    const group = el("div", { class: "segmented", role: "group", "aria-labelledby": `${cid}-label` },
      ordered(s.values).map((v) => el("button", { type: "button", "data-setting": s.name, "data-value": v, "aria-pressed": "false", onclick: () => send(v) }, v)));
    return el("div", { class: "control", "data-setting": s.name }, el("span", { id: `${cid}-label`, class: "sub" }, label(s)), group);
  }
  let input;
  if (s.type === "enum") {
    input = el("select", { id: cid, "data-setting": s.name },
      el("option", { value: "", disabled: true }, "—"), ordered(s.values).map((v) => el("option", { value: v }, v)));
    choose(input, send, id);
  } else if (s.type === "bool") {
    input = el("input", { id: cid, type: "checkbox", role: "switch", "data-setting": s.name, onchange: (e) => send(e.target.checked) });
  } else if (s.type === "int") {
    input = el("input", { id: cid, type: "number", min: s.min, max: s.max, step: 1, "data-setting": s.name,
      onchange: (e) => { if (e.target.value !== "") send(Number(e.target.value)); } });
  } else {
    input = el("input", { id: cid, type: "text", "data-setting": s.name, onchange: (e) => send(e.target.value) });
  }
  return el("div", { class: "control", "data-setting": s.name }, el("label", { for: cid }, label(s)), input);
}

// A list sends its choice when picked with the mouse or confirmed with
// Enter; stepping through it with the arrow keys sends nothing (a device
// must not switch inputs at every key press). Leaving it unconfirmed puts
// back the device's value.
function choose(select, send, id) {
  let stepping = false;
  let pending = false;
  select.addEventListener("pointerdown", () => { stepping = false; });
  select.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      stepping = false;
      if (pending) {
        pending = false;
        e.preventDefault();
        send(select.value);
      }
    } else if (e.key === "Escape") {
      pending = false;
      schedule(id);
    } else if (e.key.length === 1 || e.key.startsWith("Arrow") || e.key === "Home" || e.key === "End" || e.key.startsWith("Page")) {
      stepping = true;
    }
  });
  select.addEventListener("change", () => {
    if (stepping) {
      pending = true;
      const d = devices.get(id);
      d.outcome = { kind: "wait", text: `Press Enter to switch ${label({ name: select.dataset.setting })} to ${select.value}` };
      updateCard(cards.get(id), d);
      return;
    }
    send(select.value);
  });
  select.addEventListener("blur", () => {
    if (!pending) return;
    pending = false;
    const d = devices.get(id);
    if (d) d.outcome = null;
    schedule(id);
  });
}

function updateCard(card, d) {
  const online = d.online && d.online.online === true;
  // Remembered from before a hub restart, not yet confirmed by the agent.
  const unknown = d.online && d.online.online === null;
  card.classList.toggle("offline", !online);
  const ob = $(".online-badge", card);
  ob.textContent = online ? "online" : unknown ? "unknown" : "offline";
  ob.className = `pill online-badge ${online ? "pill-ok" : unknown ? "pill-warn" : "pill-bad"}`;
  const reason = online ? "" : (d.online && d.online.reason) || "no report from the agent yet";
  ob.title = reason;
  const rp = $(".reason", card);
  rp.textContent = reason ? `${unknown ? "Not confirmed" : "Offline"}: ${reason}` : "";
  rp.hidden = !reason;
  const state = d.state || {};
  const [ptext, pkind] = POWER[state.power] || [show(state.power), "wait"];
  const pb = $(".power-badge", card);
  pb.textContent = ptext;
  pb.className = `pill power-badge pill-${pkind}`;
  const errs = $(".error-badges", card);
  errs.replaceChildren();
  if (state.errors && typeof state.errors === "object") {
    for (const [k, v] of Object.entries(state.errors)) {
      if (v !== "ok") errs.append(el("span", { class: `pill ${v === "error" ? "pill-bad" : "pill-warn"}` }, `${k} ${v}`));
    }
  }
  if (state.error && state.error !== "00") errs.append(el("span", { class: "pill pill-bad" }, `error ${state.error}`));
  const facts = $(".facts", card);
  facts.replaceChildren();
  for (const [k, text] of [["input", "Input"], ["mute", "Mute"], ["lamp_hours", "Lamp hours"]]) {
    if (k in state) facts.append(el("dt", {}, text), el("dd", { "data-fact": k }, show(state[k])));
  }
  const disabled = d.busy || !online;
  for (const c of card.querySelectorAll("[data-setting]")) {
    if (c.classList.contains("control")) continue;
    c.disabled = disabled;
    const v = state[c.dataset.setting];
    if (c.tagName === "BUTTON") c.setAttribute("aria-pressed", String(v === c.dataset.value));
    else if (document.activeElement !== c) {
      if (c.type === "checkbox") c.checked = v === true;
      else c.value = v === null || v === undefined ? "" : v;
    }
  }
  const out = $(".outcome", card);
  out.textContent = d.outcome ? d.outcome.text : "";
  out.className = `outcome ${d.outcome ? d.outcome.kind : ""}`;
}

function applySearch() {
  query = $("#search").value.trim().toLowerCase();
  for (const [id, card] of cards) card.hidden = !matchesSearch(devices.get(id));
  for (const s of document.querySelectorAll("section.location")) updateSection(s);
}

// ---- commands -------------------------------------------------------------

const FRIENDLY = {
  busy: "The device is busy",
  offline: "The device is offline",
  unavailable: "The agent went away",
  timeout: "The device did not answer in time",
  device_timeout: "The device did not answer in time",
  invalid_value: "Not allowed",
  not_found: "Unknown device",
  forbidden: "Your token may not change devices",
  device_error: "The device reported a failure",
};

// One command for every device in a room; the answer says what became of each.
async function roomCommand(room, desired) {
  const s = section(room);
  const out = $(".room-outcome", s);
  const buttons = [...s.querySelectorAll("[data-room-power]")];
  const what = Object.entries(desired).map(([k, v]) => `${k} ${show(v)}`).join(", ");
  const cid = `console-${Math.random().toString(36).slice(2, 10)}`;
  buttons.forEach((b) => { b.disabled = true; });
  out.textContent = `Sending ${what} to every device…`;
  log(room, `room command: ${what}`, cid, Date.now());
  try {
    const res = await fetch(`/api/rooms/${encodeURIComponent(room)}`, {
      method: "PATCH",
      headers: headers({ "Content-Type": "application/json", "X-Correlation-Id": cid, "X-Client-Name": "console" }),
      body: JSON.stringify(desired),
    });
    const body = await res.json();
    if (!res.ok) {
      out.textContent = `Not sent: ${body.error ? body.error.message : res.statusText}`;
      return;
    }
    const failed = body.members.filter((m) => m.outcome === "failed")
      .map((m) => `${m.id} (${m.error ? m.error.message : "failed"})`);
    const words = { all: "Done", some: "Partly done", none: "Not done" };
    out.textContent = `${words[body.status] || body.status}: ${body.confirmed} confirmed, ${body.failed} failed, ${body.skipped} skipped` +
      (failed.length ? `. Failed: ${failed.join("; ")}` : "");
    log(room, `room ${what}: ${body.status}`, cid, Date.now());
  } catch (e) {
    out.textContent = `Not sent: ${e.message}`;
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

async function command(id, desired) {
  const d = device(id);
  if (d.busy) return;
  const cid = `console-${Math.random().toString(36).slice(2, 10)}`;
  const what = Object.entries(desired).map(([k, v]) => `${k} ${show(v)}`).join(", ");
  d.busy = true;
  d.outcome = { kind: "wait", text: `Sending ${what}…` };
  schedule(id);
  log(id, `command: ${what}`, cid, Date.now());
  try {
    const res = await fetch(`/api/devices/${encodeURIComponent(id)}`, {
      method: "PATCH",
      headers: headers({ "Content-Type": "application/json", "X-Correlation-Id": cid, "X-Client-Name": "console" }),
      body: JSON.stringify(desired),
    });
    const body = await res.json().catch(() => ({}));
    if (res.ok) {
      d.state = body;
      d.outcome = { kind: "ok", text: `Confirmed: ${what}` };
      log(id, `confirmed: ${what}`, cid, Date.now());
    } else {
      const e = body.error || { code: "error", message: res.statusText };
      if (res.status === 401) askToken("The hub asks for a token to change devices.");
      d.outcome = { kind: "bad", text: `${FRIENDLY[e.code] || "Failed"}: ${e.message}` };
      log(id, `failed: ${e.message}`, cid, Date.now());
    }
  } catch (err) {
    d.outcome = { kind: "bad", text: `Could not reach the hub: ${err.message}` };
  } finally {
    d.busy = false;
    schedule(id);
  }
}

// ---- detail, log, token ---------------------------------------------------

function table(rows) {
  return el("table", {}, el("tbody", {}, rows.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, typeof v === "object" && v !== null ? JSON.stringify(v) : show(v))))));
}

function openDetail(id) {
  const d = devices.get(id);
  $("#detail-title").textContent = `${d.meta.name || id} (${id})`;
  const m = d.meta;
  const o = d.online || {};
  const body = $("#detail-body");
  const history = el("div", { id: "detail-history" }, el("p", { class: "sub" }, "Loading…"));
  const commands = el("div", { id: "detail-commands" }, el("p", { class: "sub" }, "Loading…"));
  const usage = el("div", { id: "detail-usage" }, el("p", { class: "sub" }, "Loading…"));
  body.replaceChildren(
    el("h3", {}, "State"), table(Object.entries(d.state || {})),
    el("h3", {}, "Reachability"), table([["online", o.online], ["reason", o.reason], ["detail", o.detail], ["since", o.since ? new Date(o.since).toLocaleString() : null]]),
    el("h3", {}, "Device"), table([["driver", m.driver], ["manufacturer", m.manufacturer], ["model", m.model], ["location", m.location], ["transport", m.transport], ["poll (ms)", m.poll_ms], ...Object.entries(m.info || {})]),
    el("h3", {}, "Use over the last 30 days"), usage,
    el("h3", {}, "Recent history"), history,
    el("h3", {}, "Recent commands"), commands);
  $("#detail").showModal();
  loadJournal(id, history, commands, usage);
}

// The device's memory from the hub's journal: history, commands with who sent
// them, and a chart of hours on per day and lamp hours.
async function loadJournal(id, history, commands, usage) {
  const get = async (path) => {
    const res = await fetch(path, { headers: headers() });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
    return body;
  };
  const when = (ms) => el("time", { datetime: new Date(ms).toISOString() }, new Date(ms).toLocaleString());
  const q = encodeURIComponent(id);
  const fail = (box) => (e) => box.replaceChildren(el("p", { class: "sub" }, `Not available: ${e.message}`));
  get(`/api/devices/${q}/history?limit=20`).then((page) => {
    const text = (h) => h.kind === "state" ? Object.entries(h.body).map(([k, v]) => `${k} ${show(v)}`).join(", ")
      : h.kind === "online" ? (h.body.online === true ? "online" : `offline: ${h.body.reason || "no reason given"}`)
      : `${h.body.level || "event"}: ${h.body.message || JSON.stringify(h.body)}`;
    history.replaceChildren(page.items.length
      ? el("ul", { class: "history" }, page.items.map((h) => el("li", { "data-kind": h.kind }, when(h.time), ` ${text(h)}`)))
      : el("p", { class: "sub" }, "None."));
  }, fail(history));
  get(`/api/commands?device=${q}&limit=10`).then((page) => {
    const who = (w) => [w.token && `token ${w.token}`, w.client, w.transport].filter(Boolean).join(", ");
    commands.replaceChildren(page.items.length
      ? el("ul", { class: "commands" }, page.items.map((c) => el("li", { "data-cid": c.cid }, when(c.received),
        ` ${Object.entries(c.desired || {}).map(([k, v]) => `${k} ${show(v)}`).join(", ")}: ${c.status}${c.error ? ` (${c.error.message})` : ""} — ${who(c.who)}`)))
      : el("p", { class: "sub" }, "None."));
  }, fail(commands));
  get(`/api/devices/${q}/usage?days=30`).then((report) => usage.replaceChildren(chart(report)), fail(usage));
}

// Hours on per day as bars, lamp hours as a line, in plain SVG.
function chart(report) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  };
  const days = report.days;
  const W = 300, H = 80, bw = W / days.length;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H + 12}`, role: "img", class: "usage-chart",
    "aria-label": `Hours on per day over ${days.length} days: ${report.total_hours_on} hours in all` });
  days.forEach((d, i) => {
    const h = Math.min(24, d.hours_on) / 24 * H;
    const bar = svg("rect", { x: i * bw + 1, y: H - h, width: Math.max(1, bw - 2), height: h, class: "bar", "data-date": d.date });
    const title = svg("title", {});
    title.textContent = `${d.date}: ${d.hours_on} h on${d.lamp_hours === null ? "" : `, lamp ${d.lamp_hours} h`}`;
    bar.append(title);
    root.append(bar);
  });
  const lamps = days.map((d, i) => [i, d.lamp_hours]).filter(([, l]) => l !== null);
  if (lamps.length) {
    const lo = Math.min(...lamps.map(([, l]) => l)), hi = Math.max(...lamps.map(([, l]) => l));
    const y = (l) => hi === lo ? H / 2 : H - (l - lo) / (hi - lo) * H;
    root.append(svg("polyline", { class: "lamp", fill: "none", points: lamps.map(([i, l]) => `${i * bw + bw / 2},${y(l)}`).join(" ") }));
  }
  const caption = el("p", { class: "sub" }, `${report.total_hours_on} h on in ${days.length} days (UTC)` +
    (lamps.length ? `; lamp hours ${lamps[0][1]} → ${lamps[lamps.length - 1][1]}` : ""));
  return el("figure", {}, root, caption);
}

function log(id, text, cid, time) {
  const list = $("#log");
  const at = new Date(time || Date.now());
  list.prepend(el("li", {}, el("time", { datetime: at.toISOString() }, at.toLocaleTimeString()), el("strong", {}, id), el("span", {}, text), cid ? el("span", { class: "cid" }, `cid ${cid}`) : null));
  while (list.children.length > 100) list.lastChild.remove();
}

function askToken(why) {
  $("#token-why").textContent = why;
  const dlg = $("#token-dialog");
  if (!dlg.open) dlg.showModal();
}

$("#token-form").addEventListener("submit", (e) => {
  const submitter = e.submitter && e.submitter.value;
  if (submitter === "save") {
    token = $("#token-input").value.trim();
    localStorage.setItem("patchbay-token", token);
    start();
  }
});
$("#token-button").addEventListener("click", () => askToken("Enter an operator or viewer token from the hub's configuration."));
let searchTimer = 0;
$("#search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(applySearch, 120);
});

start();
