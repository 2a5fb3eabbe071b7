// Nurse station page: live alerts over Server-Sent Events, acknowledgements over POST.
// Plain JS, no build step. Data is rendered with textContent only; the one innerHTML is the
// sparkline SVG that our own server draws from numbers.
"use strict";

const RANK = { info: 1, warning: 2, critical: 3 };
const UNITS = { heart_rate: "bpm", glucose: "mg/dL", rr_interval: "s" };
const WATCHDOG_MS = 40000;       // server sends a heartbeat every 15 s
const SPARK_REFRESH_MS = 60000;
const REMIND_MS = 120000;        // repeat the tone while a critical alert is unacknowledged

const state = {
  alerts: new Map(), lastId: null, csrf: "", es: null, lastMessage: Date.now(),
  audio: null, fresh: new Map(), sparks: new Map(), pendingAcks: new Map(), lastRemind: Date.now(),
};

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function clock(epochS) {
  return new Date(epochS * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
}

function ago(epochS) {
  const s = Math.max(0, Date.now() / 1000 - epochS);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${Math.round(s / 86400)} days`;
}

function ruleLabel(rule) {
  const t = rule.replace(/_/g, " ");
  return t.charAt(0).toUpperCase() + t.slice(1);
}

function formatValue(a) {
  if (a.value === null || a.value === undefined) return "";
  const digits = a.metric === "rr_interval" ? 3 : 0;
  return Number(a.value).toFixed(digits);
}

// -- sound ------------------------------------------------------------------------------------

function audioContext() {
  if (!state.audio) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return null;
    state.audio = new Ctx();
  }
  return state.audio;
}

function beep() {
  const ctx = audioContext();
  if (!ctx || ctx.state !== "running") return false;
  const t0 = ctx.currentTime;
  [0, 0.3, 0.6].forEach((dt, i) => {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = "square";
    osc.frequency.value = i === 1 ? 660 : 880;
    gain.gain.setValueAtTime(0.0001, t0 + dt);
    gain.gain.exponentialRampToValueAtTime(0.25, t0 + dt + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, t0 + dt + 0.22);
    osc.connect(gain).connect(ctx.destination);
    osc.start(t0 + dt);
    osc.stop(t0 + dt + 0.25);
  });
  return true;
}

function updateSoundButton() {
  const ctx = state.audio;
  const on = ctx && ctx.state === "running";
  const b = $("sound");
  b.textContent = on ? "Sound on" : "Sound OFF: click to turn on";
  b.className = on ? "sound-on" : "sound-off";
}

async function enableSound() {
  const ctx = audioContext();
  if (ctx) {
    await ctx.resume();
    beep();
  }
  updateSoundButton();
}

function cue(alert) {
  state.fresh.set(alert.alert_id, Date.now());
  document.body.classList.remove("flash");
  void document.body.offsetWidth;  // restart the animation
  document.body.classList.add("flash");
  beep();
}

function remind() {
  const now = Date.now();
  if (now - state.lastRemind < REMIND_MS) return;
  const waiting = [...state.alerts.values()].some((a) => a.active && a.severity === "critical");
  if (waiting) {
    state.lastRemind = now;
    beep();
  }
}

// -- events -----------------------------------------------------------------------------------

function isNewCritical(prev, next) {
  if (!next.active || next.severity !== "critical") return false;
  return !prev || !prev.active || RANK[prev.severity] < RANK.critical;
}

function onSnapshot(ev) {
  const snap = JSON.parse(ev.data);
  state.alerts.clear();
  for (const a of [...snap.active, ...snap.history]) state.alerts.set(a.alert_id, a);
  state.lastId = ev.lastEventId || snap.event_id;
  setBanner(snap.caught_up ? "" : "Catching up with the alert history…");
  render();
}

function onAlert(ev) {
  const a = JSON.parse(ev.data);
  const prev = state.alerts.get(a.alert_id);
  state.alerts.set(a.alert_id, a);
  if (ev.lastEventId) state.lastId = ev.lastEventId;
  if (!a.active) state.pendingAcks.delete(a.alert_id);
  if (isNewCritical(prev, a)) cue(a);
  render();
}

function onStatus(ev) {
  const s = JSON.parse(ev.data);
  setBanner(s.caught_up ? "" : "Catching up with the alert history…");
}

function setBanner(text) {
  const b = $("banner");
  b.textContent = text;
  b.hidden = !text;
}

function setConn(kind, text) {
  const c = $("conn");
  c.className = `conn conn-${kind}`;
  c.textContent = text;
}

function connect() {
  if (state.es) state.es.close();
  const url = "/api/events" + (state.lastId ? `?last=${encodeURIComponent(state.lastId)}` : "");
  const es = new EventSource(url);
  state.es = es;
  state.lastMessage = Date.now();
  es.addEventListener("snapshot", (e) => { state.lastMessage = Date.now(); onSnapshot(e); });
  es.addEventListener("alert", (e) => { state.lastMessage = Date.now(); onAlert(e); });
  es.addEventListener("status", (e) => { state.lastMessage = Date.now(); onStatus(e); });
  es.addEventListener("logout", () => { window.location.assign("/login"); });
  es.onmessage = () => { state.lastMessage = Date.now(); };
  es.onopen = () => { state.lastMessage = Date.now(); setConn("ok", "Live"); };
  es.onerror = () => {
    setConn("bad", "Connection lost, reconnecting…");
    if (es.readyState === EventSource.CLOSED) setTimeout(checkSessionThenConnect, 3000);
  };
}

async function checkSessionThenConnect() {
  try {
    const r = await fetch("/api/session", { credentials: "same-origin" });
    if (r.status === 401) { window.location.assign("/login"); return; }
  } catch (err) { /* server down: keep trying */ }
  connect();
}

function watchdog() {
  // A connection can die without an error (Wi-Fi roam, proxy): no heartbeat for 40 s → reconnect
  // with the last id, so nothing is missed.
  if (Date.now() - state.lastMessage > WATCHDOG_MS) {
    setConn("bad", "No contact, reconnecting…");
    connect();
  }
}

// -- acknowledging ----------------------------------------------------------------------------

async function acknowledge(alert, button, err) {
  const nurse = $("nurse");
  const by = nurse.value.trim();
  if (!by) {
    nurse.classList.add("needed");
    nurse.focus();
    err.textContent = "Type your name first (top of the page).";
    return;
  }
  localStorage.setItem("rpm.nurse", by);
  button.disabled = true;
  button.textContent = "Sending…";
  err.textContent = "";
  state.pendingAcks.set(alert.alert_id, true);
  try {
    const r = await fetch("/api/ack", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf },
      body: JSON.stringify({ alert_id: alert.alert_id, by }),
    });
    if (r.status === 401) { window.location.assign("/login"); return; }
    if (r.status !== 202) {
      const body = await r.json().catch(() => ({}));
      throw new Error(body.error || `server answered ${r.status}`);
    }
  } catch (e) {
    state.pendingAcks.delete(alert.alert_id);
    button.disabled = false;
    button.textContent = "Acknowledge";
    err.textContent = `Not acknowledged: ${e.message}`;
  }
}

// -- rendering --------------------------------------------------------------------------------

function sparkline(alert, holder) {
  const cached = state.sparks.get(alert.alert_id);
  if (cached && cached.svg) holder.innerHTML = cached.svg;
  if (cached && Date.now() - cached.at < SPARK_REFRESH_MS) return;
  state.sparks.set(alert.alert_id, { at: Date.now(), svg: cached ? cached.svg : "" });
  fetch(`/api/sparkline?alert_id=${encodeURIComponent(alert.alert_id)}`, { credentials: "same-origin" })
    .then((r) => (r.ok ? r.text() : ""))
    .then((svg) => {
      if (!svg.startsWith("<svg")) return;
      state.sparks.set(alert.alert_id, { at: Date.now(), svg });
      const live = document.querySelector(`[data-spark="${CSS.escape(alert.alert_id)}"]`);
      if (live) live.innerHTML = svg;
    })
    .catch(() => {});
}

function activeItem(a) {
  const li = el("li", `alert sev-${a.severity}`);
  li.dataset.alertId = a.alert_id;
  if (a.escalated) li.classList.add("escalated");
  const fresh = state.fresh.get(a.alert_id);
  if (fresh && Date.now() - fresh < 10000) li.classList.add("new");

  const sevBox = el("div");
  sevBox.append(el("span", "sev", a.severity.toUpperCase()));
  if (a.escalated) sevBox.append(el("span", "esc-tag", "ESCALATED"));

  const main = el("div");
  const who = el("div", "who", a.patient);
  const what = el("div", "what", ruleLabel(a.rule));
  const msg = el("div", "msg", a.message);
  const when = el("div", "when", `since ${clock(a.since)} (${ago(a.since)})` +
    (a.raised_at > a.since ? ` · raised ${clock(a.raised_at)}` : ""));
  main.append(who, what, msg, when);

  const mid = el("div", "right");
  const value = el("div", "value", formatValue(a));
  value.append(el("small", null, ` ${UNITS[a.metric] || ""}`));
  const spark = el("div", "sparkbox");
  spark.dataset.spark = a.alert_id;
  sparkline(a, spark);
  mid.append(value, spark);

  const right = el("div", "right");
  const pending = state.pendingAcks.has(a.alert_id);
  const button = el("button", "ack-btn", pending ? "Sending…" : "Acknowledge");
  button.type = "button";
  button.disabled = pending;
  const err = el("div", "ack-err");
  button.addEventListener("click", () => acknowledge(a, button, err));
  right.append(button, err);

  li.append(sevBox, main, mid, right);
  return li;
}

function historyRow(a) {
  const tr = el("tr");
  const last = a.state === "cleared" && a.cleared_at ? a.cleared_at : (a.ack ? a.ack.at : a.updated_at);
  tr.append(el("td", null, clock(last)), el("td", null, a.patient), el("td", null, ruleLabel(a.rule)));
  const sev = el("td");
  sev.append(el("span", `badge ${a.severity}`, a.severity));
  tr.append(sev, el("td", `st-${a.state}`, a.state));
  const ack = el("td");
  if (a.ack) {
    ack.append(document.createTextNode(`${a.ack.by} at ${clock(a.ack.at)} `));
    ack.append(el("span", a.ack.confirmed ? "muted" : "pending", a.ack.confirmed ? "(confirmed)" : "(sent)"));
  } else {
    ack.textContent = "—";
  }
  tr.append(ack);
  return tr;
}

function render() {
  const all = [...state.alerts.values()];
  const active = all.filter((a) => a.active)
    .sort((x, y) => (RANK[y.severity] - RANK[x.severity]) || (y.raised_at - x.raised_at));
  const history = all.filter((a) => !a.active).sort((x, y) => y.seq - x.seq).slice(0, 200);

  $("active").replaceChildren(...active.map(activeItem));
  $("active-count").textContent = String(active.length);
  $("active-empty").hidden = active.length > 0;
  $("history").querySelector("tbody").replaceChildren(...history.map(historyRow));
  $("history").hidden = history.length === 0;
  $("history-empty").hidden = history.length > 0;
  const critical = active.filter((a) => a.severity === "critical").length;
  document.title = critical ? `(${critical}) CRITICAL · Nurse station` : `(${active.length}) Nurse station`;
}

async function init() {
  const r = await fetch("/api/session", { credentials: "same-origin" });
  if (r.status === 401) { window.location.assign("/login"); return; }
  const s = await r.json();
  state.csrf = s.csrf;
  $("ward-name").textContent = s.ward_name;
  $("station-name").textContent = s.station_name;
  $("logout-csrf").value = s.csrf;
  const nurse = $("nurse");
  nurse.value = localStorage.getItem("rpm.nurse") || "";
  nurse.addEventListener("input", () => {
    nurse.classList.remove("needed");
    localStorage.setItem("rpm.nurse", nurse.value.trim());
  });
  $("sound").addEventListener("click", enableSound);
  audioContext();
  updateSoundButton();
  connect();
  setInterval(watchdog, 5000);
  setInterval(() => { render(); remind(); updateSoundButton(); }, 30000);
}

document.addEventListener("DOMContentLoaded", init);
