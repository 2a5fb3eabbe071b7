// Nurse station page: live alerts over Server-Sent Events, acknowledgements and silences over POST.
// Plain JS, no build step. Data is rendered with textContent only; the one innerHTML is the
// sparkline SVG that our own server draws from numbers.
//
// A screen that cannot go dark silently: losing the live connection, being logged out, or hearing
// nothing (not even a heartbeat) for longer than the server's deadline turns the whole page into
// a technical alarm with sound, checked twice a second.
"use strict";

const RANK = { info: 1, warning: 2, critical: 3 };
const UNITS = { heart_rate: "bpm", glucose: "mg/dL", rr_interval: "s" };
const SPARK_REFRESH_MS = 60000;
const REMIND_MS = 120000;        // repeat the tone while a critical or technical alarm waits
const DARK_TONE_MS = 2000;       // the tone of a dark screen repeats this often
const CHECK_MS = 500;
const SILENCE_CHOICES_MIN = [2, 5, 10, 15, 30, 60];
const RECHECK_CHOICES_MIN = [5, 10, 15, 30, 60];
const ACK_ACTIONS = ["", "15 g carbohydrate given", "Called patient", "Physician informed", "Checked device",
  "Visited patient"];

const OVERVIEW_REFRESH_MS = 15000;
const ARROWS = { "steady": "→", "up-slow": "↗", "up-fast": "↑", "up-very-fast": "⇈", "down-slow": "↘",
  "down-fast": "↓", "down-very-fast": "⇊", "unknown": "" };
const ARROW_WORDS = { "steady": "steady", "up-slow": "rising", "up-fast": "rising fast",
  "up-very-fast": "rising very fast", "down-slow": "falling", "down-fast": "falling fast",
  "down-very-fast": "falling very fast", "unknown": "trend unknown" };

