// patchbay operator console: live device grid over Server-Sent Events,
// controls generated from each device's settings schema, commands over the
// HTTP API. No framework; everything here is plain DOM.
"use strict";

const TAGS = "dev/+/meta,dev/+/state,dev/+/online,dev/+/event";
const devices = new Map(); // id -> {meta, state, online, events: [], busy: false, outcome: null}
const cards = new Map(); // id -> card element
let token = localStorage.getItem("patchbay-token") || "";
let source = null;
let lastSeq = 0;

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
  if (!devices.has(id)) devices.set(id, { meta: null, state: null, online: null, events: [], busy: false, outcome: null });
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
    res = await fetch("/api/devices", { headers: headers() });
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
}

function openStream(resume) {
  if (source) source.close();
  const q = new URLSearchParams({ tags: TAGS });
  if (token) q.set("token", token);
  if (!resume) lastSeq = 0;
  source = new EventSource(`/api/events?${q}`);
  source.addEventListener("open", () => setConn("live", "ok"));
  source.addEventListener("error", () => setConn("reconnecting…", "warn"));
  source.addEventListener("msg", (e) => {
    const m = JSON.parse(e.data);
    lastSeq = Math.max(lastSeq, m.seq);
    onMessage(m);
  });
  source.addEventListener("snapshot", (e) => {
    const { seq } = JSON.parse(e.data);
    // A restarted hub counts seqs from zero again: start over with a full snapshot.
    if (seq < lastSeq) {
      openStream(false);
      return;
    }
    setConn("live", "ok");
    renderAll();
  });
}

function onMessage(m) {
  const parts = m.tag.split("/");
  if (parts.length !== 3 || parts[0] !== "dev") return;
  const [, id, kind] = parts;
  const d = device(id);
  if (kind === "event") {
    d.events.unshift({ ...m.body, time: m.body.time || Date.now() });
    d.events.length = Math.min(d.events.length, 20);
    log(id, `${m.body.level}: ${m.body.message}`, m.cid);
    return;
  }
  if (m.body === null) {
    d[kind] = null;
  } else if (kind === "meta") {
    const rebuild = JSON.stringify(d.meta && d.meta.settings) !== JSON.stringify(m.body.settings);
    d.meta = m.body;
    if (rebuild) cards.delete(id);
  } else {
    d[kind] = m.body;
  }
  if (kind === "state" && m.cid) log(id, `state: power ${show(m.body.power)}`, m.cid);
  if (kind === "online") log(id, m.body.online ? "online" : `offline: ${m.body.reason || "no reason given"}`);
  renderDevice(id);
}

// ---- rendering ------------------------------------------------------------

const POWER = { on: ["On", "ok"], off: ["Off", "wait"], warming: ["Warming up…", "transition"], cooling: ["Cooling down…", "transition"] };
const show = (v) => (v === null || v === undefined ? "—" : typeof v === "boolean" ? (v ? "yes" : "no") : String(v));

function matchesSearch(d) {
  const q = $("#search").value.trim().toLowerCase();
  if (!q || !d.meta) return true;
  return [d.meta.id, d.meta.name, d.meta.location, d.meta.model, d.meta.manufacturer, d.meta.driver]
    .some((f) => String(f || "").toLowerCase().includes(q));
}

function section(location) {
  const key = location || "Unassigned";
  let s = document.querySelector(`section.location[data-location="${CSS.escape(key)}"]`);
  if (!s) {
    const heading = el("h2", { id: `loc-${key.replace(/\W+/g, "-")}` }, key);
    s = el("section", { class: "location", "data-location": key, "aria-labelledby": heading.id }, heading, el("div", { class: "grid" }));
    const all = [...document.querySelectorAll("section.location")];
    const after = all.find((o) => o.dataset.location.localeCompare(key) > 0);
    $("#locations").insertBefore(s, after || null);
  }
  return $(".grid", s);
}

function renderAll() {
  for (const id of devices.keys()) renderDevice(id);
  $("#empty").hidden = [...devices.values()].some((d) => d.meta);
}

function renderDevice(id) {
  const d = devices.get(id);
  if (!d || !d.meta) return;
  let card = cards.get(id);
  if (!card || !card.isConnected) {
    if (card) card.remove();
    card = buildCard(id, d);
    cards.set(id, card);
    const grid = section(d.meta.location);
    const after = [...grid.children].find((c) => c.dataset.id.localeCompare(id) > 0);
    grid.insertBefore(card, after || null);
  }
  updateCard(card, d);
  card.hidden = !matchesSearch(d);
  for (const s of document.querySelectorAll("section.location")) {
    s.hidden = ![...$(".grid", s).children].some((c) => !c.hidden);
  }
  $("#empty").hidden = true;
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
      s.values.map((v) => el("button", { type: "button", "data-setting": s.name, "data-value": v, "aria-pressed": "false", onclick: () => send(v) }, v)));
    return el("div", { class: "control", "data-setting": s.name }, el("span", { id: `${cid}-label`, class: "sub" }, s.label || s.name), group);
  }
  let input;
  if (s.type === "enum") {
    input = el("select", { id: cid, "data-setting": s.name, onchange: (e) => send(e.target.value) },
      el("option", { value: "", disabled: true }, "—"), s.values.map((v) => el("option", { value: v }, v)));
  } else if (s.type === "bool") {
    input = el("input", { id: cid, type: "checkbox", role: "switch", "data-setting": s.name, onchange: (e) => send(e.target.checked) });
  } else if (s.type === "int") {
    input = el("input", { id: cid, type: "number", min: s.min, max: s.max, step: 1, "data-setting": s.name,
      onchange: (e) => { if (e.target.value !== "") send(Number(e.target.value)); } });
  } else {
    input = el("input", { id: cid, type: "text", "data-setting": s.name, onchange: (e) => send(e.target.value) });
  }
  return el("div", { class: "control", "data-setting": s.name }, el("label", { for: cid }, s.label || s.name), input);
}

function updateCard(card, d) {
  const online = d.online && d.online.online === true;
  card.classList.toggle("offline", !online);
  const ob = $(".online-badge", card);
  ob.textContent = online ? "online" : "offline";
  ob.className = `pill online-badge ${online ? "pill-ok" : "pill-bad"}`;
  ob.title = online ? "" : (d.online && d.online.reason) || "no report from the agent yet";
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
  for (const [k, label] of [["input", "Input"], ["mute", "Mute"], ["lamp_hours", "Lamp hours"]]) {
    if (k in state) facts.append(el("dt", {}, label), el("dd", { "data-fact": k }, show(state[k])));
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

async function command(id, desired) {
  const d = device(id);
  if (d.busy) return;
  const cid = `console-${Math.random().toString(36).slice(2, 10)}`;
  const what = Object.entries(desired).map(([k, v]) => `${k} ${show(v)}`).join(", ");
  d.busy = true;
  d.outcome = { kind: "wait", text: `Sending ${what}…` };
  renderDevice(id);
  log(id, `command: ${what}`, cid);
  try {
    const res = await fetch(`/api/devices/${encodeURIComponent(id)}`, {
      method: "PATCH",
      headers: headers({ "Content-Type": "application/json", "X-Correlation-Id": cid }),
      body: JSON.stringify(desired),
    });
    const body = await res.json().catch(() => ({}));
    if (res.ok) {
      d.state = body;
      d.outcome = { kind: "ok", text: `Confirmed: ${what}` };
      log(id, `confirmed: ${what}`, cid);
    } else {
      const e = body.error || { code: "error", message: res.statusText };
      if (res.status === 401) askToken("The hub asks for a token to change devices.");
      d.outcome = { kind: "bad", text: `${FRIENDLY[e.code] || "Failed"}: ${e.message}` };
      log(id, `failed: ${e.message}`, cid);
    }
  } catch (err) {
    d.outcome = { kind: "bad", text: `Could not reach the hub: ${err.message}` };
  } finally {
    d.busy = false;
    renderDevice(id);
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
  const body = $("#detail-body");
  body.replaceChildren(
    el("h3", {}, "State"), table(Object.entries(d.state || {})),
    el("h3", {}, "Reachability"), table([["online", d.online && d.online.online], ["reason", d.online && d.online.reason], ["since", d.online && d.online.since ? new Date(d.online.since).toLocaleString() : null]]),
    el("h3", {}, "Device"), table([["driver", m.driver], ["manufacturer", m.manufacturer], ["model", m.model], ["location", m.location], ["transport", m.transport], ["poll (ms)", m.poll_ms], ...Object.entries(m.info || {})]),
    el("h3", {}, "Recent events"),
    d.events.length ? el("ul", {}, d.events.map((e) => el("li", {}, `${new Date(e.time).toLocaleTimeString()} ${e.level}: ${e.message}`))) : el("p", { class: "sub" }, "None."));
  $("#detail").showModal();
}

function log(id, text, cid) {
  const list = $("#log");
  list.prepend(el("li", {}, el("time", {}, new Date().toLocaleTimeString()), el("strong", {}, id), el("span", {}, text), cid ? el("span", { class: "cid" }, `cid ${cid}`) : null));
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
$("#search").addEventListener("input", renderAll);

start();