const state = {
  overview: { patients: [], error: null, at: 0 }, detailPatient: null,
  alerts: new Map(), lastId: null, csrf: "", es: null, lastMessage: Date.now(), deadlineMs: 4000,
  audio: null, fresh: new Map(), sparks: new Map(), pendingAcks: new Map(), lastRemind: Date.now(),
  dark: null, darkTone: 0, beeps: 0, live: false, kiosk: false, nurses: false, nurse: null,
  choices: new Map(),  // alert id -> {action, recheck}: what a nurse picked survives re-renders
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

function dated(epochS) {
  const d = new Date(epochS * 1000);
  return `${d.toLocaleDateString([], { year: "numeric", month: "2-digit", day: "2-digit" })} ${clock(epochS)}`;
}

function ago(epochS) {
  const s = Math.max(0, Date.now() / 1000 - epochS);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${Math.round(s / 86400)} days`;
}

function ruleLabel(rule) {
  const t = rule.replace(/^tech\./, "").replace(/[._]/g, " ");
  return t.charAt(0).toUpperCase() + t.slice(1);
}

const MG_DL_PER_MMOL_L = 18.016;  // glucose: molar mass 180.16 g/mol over 10

function fmt(metric, v) {
  // Values arrive in mg/dL; a ward may show mmol/L (roster: glucose_unit).
  if (metric === "glucose" && UNITS.glucose === "mmol/L") return (Number(v) / MG_DL_PER_MMOL_L).toFixed(1);
  return Number(v).toFixed(metric === "rr_interval" ? 3 : 0);
}

function formatValue(a) {
  if (a.value === null || a.value === undefined) return "";
  return fmt(a.metric, a.value);
}

function silencedNow(a) {
  return Boolean(a.silenced && a.silenced.until && a.silenced.until * 1000 > Date.now());
}

// -- sound ------------------------------------------------------------------------------------

function audioContext() {
  if (!state.audio) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return null;
    state.audio = new Ctx();
    state.audio.onstatechange = updateSoundButton;
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
  state.beeps += 1;
  return true;
}

function soundWanted() {
  return localStorage.getItem("rpm.sound") === "on";
}

function updateSoundButton() {
  const ctx = state.audio;
  const on = Boolean(ctx && ctx.state === "running");
  const b = $("sound");
  b.textContent = on ? "Sound on" : "Sound OFF: click to turn on";
  b.className = on ? "sound-on" : "sound-off";
  // Wanted (turned on earlier on this screen) but the browser holds it: say so, loudly.
  $("sound-blocked").hidden = on || !soundWanted();
}

async function enableSound() {
  const ctx = audioContext();
  localStorage.setItem("rpm.sound", "on");
  if (ctx) {
    await ctx.resume();
    beep();
  }
  updateSoundButton();
}

async function resumeSound() {
  // Sound state persists on a kiosk: turned on once, it is turned on again at every load (a kiosk
  // browser runs with --autoplay-policy=no-user-gesture-required; elsewhere the first click does).
  const ctx = audioContext();
  if (ctx && soundWanted() && ctx.state !== "running") {
    try { await ctx.resume(); } catch (err) { /* blocked: the banner says so */ }
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

function needsSound(a) {
  return a.alarming && !silencedNow(a) && (a.kind === "technical" || a.severity === "critical" || a.realarm_count > 0);
}

function remind() {
  const now = Date.now();
  if (now - state.lastRemind < REMIND_MS) return;
  if ([...state.alerts.values()].some(needsSound)) {
    state.lastRemind = now;
    beep();
  }
}

// -- the dark screen (technical alarm of the station itself) ----------------------------------

function goDark(title, reason, remedy, login) {
  if (!state.dark || state.dark.title !== title) {
    state.dark = { title, since: Date.now() };
    state.darkTone = 0;
  }
  $("dark-title").textContent = title;
  $("dark-reason").textContent = reason;
  $("dark-remedy").textContent = remedy;
  $("dark-login").hidden = !login;
  $("dark").hidden = false;
  document.body.classList.add("is-dark");
  document.title = "TECHNICAL ALARM · Nurse station";
  darkTone();
}

function darkTone() {
  if (!state.dark) return;
  const now = Date.now();
  if (now - state.darkTone >= DARK_TONE_MS) {
    state.darkTone = now;
    beep();
  }
}

function clearDark() {
  if (!state.dark || state.dark.login) return;
  state.dark = null;
  $("dark").hidden = true;
  document.body.classList.remove("is-dark");
  render();
}

function loggedOut() {
  if (state.es) state.es.close();
  state.live = false;
  goDark("Logged out: this screen is not monitoring",
    "The station server no longer knows this screen (session ended, server restarted without a kiosk token, or the kiosk token was revoked).",
    "Log in again now. On the ward's wall screen, tick \u201cthis is the ward's wall screen\u201d so it stays logged in.", true);
  state.dark.login = true;
}

// -- events -----------------------------------------------------------------------------------

function startsAlarming(prev, next) {
  if (!next.alarming || silencedNow(next)) return false;
  if (next.kind === "technical") return !prev || !prev.alarming || Boolean(prev.silenced && !next.silenced);
  if (prev && prev.alarming && next.realarm_count > (prev.realarm_count || 0)) return true;
  if (!prev || !prev.alarming) return next.severity === "critical" || next.realarm_count > 0;
  if (prev.silenced && !next.silenced) return next.severity === "critical" || next.kind === "technical";  // silence ended
  return RANK[prev.severity] < RANK.critical && next.severity === "critical";
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
  if (!a.alarming) { state.pendingAcks.delete(a.alert_id); state.choices.delete(a.alert_id); }
  if (startsAlarming(prev, a)) cue(a);
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

function heard() {
  // Something arrived on the live stream: contact is back (a stream that stalled and resumed
  // never fires "open" again, so this is where a "no contact" alarm ends).
  state.lastMessage = Date.now();
  if (state.dark && !state.dark.login && state.es && state.es.readyState === EventSource.OPEN) {
    state.live = true;
    setConn("ok", "Live");
    clearDark();
  }
}

function connect() {
  if (state.es) state.es.close();
  const url = "/api/events" + (state.lastId ? `?last=${encodeURIComponent(state.lastId)}` : "");
  const es = new EventSource(url);
  state.es = es;
  state.lastMessage = Date.now();  // the deadline starts again for the new connection
  es.addEventListener("snapshot", (e) => { heard(); onSnapshot(e); });
  es.addEventListener("alert", (e) => { heard(); onAlert(e); });
  es.addEventListener("status", (e) => { heard(); onStatus(e); });
  es.addEventListener("ping", () => { heard(); });
  es.addEventListener("logout", () => { loggedOut(); });
  es.onmessage = () => { heard(); };
  es.onopen = () => {
    heard();
    state.live = true;
    setConn("ok", "Live");
    refreshSession();  // a restarted server hands out a new CSRF token (kiosk sessions are re-made)
    clearDark();
  };
  es.onerror = () => {
    if (state.dark && state.dark.login) return;
    state.live = false;
    setConn("bad", "Connection lost, reconnecting…");
    goDark("Connection to the station server lost",
      "This screen receives no alerts until the connection is back. It reconnects by itself.",
      "Watch patients another way (another station, rounds) and call technical support if this stays.", false);
    if (es.readyState === EventSource.CLOSED) setTimeout(checkSessionThenConnect, 2000);
  };
}

async function refreshSession() {
  try {
    const r = await fetch("/api/session", { credentials: "same-origin" });
    if (r.status === 401) { loggedOut(); return false; }
    if (r.ok) {
      const s = await r.json();
      state.csrf = s.csrf;
      state.kiosk = s.kiosk;
      state.deadlineMs = s.heartbeat_deadline_s * 1000;
      $("logout-csrf").value = s.csrf;
      if (s.nurses) setNurse(s.nurse);
    }
  } catch (err) { /* server down: the dark screen says so */ }
  return true;
}

async function checkSessionThenConnect() {
  if (await refreshSession()) connect();
}

function watchdog() {
  // A connection can die without an error (Wi-Fi roam, proxy, a stopped server host): nothing
  // heard, not even the heartbeat, for longer than the deadline → the whole screen alarms and the
  // page reconnects with the last id, so nothing is missed once it is back.
  const silentMs = Date.now() - state.lastMessage;
  if (!(state.dark && state.dark.login) && silentMs > state.deadlineMs) {
    state.live = false;
    if (!state.dark) {  // already dark (connection lost): keep that cause on the screen
      setConn("bad", "No contact, reconnecting…");
      goDark("No contact with the station server",
        `Nothing received for ${Math.round(silentMs / 1000)} s (the server sends a heartbeat every few seconds).`,
        "Watch patients another way (another station, rounds) and call technical support if this stays.", false);
    }
    if (silentMs > state.deadlineMs + 4000) connect();
  }
  darkTone();
}

// -- acknowledging and silencing --------------------------------------------------------------

function nurseName(err) {
  if (state.nurses) return state.nurse ? state.nurse.name : "(signed-in nurse)";  // the server decides
  const nurse = $("nurse");
  const by = nurse.value.trim();
  if (!by) {
    nurse.classList.add("needed");
    nurse.focus();
    err.textContent = "Type your name first (top of the page).";
    return null;
  }
  localStorage.setItem("rpm.nurse", by);
  return by;
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf },
    body: JSON.stringify(body),
  });
  if (r.status === 401) { loggedOut(); throw new Error("logged out"); }
  if (r.status === 403 && state.nurses) {
    const body = await r.clone().json().catch(() => ({}));
    if (body.need_nurse) { setNurse(null); openSignIn(); throw new Error("sign in with your badge and PIN first"); }
  }
  return r;
}

async function acknowledge(alert, button, err, noteOf, recheckOf) {
  const by = nurseName(err);
  if (!by) return;
  button.disabled = true;
  button.textContent = "Sending…";
  err.textContent = "";
  state.pendingAcks.set(alert.alert_id, true);
  try {
    const body = { alert_id: alert.alert_id, by, note: noteOf() };
    const recheck = recheckOf();
    if (recheck) body.recheck_min = recheck;
    const r = await post("/api/ack", body);
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

async function silence(alert, minutes, err) {
  const by = nurseName(err);
  if (!by) return;
  err.textContent = "";
  try {
    const r = await post("/api/silence", { alert_id: alert.alert_id, minutes, by });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || `server answered ${r.status}`);
    state.alerts.set(body.alert_id, body);
    render();
  } catch (e) {
    err.textContent = `Not silenced: ${e.message}`;
  }
}

function silenceControls(a, err) {
  const box = el("div", "silence");
  if (silencedNow(a)) {
    box.append(el("span", "silenced-tag", `Silenced until ${clock(a.silenced.until)} (${a.silenced.by})`));
    const b = el("button", "ghost small-btn", "Sound again");
    b.type = "button";
    b.addEventListener("click", () => silence(a, 0, err));
    box.append(b);
    return box;
  }
  const pick = el("select", "silence-pick");
  pick.setAttribute("aria-label", "Silence for");
  pick.append(el("option", null, "Silence…"));
  pick.options[0].value = "";
  for (const m of SILENCE_CHOICES_MIN) {
    if (m * 60 > a.silence_max_s) continue;
    const o = el("option", null, `${m} min`);
    o.value = String(m);
    pick.append(o);
  }
  pick.addEventListener("change", () => { if (pick.value) silence(a, Number(pick.value), err); });
  box.append(pick);
  return box;
}

// -- nurses signing in (roster nurses: badge number and PIN) -----------------------------------

function setNurse(nurse) {
  state.nurse = nurse;
  $("nurse-name").textContent = nurse ? nurse.name : "nobody signed in";
  $("switch-nurse").textContent = nurse ? "Switch nurse" : "Sign in";
}

function openSignIn() {
  $("signin-error").textContent = "";
  $("badge").value = "";
  $("pin").value = "";
  const d = $("signin");
  if (!d.open) d.showModal();
  $("badge").focus();
}

async function signIn(ev) {
  ev.preventDefault();
  try {
    const r = await post("/api/nurse", { nurse: $("badge").value.trim(), pin: $("pin").value });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || `server answered ${r.status}`);
    setNurse(body.nurse);
    $("signin").close();
  } catch (e) {
    $("pin").value = "";
    $("signin-error").textContent = e.message;
  }
}

// -- ward overview and patient detail ---------------------------------------------------------

async function loadOverview() {
  try {
    const r = await fetch("/api/overview", { credentials: "same-origin" });
    if (r.status === 401) { loggedOut(); return; }
    if (!r.ok) return;
    const body = await r.json();
    state.overview = { patients: body.patients, error: body.error, at: Date.now() };
    render();  // tiles and the alarm cards' current values
  } catch (err) { /* the dark screen tells about a lost server */ }
}

function patientAlerts(patient) {
  return [...state.alerts.values()].filter((a) => a.patient === patient && a.kind !== "technical");
}

function topAlarm(patient) {
  const open = patientAlerts(patient).filter((a) => a.open).sort(byScreenOrder);
  return open.length ? open[0] : null;
}

function cellAge(cell) {
  return cell ? ago(cell.time) : "no data";
}

function tileValue(cell, metric) {
  const box = el("div");
  const v = el("div", "tile-val");
  v.dataset.metric = metric;
  if (cell) {
    v.append(document.createTextNode(fmt(metric, cell.value)));
    v.append(el("small", null, ` ${UNITS[metric]}`));
    const arrow = el("span", "arrow", ARROWS[cell.trend] || "");
    arrow.title = ARROW_WORDS[cell.trend] || "";
    arrow.setAttribute("aria-label", ARROW_WORDS[cell.trend] || "");
    v.append(arrow);
    if (cell.stale) v.classList.add("is-stale");
  } else {
    v.append(document.createTextNode("—"));
    v.append(el("small", null, ` ${UNITS[metric]}`));
  }
  const age = el("div", "tile-age", cell ? `${cell.stale ? "STALE · " : ""}${cellAge(cell)} ago` : "no data 24 h");
  if (cell && cell.stale) age.classList.add("is-stale");
  box.append(v, age);
  return box;
}

function deviceTrouble(patient) {
  // Open technical alarms about this patient's devices (battery, sensor, connection).
  return [...state.alerts.values()].filter((a) => a.open && a.kind === "technical" && a.patient === patient);
}

function tileRank(p) {
  const top = topAlarm(p.patient);
  const noData = !p.heart_rate && !p.glucose ? true : [p.heart_rate, p.glucose].filter(Boolean).every((c) => c.stale);
  return { top, stale: noData || deviceTrouble(p.patient).length > 0 };
}

function byTileOrder(x, y) {
  const a = tileRank(x), b = tileRank(y);
  if (a.top && b.top) return byScreenOrder(a.top, b.top);
  if (a.top || b.top) return a.top ? -1 : 1;
  if (a.stale !== b.stale) return a.stale ? -1 : 1;
  return x.patient < y.patient ? -1 : 1;
}

function tile(p) {
  const { top, stale } = tileRank(p);
  const li = el("li", "tile");
  li.dataset.patient = p.patient;
  li.tabIndex = 0;
  if (top) li.classList.add(`sev-${top.severity}`);
  if (top && !top.alarming) li.classList.add("acked");
  if (stale && !top) li.classList.add("stale");
  const head = el("div", "tile-head");
  const who = el("span", "tile-id", p.bed ? `${p.bed} · ${p.patient}` : p.patient);
  head.append(who);
  if (top) head.append(el("span", "tile-alarm", `${top.alarming ? "" : "ACK · "}${ruleLabel(top.rule)}`));
  const vals = el("div", "tile-vals");
  vals.append(tileValue(p.heart_rate, "heart_rate"), tileValue(p.glucose, "glucose"));
  li.append(head);
  if (p.name) li.append(el("div", "tile-name", p.name));
  li.append(vals);
  for (const t of deviceTrouble(p.patient)) li.append(el("div", "tile-tech", `⚠ ${ruleLabel(t.rule)}`));
  if (p.device) {
    const b = p.device.battery_pct;
    const dev = el("div", "tile-dev", `device ${p.device.state || ""}${b !== null && b !== undefined ? ` · battery ${b}%` : ""}`);
    if (b !== null && b !== undefined && b < 20) dev.classList.add("low");
    li.append(dev);
  }
  li.addEventListener("click", () => openDetail(p.patient));
  li.addEventListener("keydown", (e) => { if (e.key === "Enter") openDetail(p.patient); });
  return li;
}

function renderOverview() {
  // A patient whose alarm arrived since the last overview load gets a tile at once (values follow).
  const known = new Set(state.overview.patients.map((p) => p.patient));
  const extra = [...new Set([...state.alerts.values()]
    .filter((a) => a.open && a.patient && a.kind !== "technical" && !known.has(a.patient)).map((a) => a.patient))]
    .map((patient) => ({ patient }));
  const tiles = [...state.overview.patients, ...extra].sort(byTileOrder);
  $("overview").replaceChildren(...tiles.map(tile));
  $("overview-count").textContent = String(tiles.length);
  const err = $("overview-error");
  err.textContent = state.overview.error ? `Current values unavailable: ${state.overview.error}` : "";
  err.hidden = !state.overview.error;
}

function loadTrend(patient, metric, holder) {
  fetch(`/api/trend?patient=${encodeURIComponent(patient)}&metric=${metric}`, { credentials: "same-origin" })
    .then((r) => (r.ok ? r.text() : ""))
    .then((svg) => { if (svg.startsWith("<svg") && state.detailPatient === patient) holder.innerHTML = svg; })
    .catch(() => {});
}

function openDetail(patient) {
  state.detailPatient = patient;
  $("detail-h").textContent = patient;
  $("detail-hr").replaceChildren();
  $("detail-glucose").replaceChildren();
  loadTrend(patient, "heart_rate", $("detail-hr"));
  loadTrend(patient, "glucose", $("detail-glucose"));
  renderDetail();
  const d = $("detail");
  if (!d.open) d.showModal();
}

function renderDetail() {
  const patient = state.detailPatient;
  if (!patient) return;
  const rows = patientAlerts(patient).sort((x, y) => y.raised_at - x.raised_at).map((a) => {
    const tr = el("tr");
    const sev = el("td");
    sev.append(el("span", `badge ${a.severity}`, a.severity));
    tr.append(el("td", null, dated(a.raised_at)), el("td", null, ruleLabel(a.rule)), sev,
      el("td", null, a.state), el("td", null, a.ack ? `${a.ack.by} at ${dated(a.ack.at)}${a.ack.note ? ` · ${a.ack.note}` : ""}` : "—"),
      el("td", null, a.cleared_at ? dated(a.cleared_at) : "open"));
    return tr;
  });
  $("detail-alerts").querySelector("tbody").replaceChildren(...rows);
  $("detail-empty").hidden = rows.length > 0;
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

function ackLine(a) {
  const line = el("div", "ack-line");
  line.append(el("span", "ack-tag", "ACKNOWLEDGED"));
  let text = ` by ${a.ack.by} at ${clock(a.ack.at)}`;
  if (a.ack.station) text += ` (${a.ack.station})`;
  if (a.ack.note) text += ` · ${a.ack.note}`;
  line.append(document.createTextNode(text + " "));
  line.append(el("span", a.ack.confirmed ? "muted" : "pending", a.ack.confirmed ? "(confirmed)" : "(sent)"));
  if (a.ack.recheck_at && a.ack.recheck_at === a.ack.realarm_at) {
    line.append(el("span", "recheck", ` · recheck at ${clock(a.ack.recheck_at)}: alarms then if not cleared`));
  } else if (a.ack.realarm_at) {
    line.append(el("span", "muted", ` · alarms again at ${clock(a.ack.realarm_at)} if not cleared`));
  }
  return line;
}

function ackControls(a, err) {
  const box = el("div", "ack-box");
  const pending = state.pendingAcks.has(a.alert_id);
  const action = el("select", "ack-action");
  action.setAttribute("aria-label", "Action taken");
  for (const t of ACK_ACTIONS) {
    const o = el("option", null, t || "Action taken…");
    o.value = t;
    action.append(o);
  }
  const recheck = el("select", "ack-recheck");
  recheck.setAttribute("aria-label", "Recheck in");
  recheck.append(el("option", null, "No recheck timer"));
  recheck.options[0].value = "";
  for (const m of RECHECK_CHOICES_MIN) {
    const o = el("option", null, `Recheck in ${m} min`);
    o.value = String(m);
    recheck.append(o);
  }
  // The page re-renders on every event and every 15 s: keep what the nurse already picked.
  const picked = state.choices.get(a.alert_id) || { action: "", recheck: "" };
  action.value = picked.action;
  recheck.value = picked.recheck;
  const remember = () => state.choices.set(a.alert_id, { action: action.value, recheck: recheck.value });
  action.addEventListener("change", remember);
  recheck.addEventListener("change", remember);
  const button = el("button", "ack-btn", pending ? "Sending…" : "Acknowledge");
  button.type = "button";
  button.disabled = pending;
  button.addEventListener("click", () => acknowledge(a, button, err, () => action.value,
    () => (recheck.value ? Number(recheck.value) : null)));
  box.append(action, recheck, button);
  return box;
}

function currentLine(a) {
  // The latest reading of the alert's metric (ward overview), beside the value at alarm.
  const p = state.overview.patients.find((x) => x.patient === a.patient);
  const cell = p ? p[a.metric] : null;
  const line = el("div", "now-value");
  if (cell) {
    line.textContent = `now ${fmt(a.metric, cell.value)} ${UNITS[a.metric] || ""} ${ARROWS[cell.trend] || ""}`.trim() +
      ` · ${ago(cell.time)} ago${cell.stale ? " · STALE" : ""}`;
    if (cell.stale) line.classList.add("is-stale");
  }
  return line;
}

function activeItem(a) {
  const li = el("li", `alert sev-${a.severity}`);
  li.dataset.alertId = a.alert_id;
  if (a.escalated && a.alarming) li.classList.add("escalated");
  if (!a.alarming) li.classList.add("acked");
  if (a.realarm_count > 0 && a.alarming) li.classList.add("realarmed");
  const fresh = state.fresh.get(a.alert_id);
  if (fresh && Date.now() - fresh < 10000) li.classList.add("new");

  const sevBox = el("div");
  sevBox.append(el("span", "sev", a.severity.toUpperCase()));
  if (a.escalated && a.alarming) sevBox.append(el("span", "esc-tag", "ESCALATED"));
  if (a.realarm_count > 0 && a.alarming) sevBox.append(el("span", "esc-tag realarm-tag", "ALARMS AGAIN"));

  const main = el("div");
  const who = el("div", "who", a.patient);
  const what = el("div", "what", ruleLabel(a.rule));
  const msg = el("div", "msg", a.message);
  const when = el("div", "when", `since ${clock(a.since)} (${ago(a.since)})` +
    (a.raised_at > a.since ? ` · raised ${clock(a.raised_at)}` : "") +
    (a.realarmed_at && a.alarming ? ` · alarmed again ${clock(a.realarmed_at)}` : ""));
  main.append(who, what, msg, when);
  if (a.ack) main.append(ackLine(a));

  const mid = el("div", "right");
  const value = el("div", "value", formatValue(a));
  value.append(el("small", null, ` ${UNITS[a.metric] || ""}`));
  const atAlarm = el("div", "value-label", a.value === null || a.value === undefined ? "" : "at alarm");
  const spark = el("div", "sparkbox");
  spark.dataset.spark = a.alert_id;
  sparkline(a, spark);
  mid.append(value, atAlarm, currentLine(a), spark);

  const right = el("div", "right");
  const err = el("div", "ack-err");
  if (a.alarming) right.append(ackControls(a, err));
  right.append(silenceControls(a, err), err);

  li.append(sevBox, main, mid, right);
  return li;
}

function techItem(a) {
  const li = el("li", `tech-item sev-${a.severity}`);
  li.dataset.alertId = a.alert_id;
  if (silencedNow(a)) li.classList.add("is-silenced");
  const head = el("div", "tech-head");
  head.append(el("span", "tech-tag", "TECHNICAL"), el("span", "sev", a.severity.toUpperCase()));
  const main = el("div");
  const title = el("div", "tech-title", ruleLabel(a.rule) + (a.patient ? ` · ${a.patient}` : ""));
  main.append(title, el("div", "tech-cause", a.message));
  if (a.remedy) main.append(el("div", "tech-remedy", `What to do: ${a.remedy}`));
  main.append(el("div", "when", `${a.component ? a.component + " · " : ""}since ${clock(a.since)} (${ago(a.since)})`));
  const right = el("div", "right");
  const err = el("div", "ack-err");
  right.append(silenceControls(a, err), err);
  li.append(head, main, right);
  return li;
}

function historyRow(a) {
  const tr = el("tr");
  tr.dataset.alertId = a.alert_id;
  const last = a.cleared_at || a.updated_at;
  tr.append(el("td", null, dated(last)), el("td", null, dated(a.raised_at)), el("td", null, a.patient || "—"),
    el("td", null, ruleLabel(a.rule)));
  const sev = el("td");
  sev.append(el("span", `badge ${a.severity}`, a.severity));
  tr.append(sev);
  const ack = el("td");
  if (a.ack) {
    ack.append(document.createTextNode(`${a.ack.by} at ${clock(a.ack.at)} `));
    if (a.ack.note) ack.append(el("span", "muted", `${a.ack.note} `));
    ack.append(el("span", a.ack.confirmed ? "muted" : "pending", a.ack.confirmed ? "(confirmed)" : "(sent)"));
  } else {
    ack.textContent = "—";
  }
  tr.append(ack);
  return tr;
}

function byScreenOrder(x, y) {
  return (Number(y.alarming) - Number(x.alarming)) || (RANK[y.severity] - RANK[x.severity]) ||
    (Number(y.escalated) - Number(x.escalated)) || (y.last_alarm - x.last_alarm);
}

function render() {
  const all = [...state.alerts.values()];
  const tech = all.filter((a) => a.open && a.kind === "technical").sort(byScreenOrder);
  const active = all.filter((a) => a.open && a.kind !== "technical").sort(byScreenOrder);
  const history = all.filter((a) => !a.open).sort((x, y) => y.seq - x.seq).slice(0, 200);

  $("tech").replaceChildren(...tech.map(techItem));
  $("tech-count").textContent = String(tech.length);
  $("tech-band").hidden = tech.length === 0;
  $("active").replaceChildren(...active.map(activeItem));
  $("active-count").textContent = String(active.length);
  $("active-empty").hidden = active.length > 0;
  $("history").querySelector("tbody").replaceChildren(...history.map(historyRow));
  $("history").hidden = history.length === 0;
  $("history-empty").hidden = history.length > 0;
  renderOverview();
  renderDetail();
  if (state.dark) return;
  const critical = active.filter((a) => a.alarming && a.severity === "critical").length;
  const alarming = active.filter((a) => a.alarming).length;
  document.title = tech.length ? `(${tech.length}) TECHNICAL · Nurse station`
    : critical ? `(${critical}) CRITICAL · Nurse station` : `(${alarming}) Nurse station`;
}

async function init() {
  const r = await fetch("/api/session", { credentials: "same-origin" });
  if (r.status === 401) { window.location.assign("/login"); return; }
  const s = await r.json();
  state.csrf = s.csrf;
  state.kiosk = s.kiosk;
  state.deadlineMs = s.heartbeat_deadline_s * 1000;
  $("ward-name").textContent = s.ward_name;
  UNITS.glucose = s.glucose_unit || "mg/dL";
  state.nurses = s.nurses;
  $("typed-name").hidden = s.nurses;
  $("signed-in").hidden = !s.nurses;
  if (s.nurses) setNurse(s.nurse);
  $("switch-nurse").addEventListener("click", (e) => { e.stopPropagation(); openSignIn(); });
  $("signin-form").addEventListener("submit", signIn);
  $("signin-cancel").addEventListener("click", () => $("signin").close());
  $("station-name").textContent = s.station_name + (s.kiosk ? " · kiosk" : "");
  $("logout-csrf").value = s.csrf;
  const nurse = $("nurse");
  nurse.value = localStorage.getItem("rpm.nurse") || "";
  nurse.addEventListener("input", () => {
    nurse.classList.remove("needed");
    localStorage.setItem("rpm.nurse", nurse.value.trim());
  });
  $("sound").addEventListener("click", (e) => { e.stopPropagation(); enableSound(); });
  document.addEventListener("click", () => { if (soundWanted()) resumeSound(); });
  audioContext();
  resumeSound();  // not awaited: a browser that blocks autoplay never settles resume() before a click
  updateSoundButton();
  connect();
  loadOverview();
  setInterval(loadOverview, OVERVIEW_REFRESH_MS);
  $("detail-close").addEventListener("click", () => { state.detailPatient = null; $("detail").close(); });
  $("detail").addEventListener("close", () => { state.detailPatient = null; });
  setInterval(watchdog, CHECK_MS);
  setInterval(() => { render(); remind(); updateSoundButton(); }, 30000);
}

document.addEventListener("DOMContentLoaded", init);
