// The sagaflow operator console: one page, no libraries, no build step.
// It speaks only the public API (the same tokens and roles as any client)
// and builds the page with DOM calls, never from HTML text, so nothing an
// instance holds can run as script here.

const TOKEN_KEY = "sagaflow.token";
const STATUSES = ["running", "waiting", "compensating", "completed", "compensated", "failed", "cancelled"];
const ENDED = new Set(["completed", "compensated", "failed", "cancelled"]);

const S = {
  token: sessionStorage.getItem(TOKEN_KEY),
  me: null,
  // work to stop when the view changes (change streams, long polls, timers)
  view: new AbortController(),
};

// ---------------------------------------------------------------- helpers

function h(tag, attrs, ...children) {
  const el = document.createElementNS(
    ["svg", "g", "rect", "path", "text", "title", "line", "circle", "defs", "marker", "polygon", "tspan"].includes(tag)
      ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Replaces an element's children, skipping the absent ones (the DOM's own
// replaceChildren would write `null` as text).
function put(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

const may = (what) => !!S.me && S.me.may.includes(what);
const json = (v) => JSON.stringify(v, null, 2);
// The random end of an id (its start is a time, the same for instances started together).
const shortId = (id) => `…${id.slice(-12)}`;

function fmtTime(t) {
  if (!t) return "";
  const d = new Date(t);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function fmtMs(ms) {
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms.toFixed(0)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${(ms / 60000).toFixed(1)} min`;
}

function badge(status) {
  return h("span", { class: `badge st-${status}`, "data-status": status }, status);
}

function notice(text, kind = "error") {
  const n = document.getElementById("notice");
  put(n, h("span", {}, text), h("button", { class: "link", onclick: () => { n.hidden = true; } }, "×"));
  n.className = kind;
  n.hidden = false;
  clearTimeout(n.timer);
  if (kind === "ok") n.timer = setTimeout(() => { n.hidden = true; }, 5000);
}

class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? `${problem.title}: ${problem.detail}` : `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(path, { method = "GET", body, type = "application/json", signal, raw = false } = {}) {
  const headers = { Authorization: `Bearer ${S.token}` };
  if (body !== undefined) headers["Content-Type"] = type;
  const res = await fetch(path, {
    method, headers, signal,
    body: body === undefined ? undefined : (type === "application/json" ? JSON.stringify(body) : body),
  });
  if (res.status === 401) {
    signOut("The token was refused; sign in again.");
    throw new ApiError(401, null);
  }
  const text = await res.text();
  if (!res.ok) {
    let problem = null;
    try { problem = JSON.parse(text); } catch (_) { /* not problem+json */ }
    throw new ApiError(res.status, problem);
  }
  if (raw) return text;
  return text ? JSON.parse(text) : null;
}

// Runs `f`, showing a failure in the notice bar instead of losing it.
async function attempt(f) {
  try {
    return await f();
  } catch (e) {
    if (e.name !== "AbortError" && !(e instanceof ApiError && e.status === 401)) notice(e.message);
    return undefined;
  }
}

// Calls `onChange` whenever the server's change stream (GET /changes,
// server-sent events) says the log moved, until the view changes.
function watchChanges(onChange) {
  const signal = S.view.signal;
  (async () => {
    while (!signal.aborted) {
      try {
        const res = await fetch("/changes", { headers: { Authorization: `Bearer ${S.token}` }, signal });
        if (!res.ok) return;
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buf = "";
        let first = true;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const frame = buf.slice(0, i);
            buf = buf.slice(i + 2);
            if (/^event: change/m.test(frame)) {
              if (first) first = false; // the first event only says where the log stands
              else onChange();
            }
          }
        }
      } catch (e) {
        if (signal.aborted) return;
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
}

// ---------------------------------------------------------------- sign-in

function signOut(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  S.token = null;
  S.me = null;
  route(why);
}

function signInView(why) {
  const input = h("input", { id: "signin-token", type: "password", autocomplete: "off", placeholder: "sf_…", size: 60 });
  const msg = h("p", { class: "error", id: "signin-error" }, why || "");
  const form = h("form", {
    class: "card narrow",
    onsubmit: async (ev) => {
      ev.preventDefault();
      S.token = input.value.trim();
      try {
        S.me = await api("/me");
        sessionStorage.setItem(TOKEN_KEY, S.token);
        if (location.hash === "" || location.hash === "#/signin") location.hash = "#/instances";
        else route();
      } catch (e) {
        S.token = null;
        msg.textContent = e.status === 401 || e.status === undefined ? "That token is not valid." : e.message;
      }
    },
  },
  h("h1", {}, "Sign in"),
  h("p", {}, "Paste an API token. `sagaflow serve` prints an admin token at start; an admin issues others (POST /tokens). The token is kept for this tab only."),
  input, " ", h("button", { id: "signin-submit", type: "submit" }, "Sign in"), msg);
  return form;
}

// ---------------------------------------------------------------- router

const routes = [
  [/^#\/instances\/([0-9a-f-]{36})$/, (m) => instanceView(m[1])],
  [/^#\/instances(?:\?(.*))?$/, (m) => instancesView(new URLSearchParams(m[1] || ""))],
  [/^#\/workflows\/([^/?]+)$/, (m) => workflowView(decodeURIComponent(m[1]))],
  [/^#\/workflows$/, () => workflowsView()],
  [/^#\/overview$/, () => overviewView()],
];

async function route(why) {
  document.getElementById("notice").hidden = true;
  S.view.abort();
  S.view = new AbortController();
  const main = document.getElementById("main");
  renderNav();
  if (!S.token) {
    put(main, signInView(why));
    return;
  }
  if (!S.me) {
    try {
      S.me = await api("/me");
    } catch (e) {
      if (S.token) put(main, h("p", { class: "error" }, e.message));
      return;
    }
    renderNav();
  }
  if (!may("read")) {
    put(main, h("p", { class: "card" },
      `A ${S.me.role} token may not read instances or workflows; sign in with an admin, operator or client token.`,
      " ", h("button", { onclick: () => signOut() }, "Sign out")));
    return;
  }
  const hash = location.hash || "#/instances";
  for (const [re, view] of routes) {
    const m = hash.match(re);
    if (m) {
      put(main, h("p", { class: "muted" }, "Loading…"));
      const node = await attempt(() => view(m));
      if (node) put(main, node);
      return;
    }
  }
  put(main, h("p", {}, "No such page. ", h("a", { href: "#/instances" }, "Instances")));
}

function renderNav() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  if (!S.me) {
    put(nav);
    put(who);
    return;
  }
  const link = (href, text) => h("a", { href, class: (location.hash || "#/instances").startsWith(href) ? "active" : "" }, text);
  put(nav,
    link("#/instances", "Instances"),
    link("#/workflows", "Workflows"),
    may("observe") ? link("#/overview", "Overview") : null,
    h("a", { href: "/docs" }, "API"),
  );
  put(who, h("span", { class: "muted" }, `${S.me.role}`), " ",
    h("button", {
      id: "signout",
      class: "link",
      onclick: () => {
        // the next person starts from the list, not from this token's page
        history.replaceState(null, "", "#/instances");
        signOut();
      },
    }, "Sign out"));
}

window.addEventListener("hashchange", () => route());
window.addEventListener("DOMContentLoaded", () => route());

// ---------------------------------------------------------------- instances

async function instancesView(params) {
  const workflows = await api("/workflows");
  const filter = {
    workflow: params.get("workflow") || "",
    status: params.get("status") || "",
    started_from: params.get("started_from") || "",
    started_until: params.get("started_until") || "",
    input_field: params.get("input_field") || "",
  };
  const cursors = [""]; // the cursor of each page shown so far
  const table = h("tbody", { id: "instances" });
  const pager = h("div", { class: "pager" });
  const stamp = h("span", { class: "muted", id: "instances-refreshed" });

  const toLocal = (t) => (t ? t.replace(/Z$/, "").slice(0, 16) : "");
  const fromLocal = (t) => (t ? `${t}:00Z` : "");
  const wf = h("select", { name: "workflow" }, h("option", { value: "" }, "any workflow"),
    workflows.map((w) => h("option", { value: w.name, selected: w.name === filter.workflow }, w.name)));
  const st = h("select", { name: "status" }, h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === filter.status }, s)));
  const from = h("input", { type: "datetime-local", name: "started_from", value: toLocal(filter.started_from) });
  const until = h("input", { type: "datetime-local", name: "started_until", value: toLocal(filter.started_until) });
  const field = h("input", { name: "input_field", placeholder: "customer_id=c-42", value: filter.input_field, size: 22 });
  const form = h("form", {
    class: "filters",
    onsubmit: (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      if (wf.value) q.set("workflow", wf.value);
      if (st.value) q.set("status", st.value);
      if (from.value) q.set("started_from", fromLocal(from.value));
      if (until.value) q.set("started_until", fromLocal(until.value));
      if (field.value.trim()) q.set("input_field", field.value.trim());
      location.hash = `#/instances${q.toString() ? "?" + q : ""}`;
    },
  }, wf, st, h("label", {}, "started from ", from), h("label", {}, "until ", until), field,
  h("button", { type: "submit", id: "filter-apply" }, "Filter"));

  async function load() {
    const q = new URLSearchParams({ limit: "25" });
    for (const [k, v] of Object.entries(filter)) if (v) q.set(k, v);
    const cursor = cursors[cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    const page = await api(`/instances?${q}`, { signal: S.view.signal });
    put(table, ...page.items.map((i) => h("tr", { "data-id": i.id },
      h("td", {}, h("a", { href: `#/instances/${i.id}`, class: "mono", title: i.id }, shortId(i.id))),
      h("td", {}, h("a", { href: `#/workflows/${encodeURIComponent(i.workflow)}` }, i.workflow), ` v${i.version}`),
      h("td", {}, badge(i.status), i.paused ? h("span", { class: "badge paused" }, "paused") : null),
      h("td", {}, i.current_step || ""),
      h("td", { class: "num" }, i.attempt || ""),
      h("td", {}, fmtTime(i.started_at)),
      h("td", {}, fmtTime(i.updated_at)),
      h("td", { class: "error-text" }, i.error || ""),
    )));
    if (page.items.length === 0) put(table, h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No instance matches.")));
    put(pager, 
      cursors.length > 1 ? h("button", { onclick: () => { cursors.pop(); attempt(load); } }, "← Newer") : null,
      page.next_cursor ? h("button", { id: "next-page", onclick: () => { cursors.push(page.next_cursor); attempt(load); } }, "Older →") : null,
    );
    stamp.textContent = `refreshed ${new Date().toLocaleTimeString()}`;
  }
  await load();
  let pending = null;
  watchChanges(() => {
    if (pending) return;
    pending = setTimeout(() => { pending = null; attempt(load); }, 300);
  });
  return h("section", {},
    h("div", { class: "row" }, h("h1", {}, "Instances"), stamp),
    form,
    h("table", { class: "list", id: "instances-table" },
      h("thead", {}, h("tr", {}, ["id", "workflow", "status", "step", "attempt", "started", "updated", "error"].map((c) => h("th", {}, c)))),
      table),
    pager);
}

// ---------------------------------------------------------------- one instance

// The state each event of a history puts the saga in, in order: the path taken.
function pathOf(events, graph) {
  const ids = new Set(graph.states.map((s) => s.id));
  const forward = (i) => (ids.has(`run_${i}`) ? `run_${i}` : `wait_${i}`);
  const seq = [];
  const push = (id, kind) => {
    if (!ids.has(id)) return;
    if (seq.length && seq[seq.length - 1].id === id) return;
    seq.push({ id, kind });
  };
  for (const e of events) {
    const d = e.data || {};
    switch (e.event_type) {
      case "StepStarted":
      case "BranchesStarted":
      case "ElementsListed":
        if (d.phase === "compensation") push(`undo_${d.step}`, "compensation");
        else push(forward(d.step), "forward");
        break;
      case "StepSkipped": push(forward(d.step), "skipped"); break;
      case "SagaCompleted": push("completed", "end"); break;
      case "SagaCompensated": push("compensated", "end"); break;
      case "SagaFailed": push("failed", "end"); break;
      case "SagaCancelled": push("cancelled", "end"); break;
      default: break;
    }
  }
  return seq;
}

// Where each unit (a branch or element: step and index) stands after `events`.
function unitStates(events) {
  const st = {};
  for (const e of events) {
    const d = e.data || {};
    if (d.index === undefined || d.index === null) continue;
    const k = `${d.step}:${d.index}`;
    switch (e.event_type) {
      case "StepStarted": st[k] = d.phase === "compensation" ? "undoing" : "running"; break;
      case "StepSucceeded": st[k] = "ok"; break;
      case "StepFailed": if (!d.retryable) st[k] = "failed"; break;
      case "StepCompensated": st[k] = "compensated"; break;
      case "CompensationFailed": if (!d.retryable) st[k] = "failed"; break;
      default: break;
    }
  }
  return st;
}

// Draws the compiled state machine as SVG: forward steps down the left,
// their compensations beside them, the ends of a compensation on top and
// `completed` at the bottom. `path` colours the states and transitions taken.
function drawGraph(graph, path, current, units = {}) {
  const W = 210, H = 38, GX = 90, GY = 34, PAD = 20;
  const col = { fwd: PAD, undo: PAD + W + GX };
  const byId = Object.fromEntries(graph.states.map((s) => [s.id, s]));
  const branches = {};
  for (const b of graph.branches || []) (branches[b.fork] ||= []).push(b);
  const stepIdx = (id) => Number(id.split("_")[1]);
  const steps = graph.states.filter((s) => /^(run|wait)_\d+$/.test(s.id)).sort((a, b) => stepIdx(a.id) - stepIdx(b.id));
  const pos = {};
  let y = PAD + H + GY; // the top row holds compensated, cancelled, failed
  for (const s of steps) {
    const hgt = branches[s.id] ? H + 30 : H;
    pos[s.id] = { x: col.fwd, y, w: W, h: hgt };
    const undo = `undo_${stepIdx(s.id)}`;
    if (byId[undo]) pos[undo] = { x: col.undo, y, w: W, h: H };
    y += hgt + GY;
  }
  pos.completed = { x: col.fwd, y, w: W, h: H };
  pos.compensated = { x: col.undo, y: PAD, w: W, h: H };
  pos.cancelled = { x: col.undo + W + GX / 2, y: PAD, w: W * 0.7, h: H };
  pos.failed = { x: col.undo + W + GX / 2, y: PAD + H + GY, w: W * 0.7, h: H };
  const width = col.undo + W + GX / 2 + W * 0.7 + PAD;
  const height = y + H + PAD;

  const visited = new Map(path.map((p) => [p.id, p.kind]));
  const taken = new Map();
  for (let i = 1; i < path.length; i++) {
    const a = path[i - 1], b = path[i];
    let kind = "forward";
    if (b.id === "failed" || (a.kind !== "compensation" && (b.kind === "compensation" || ["compensated", "cancelled"].includes(b.id)))) kind = "failure";
    else if (a.kind === "compensation" || b.kind === "compensation") kind = "compensation";
    if (a.id === "failed") kind = "retry";
    taken.set(`${a.id}>${b.id}`, kind);
  }

  const edges = new Map();
  for (const t of graph.transitions) {
    if (t.from === t.to || !pos[t.from] || !pos[t.to]) continue;
    const k = `${t.from}>${t.to}`;
    if (!edges.has(k)) edges.set(k, { from: t.from, to: t.to, on: [], compensation: t.compensation });
    edges.get(k).on.push(t.on);
  }
  const retries = new Set(graph.transitions.filter((t) => t.from === t.to && t.on === "retry").map((t) => t.from));

  const svg = h("svg", { class: "graph", viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": `the ${graph.workflow} state machine` },
    h("defs", {}, ["plain", "forward", "compensation", "failure", "retry"].map((k) =>
      h("marker", { id: `arrow-${k}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        h("path", { d: "M0,0 L10,5 L0,10 z", class: `arrowhead ${k}` })))));
  const label = (on) => {
    const words = new Set(on.map((o) => ({ succeeded: "ok", business_failure: "fails", retries_exhausted: "fails", timeout: "fails", signal: "signal" }[o] || o)));
    return [...words].join(", ");
  };
  for (const e of edges.values()) {
    const a = pos[e.from], b = pos[e.to];
    let x1 = a.x + a.w / 2, y1 = a.y + a.h, x2 = b.x + b.w / 2, y2 = b.y;
    if (Math.abs(a.x - b.x) > 1) { // across columns: side to side
      const right = b.x > a.x;
      x1 = right ? a.x + a.w : a.x; y1 = a.y + a.h / 2;
      x2 = right ? b.x : b.x + b.w; y2 = b.y + b.h / 2;
    } else if (b.y < a.y) { // upwards (compensations run newest first)
      y1 = a.y; y2 = b.y + b.h;
    }
    const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
    const d = Math.abs(a.x - b.x) > 1
      ? `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`
      : `M${x1},${y1} L${x2},${y2}`;
    const kind = taken.get(`${e.from}>${e.to}`);
    const cls = kind ? `edge taken taken-${kind}` : `edge${e.compensation ? " comp" : ""}`;
    svg.append(h("g", { class: cls, "data-from": e.from, "data-to": e.to },
      h("title", {}, `${byId[e.from].label} → ${byId[e.to].label}: ${e.on.join(", ")}`),
      h("path", { d, "marker-end": `url(#arrow-${kind || "plain"})` }),
      kind || !e.compensation ? h("text", { x: mx + 4, y: my - 3, class: "edge-label" }, label(e.on)) : null));
  }
  for (const [id, p] of Object.entries(pos)) {
    const s = byId[id];
    if (!s) continue;
    const v = visited.get(id);
    const cls = ["state", s.terminal ? "terminal" : "", v ? `visited v-${v}` : "", id === current ? "current" : ""].join(" ");
    const g = h("g", { class: cls, "data-state": id },
      h("title", {}, s.label),
      h("rect", { x: p.x, y: p.y, width: p.w, height: p.h, rx: s.terminal ? 19 : 6 }),
      h("text", { x: p.x + p.w / 2, y: p.y + 24, "text-anchor": "middle" }, s.label.length > 30 ? s.label.slice(0, 29) + "…" : s.label));
    if (retries.has(id)) g.append(h("text", { x: p.x + p.w - 6, y: p.y + 13, "text-anchor": "end", class: "retry-mark" }, "↻"));
    const bs = branches[id];
    if (bs) {
      const bw = (p.w - 12) / bs.length;
      const step = stepIdx(id);
      bs.forEach((b, i) => g.append(h("g", { class: `branch u-${units[`${step}:${i}`] || "idle"}`, "data-branch": b.label },
        h("title", {}, `${b.label}: ${units[`${step}:${i}`] || "not started"}`),
        h("rect", { x: p.x + 6 + i * bw, y: p.y + H - 6, width: bw - 4, height: 26, rx: 4 }),
        h("text", { x: p.x + 6 + i * bw + (bw - 4) / 2, y: p.y + H + 12, "text-anchor": "middle" }, b.label))));
    }
    svg.append(g);
  }
  return h("div", { class: "graph-wrap", id: "graph" }, svg,
    h("p", { class: "legend" }, h("span", { class: "key forward" }, "forward"), h("span", { class: "key compensation" }, "compensation"),
      h("span", { class: "key failure" }, "failure"), h("span", { class: "key current" }, "current state"), " ↻ retries on failure"));
}

// One bar per attempt of each step and compensation, with retries' backoff and timers.
function drawTimeline(events, ended, branchNames = new Set()) {
  const at = (e) => Date.parse((e.data && e.data.at) || e.recorded_at);
  if (!events.length) return h("p", { class: "muted" }, "No events.");
  const t0 = at(events[0]);
  let t1 = Math.max(...events.map(at));
  if (!ended) t1 = Math.max(t1, Date.now());
  const rows = new Map(); // unit → { label, bars: [], marks: [] }
  const unit = (d, phase) => {
    const key = `${phase}:${d.step}:${d.index ?? ""}`;
    if (!rows.has(key)) {
      const idx = d.index !== undefined && d.index !== null && !branchNames.has(d.name) ? `[${d.index}]` : "";
      rows.set(key, { label: `${phase === "compensation" ? "undo " : ""}${d.name}${idx}`, bars: [], marks: [] });
    }
    return rows.get(key);
  };
  const open = new Map();
  for (const e of events) {
    const d = e.data || {};
    const t = at(e);
    const phase = d.phase || "forward";
    switch (e.event_type) {
      case "StepStarted": {
        const bar = { start: t, end: null, attempt: d.attempt, outcome: "running", action: d.action };
        unit(d, phase).bars.push(bar);
        open.set(`${phase}:${d.step}:${d.index ?? ""}:${d.attempt}`, bar);
        break;
      }
      case "StepSucceeded": case "StepFailed": case "StepCompensated": case "CompensationFailed": {
        const ph = e.event_type === "StepCompensated" || e.event_type === "CompensationFailed" ? "compensation" : "forward";
        const bar = open.get(`${ph}:${d.step}:${d.index ?? ""}:${d.attempt}`);
        if (bar) {
          bar.end = t;
          bar.outcome = e.event_type === "StepSucceeded" || e.event_type === "StepCompensated" ? "ok" : (d.kind || "failed");
          bar.error = d.error;
        }
        break;
      }
      case "CompensationStarted": case "UnitsToCompensate":
      case "SagaCompleted": case "SagaCompensated": case "SagaFailed": case "SagaCancelled":
        // attempts still out when the saga turned back or ended: their outcome is unknown
        for (const [k, bar] of open) {
          if (bar.end === null && (k.startsWith("forward:") || e.event_type.startsWith("Saga"))) {
            bar.end = t;
            bar.outcome = "stopped";
          }
        }
        break;
      case "RetryScheduled":
        unit(d, phase).marks.push({ t, due: Date.parse(d.due), what: `retry ${d.attempt} due ${fmtTime(d.due)}` });
        break;
      default: break;
    }
  }
  const W = 760, LBL = 170, RH = 24;
  const span = Math.max(1, t1 - t0);
  const x = (t) => LBL + ((t - t0) / span) * (W - LBL - 10);
  const svg = h("svg", { class: "timeline", viewBox: `0 0 ${W} ${rows.size * RH + 30}`, width: W, height: rows.size * RH + 30 });
  let r = 0;
  for (const row of rows.values()) {
    const y = r * RH + 4;
    svg.append(h("text", { x: 4, y: y + 15, class: "row-label" }, row.label));
    for (const m of row.marks) {
      svg.append(h("g", { class: "backoff" }, h("title", {}, m.what), h("line", { x1: x(m.t), x2: x(Math.min(m.due, t1)), y1: y + 11, y2: y + 11 })));
    }
    for (const b of row.bars) {
      const end = b.end ?? t1;
      const bw = Math.max(3, x(end) - x(b.start));
      svg.append(h("g", { class: `bar o-${b.outcome}` },
        h("title", {}, `attempt ${b.attempt} (${b.action || ""}): ${b.outcome}${b.end ? ", " + fmtMs(b.end - b.start) : ""}${b.error ? " — " + b.error : ""}\n${fmtTime(new Date(b.start).toISOString())}`),
        h("rect", { x: x(b.start), y: y + 3, width: bw, height: RH - 8, rx: 3 }),
        bw > 14 ? h("text", { x: x(b.start) + 3, y: y + 15, class: "bar-label" }, `#${b.attempt}`) : null));
    }
    r++;
  }
  for (const e of events.filter((e) => e.event_type === "TimerFired")) {
    svg.append(h("g", { class: "timer-mark" }, h("title", {}, `timer ${e.data.timer} fired ${fmtTime(e.recorded_at)}`),
      h("line", { x1: x(at(e)), x2: x(at(e)), y1: 0, y2: rows.size * RH + 4 })));
  }
  svg.append(h("text", { x: LBL, y: rows.size * RH + 22, class: "axis" }, fmtTime(new Date(t0).toISOString())));
  svg.append(h("text", { x: W - 10, y: rows.size * RH + 22, class: "axis", "text-anchor": "end" }, `+${fmtMs(span)}`));
  return h("div", { class: "timeline-wrap", id: "timeline" }, svg,
    h("p", { class: "legend" }, h("span", { class: "key ok" }, "succeeded"), h("span", { class: "key transient" }, "transient failure"),
      h("span", { class: "key business" }, "business failure"), h("span", { class: "key timeout" }, "timed out"),
      h("span", { class: "key running" }, "in flight"), h("span", { class: "key stopped" }, "stopped, outcome unknown (undone)"),
      " ─ backoff  │ timer fired"));
}

async function instanceView(id) {
  let inst = await api(`/instances/${id}`);
  const graph = await api(`/workflows/${encodeURIComponent(inst.workflow)}/graph?version=${inst.version}`);
  let history = [];
  async function loadHistory() {
    for (;;) {
      const page = await api(`/instances/${id}/events?from_revision=${history.length}`, { signal: S.view.signal });
      history = history.concat(page.items);
      if (page.next_from === undefined || page.next_from === null) break;
    }
  }
  await loadHistory();

  const box = h("section", { class: "instance", "data-id": id });
  let revision = history.length - 1; // what the slider shows
  let following = true; // the slider sits on the newest revision

  const slider = h("input", { type: "range", id: "revision", min: 0, max: history.length - 1, value: revision });
  const sliderLabel = h("span", { id: "revision-label" });
  slider.addEventListener("input", () => {
    revision = Number(slider.value);
    following = revision === history.length - 1;
    clearTimeout(slider.pending);
    slider.pending = setTimeout(() => attempt(showRevision), 120);
  });

  async function showRevision() {
    const shown = following ? inst : await api(`/instances/${id}/state?revision=${revision}`, { signal: S.view.signal });
    render(shown, history.slice(0, revision + 1));
  }

  // The state the saga is in after `events`: the last of the path taken.
  function currentState(events) {
    const p = pathOf(events, graph);
    return p.length ? p[p.length - 1].id : null;
  }

  function render(v, events) {
    slider.max = history.length - 1;
    slider.value = revision;
    const e = history[revision];
    sliderLabel.textContent = `revision ${revision} of ${history.length - 1}: ${e.event_type} at ${fmtTime(e.recorded_at)}${following ? " (now)" : ""}`;
    const path = pathOf(events, graph);
    put(box, 
      h("div", { class: "row" },
        h("h1", {}, `${v.workflow} `, h("span", { class: "mono" }, shortId(id))),
        badge(v.status), v.paused ? h("span", { class: "badge paused", id: "paused-badge" }, "paused") : null),
      h("p", { class: "muted mono" }, id, " · ", h("a", { href: `#/workflows/${encodeURIComponent(v.workflow)}` }, `${v.workflow} v${v.version}`),
        ` · started ${fmtTime(v.started_at)}`, v.finished_at ? ` · ended ${fmtTime(v.finished_at)}` : ""),
      following && may("operate") ? actions(v) : null,
      h("div", { class: "card" }, h("h2", {}, "Time travel"), slider, " ", sliderLabel),
      h("div", { class: "cols" },
        h("div", { class: "card" }, h("h2", {}, "State machine"), drawGraph(graph, path, path.length ? path[path.length - 1].id : null, unitStates(events))),
        h("div", { class: "card details" },
          h("h2", {}, "Details"),
          h("dl", {},
            h("dt", {}, "status"), h("dd", { id: "detail-status" }, v.status),
            h("dt", {}, "current step"), h("dd", {}, v.current_step ? `${v.current_step} (attempt ${v.attempt})` : "—"),
            v.error ? [h("dt", {}, "error"), h("dd", { class: "error-text", id: "detail-error" }, v.error)] : null),
          h("h3", {}, "Input"), h("pre", { id: "detail-input" }, json(v.input)),
          v.output !== undefined ? [h("h3", {}, "Output"), h("pre", { id: "detail-output" }, json(v.output))] : null,
          h("h3", {}, "Step outputs"), h("pre", {}, json(v.outputs)),
          h("h3", {}, "Pending timers"), timers(v))),
      h("div", { class: "card" }, h("h2", {}, "Timeline"),
        drawTimeline(events, !!v.finished_at || !following, new Set((graph.branches || []).map((b) => b.label)))),
      h("details", { class: "card" }, h("summary", {}, `History (${events.length} events)`),
        h("table", { class: "list" }, h("tbody", {}, events.map((ev) => h("tr", {},
          h("td", { class: "num" }, ev.revision), h("td", {}, ev.event_type), h("td", {}, fmtTime(ev.recorded_at)),
          h("td", {}, h("code", {}, JSON.stringify(ev.data)))))))),
    );
  }

  function timers(v) {
    if (!v.timers || !v.timers.length) return h("p", { class: "muted" }, "none");
    return h("table", { class: "list", id: "timers" }, h("tbody", {}, v.timers.map((t) => h("tr", {},
      h("td", { class: "mono" }, t.timer), h("td", {}, t.kind), h("td", {}, fmtTime(t.due)),
      following && may("operate") && !v.finished_at ? h("td", {}, moveTimer(t)) : null))));
  }

  // +1h, fire now, or a chosen due time (UTC, as every time on the page)
  function moveTimer(t) {
    const path = `/instances/${id}/timers/${encodeURIComponent(t.timer)}`;
    const due = h("input", { type: "datetime-local", class: "small", title: "new due time (UTC)", value: t.due.slice(0, 16) });
    return [
      h("button", { class: "small", "data-extend": t.timer, onclick: () => act(path, { extend_by: "1h" }) }, "+1h"), " ",
      h("button", { class: "small", "data-timer": t.timer, onclick: () => act(path, { fire_now: true }) }, "fire now"), " ",
      due, " ",
      h("button", { class: "small", onclick: () => due.value && act(path, { due: `${due.value}:00Z` }) }, "move"),
    ];
  }

  async function act(path, body) {
    const view = S.view.signal;
    const v = await attempt(() => api(path, { method: "POST", body }));
    // the page may have moved on while the answer travelled
    if (v && !view.aborted) {
      inst = v;
      notice(`Done: the instance is ${v.status}${v.paused ? " (paused)" : ""}.`, "ok");
      await attempt(refresh);
    }
  }

  function actions(v) {
    if (v.finished_at && v.status !== "failed") return null;
    const wait = graph.states.find((s) => s.id === currentState(history) && s.id.startsWith("wait_"));
    const signalName = h("input", { id: "signal-name", placeholder: "signal name", value: wait ? wait.signal || "" : "", size: 16 });
    const payload = h("textarea", { id: "signal-payload", rows: 3, cols: 40 }, "{}");
    const sendSignal = async () => {
      let body;
      try { body = JSON.parse(payload.value || "null"); } catch (e) { notice(`The payload is not JSON: ${e.message}`); return; }
      if (!signalName.value.trim()) { notice("Give the signal's name."); return; }
      await act(`/instances/${id}/signals/${encodeURIComponent(signalName.value.trim())}`, body);
    };
    return h("div", { class: "card actions", id: "actions" },
      h("h2", {}, "Actions"),
      v.finished_at ? null : h("div", { class: "row" },
        v.paused
          ? h("button", { id: "action-resume", onclick: () => act(`/instances/${id}/resume`) }, "Resume")
          : h("button", { id: "action-pause", onclick: () => act(`/instances/${id}/pause`, { reason: "paused from the console" }) }, "Pause"),
        h("button", { id: "action-cancel", class: "danger", onclick: () => { if (confirm("Cancel this instance? The steps done so far are compensated.")) act(`/instances/${id}/cancel`, { reason: "cancelled from the console" }); } }, "Cancel")),
      v.status === "failed" ? h("button", { id: "action-retry", onclick: () => act(`/instances/${id}/retry`) }, "Retry the failed step") : null,
      v.finished_at ? null : h("div", { class: "signal" },
        h("h3", {}, "Send a signal"), signalName, " ", payload, " ",
        h("button", { id: "signal-send", onclick: sendSignal }, "Send")));
  }

  async function refresh() {
    const before = history.length;
    inst = await api(`/instances/${id}`, { signal: S.view.signal });
    await loadHistory();
    if (following || history.length === before) {
      revision = history.length - 1;
      following = true;
    }
    await showRevision();
  }

  // Follows the instance while it runs: a long poll that answers at its next revision.
  async function follow() {
    const signal = S.view.signal;
    while (!signal.aborted && !inst.finished_at) {
      try {
        const next = await api(`/instances/${id}?wait=25s&after_revision=${inst.events - 1}`, { signal });
        if (next.events !== inst.events || next.status !== inst.status || next.paused !== inst.paused) {
          if (!following) { inst = next; await loadHistory(); slider.max = history.length - 1; continue; }
          await refresh();
        }
      } catch (e) {
        if (signal.aborted) return;
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
  }

  render(inst, history);
  follow();
  return box;
}

// ---------------------------------------------------------------- workflows

async function workflowsView() {
  const list = await api("/workflows");
  return h("section", {},
    h("h1", {}, "Workflows"),
    h("table", { class: "list", id: "workflows" },
      h("thead", {}, h("tr", {}, ["name", "latest", "versions", "description", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, list.map((w) => h("tr", {},
        h("td", {}, h("a", { href: `#/workflows/${encodeURIComponent(w.name)}` }, w.name)),
        h("td", { class: "num" }, `v${w.latest}`),
        h("td", {}, w.versions.map((v) => `v${v}`).join(" ")),
        h("td", {}, w.description || ""),
        h("td", {}, h("a", { href: `#/instances?workflow=${encodeURIComponent(w.name)}` }, "instances")))))),
    may("publish") ? publishForm() : null);
}

// YAML with keys, strings, comments and ${…} templates marked; built as nodes.
function highlight(source, marked = new Map()) {
  const lines = source.split("\n");
  return h("pre", { class: "source" }, lines.map((line, i) => {
    const row = h("span", { class: `line${marked.has(i + 1) ? " marked" : ""}`, "data-line": i + 1, title: marked.get(i + 1) || undefined });
    row.append(h("span", { class: "ln" }, String(i + 1).padStart(3, " ")), " ");
    const re = /(#.*$)|(\$\{[^}]*\}?)|("(?:[^"\\]|\\.)*"|'(?:[^']|'')*')|(^\s*(?:- )?[A-Za-z_][\w-]*(?=:))/g;
    let last = 0, m;
    while ((m = re.exec(line))) {
      if (m[1] && /["']/.test(line.slice(0, m.index)) && (line.slice(0, m.index).split(/["']/).length % 2 === 0)) continue;
      row.append(line.slice(last, m.index));
      const cls = m[1] ? "c" : m[2] ? "t" : m[3] ? "s" : "k";
      row.append(h("span", { class: cls }, m[0]));
      last = m.index + m[0].length;
      if (m[0].length === 0) re.lastIndex++;
    }
    row.append(line.slice(last), "\n");
    return row;
  }));
}

function publishForm(initial = "") {
  const text = h("textarea", { id: "publish-source", rows: 14, cols: 90, spellcheck: "false", placeholder: "name: my-workflow\nversion: 1\nsteps:\n  - name: …" }, initial);
  const out = h("div", { id: "publish-result" });
  return h("div", { class: "card" },
    h("h2", {}, "Publish a workflow"),
    h("p", { class: "muted" }, "Paste YAML (docs/workflow-language.md). It is checked as `sagaflow validate` checks it; problems show here, located."),
    text, h("div", {}, h("button", {
      id: "publish-submit",
      onclick: async () => {
        put(out);
        try {
          const v = await api("/workflows", { method: "POST", body: text.value, type: "application/yaml" });
          put(out, h("p", { class: "ok-text" }, `Published ${v.name} v${v.version}. `,
            h("a", { href: `#/workflows/${encodeURIComponent(v.name)}` }, "Open it")));
        } catch (e) {
          const errs = (e.problem && e.problem.errors) || [];
          const marked = new Map(errs.filter((x) => x.line).map((x) => [x.line, `${x.code || ""} ${x.message}`]));
          put(out, 
            h("p", { class: "error-text" }, e.message),
            h("ul", { class: "diagnostics", id: "publish-errors" }, errs.map((x) => h("li", { class: x.severity || "error" },
              h("span", { class: "mono" }, x.line ? `${x.line}:${x.column} ` : ""),
              h("b", {}, x.code ? `${x.code} ` : ""), x.message, x.path ? h("span", { class: "muted" }, ` (${x.path})`) : null,
              x.help ? h("div", { class: "muted" }, `help: ${x.help}`) : null))),
            errs.some((x) => x.line) ? highlight(text.value, marked) : null);
        }
      },
    }, "Publish")), out);
}

async function workflowView(name) {
  const detail = await api(`/workflows/${encodeURIComponent(name)}`);
  const versions = detail.versions;
  let chosen = versions[versions.length - 1];
  const body = h("div");
  const picker = h("select", { id: "version", onchange: () => { chosen = versions.find((v) => String(v.version) === picker.value); attempt(show); } },
    versions.map((v) => h("option", { value: v.version, selected: v === chosen }, `v${v.version} · ${fmtTime(v.published_at)}`)));
  async function show() {
    const graph = await api(`/workflows/${encodeURIComponent(name)}/graph?version=${chosen.version}`);
    const page = await api(`/instances?workflow=${encodeURIComponent(name)}&limit=10`);
    put(body, 
      h("p", {}, chosen.description || "", h("span", { class: "muted mono" }, ` sha256 ${chosen.sha256.slice(0, 16)}…`)),
      h("div", { class: "cols" },
        h("div", { class: "card" }, h("h2", {}, "Source"), highlight(chosen.source)),
        h("div", { class: "card" }, h("h2", {}, "State machine"), drawGraph(graph, [], null))),
      h("div", { class: "card" }, h("h2", {}, "Recent instances ", h("a", { href: `#/instances?workflow=${encodeURIComponent(name)}`, class: "small" }, "all")),
        h("table", { class: "list" }, h("tbody", {}, page.items.map((i) => h("tr", {},
          h("td", {}, h("a", { href: `#/instances/${i.id}`, class: "mono", title: i.id }, shortId(i.id))),
          h("td", {}, `v${i.version}`), h("td", {}, badge(i.status)), h("td", {}, fmtTime(i.started_at))))))),
      may("publish") ? publishForm(chosen.source.replace(/^version:\s*\d+/m, `version: ${versions[versions.length - 1].version + 1}`)) : null);
  }
  await show();
  return h("section", {}, h("div", { class: "row" }, h("h1", {}, name), picker), body);
}

// ---------------------------------------------------------------- overview

// Parses the Prometheus text format into [{name, labels, value}].
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

const SAMPLES = []; // {t, started: {wf: n}, ended: {"wf|outcome": n}} since the page opened

async function overviewView() {
  if (!may("observe")) {
    return h("p", { class: "card" }, `The overview reads the server's metrics, which a ${S.me.role} token may not; sign in as an operator or admin.`);
  }
  const box = h("section", {}, h("h1", {}, "Overview"));
  const body = h("div");
  box.append(h("p", { class: "muted" }, "From this server's metrics (since it started); rates are measured while this page is open, every 5 s."), body);
  async function sample() {
    const text = await api("/metrics", { raw: true, signal: S.view.signal });
    const ready = await fetch("/ready", { signal: S.view.signal }).then((r) => r.json()).catch(() => ({}));
    const m = parseMetrics(text);
    const sum = (name, key) => {
      const acc = {};
      for (const x of m.filter((x) => x.name === name)) acc[key(x.labels)] = (acc[key(x.labels)] || 0) + x.value;
      return acc;
    };
    const s = {
      t: Date.now(),
      started: sum("sagaflow_sagas_started_total", (l) => l.workflow),
      ended: sum("sagaflow_sagas_ended_total", (l) => `${l.workflow}|${l.outcome}`),
    };
    SAMPLES.push(s);
    while (SAMPLES.length && SAMPLES[0].t < s.t - 16 * 60000) SAMPLES.shift();
    const gauge = (name) => m.filter((x) => x.name === name).reduce((a, x) => a + x.value, 0);

    // per minute: the counters' growth within each of the last 15 minutes
    const minutes = [];
    const now = Math.floor(s.t / 60000);
    for (let k = 14; k >= 0; k--) minutes.push({ minute: now - k, started: 0, ended: {} });
    for (let i = 1; i < SAMPLES.length; i++) {
      const a = SAMPLES[i - 1], b = SAMPLES[i];
      const slot = minutes.find((x) => x.minute === Math.floor(b.t / 60000));
      if (!slot) continue;
      for (const [k, v] of Object.entries(b.started)) slot.started += v - (a.started[k] || 0);
      for (const [k, v] of Object.entries(b.ended)) {
        const outcome = k.split("|")[1];
        slot.ended[outcome] = (slot.ended[outcome] || 0) + v - (a.ended[k] || 0);
      }
    }
    const max = Math.max(1, ...minutes.map((x) => Math.max(x.started, Object.values(x.ended).reduce((a, v) => a + v, 0))));
    const CW = 720, CH = 140, bw = CW / minutes.length;
    const chart = h("svg", { class: "chart", id: "per-minute", viewBox: `0 0 ${CW} ${CH + 20}`, width: CW, height: CH + 20 });
    minutes.forEach((x, i) => {
      let y = CH;
      for (const outcome of ["completed", "compensated", "cancelled", "failed"]) {
        const v = x.ended[outcome] || 0;
        const hh = (v / max) * CH;
        if (v) chart.append(h("rect", { class: `seg o-${outcome}`, x: i * bw + 4, y: y - hh, width: bw / 2 - 4, height: hh }, h("title", {}, `${v} ${outcome}`)));
        y -= hh;
      }
      const hs = (x.started / max) * CH;
      if (x.started) chart.append(h("rect", { class: "seg started", x: i * bw + bw / 2, y: CH - hs, width: bw / 2 - 4, height: hs }, h("title", {}, `${x.started} started`)));
      if (i % 3 === 0 || i === minutes.length - 1) chart.append(h("text", { x: i * bw + 4, y: CH + 14, class: "axis" }, new Date(x.minute * 60000).toISOString().slice(11, 16)));
    });

    // step latency from the histogram buckets, by workflow, step and phase
    const hist = {};
    for (const x of m.filter((x) => x.name.startsWith("sagaflow_step_duration_seconds"))) {
      const k = `${x.labels.workflow}|${x.labels.step}|${x.labels.phase}`;
      const e = (hist[k] ||= { buckets: {}, sum: 0, count: 0 });
      if (x.name.endsWith("_bucket")) e.buckets[x.labels.le] = (e.buckets[x.labels.le] || 0) + x.value;
      else if (x.name.endsWith("_sum")) e.sum += x.value;
      else if (x.name.endsWith("_count")) e.count += x.value;
    }
    const quantile = (e, q) => {
      const bounds = Object.keys(e.buckets).filter((b) => b !== "+Inf").map(Number).sort((a, b) => a - b);
      for (const b of bounds) if (e.buckets[String(b)] >= q * e.count) return `≤ ${fmtMs(b * 1000)}`;
      return "> 300 s";
    };
    const totals = Object.entries(s.started).map(([wf, n]) => {
      const ends = Object.entries(s.ended).filter(([k]) => k.startsWith(`${wf}|`));
      return h("tr", {}, h("td", {}, wf), h("td", { class: "num" }, n),
        ["completed", "compensated", "failed", "cancelled"].map((o) => h("td", { class: "num" }, (ends.find(([k]) => k === `${wf}|${o}`) || [0, 0])[1])));
    });
    put(body, 
      h("div", { class: "tiles" },
        h("div", { class: "tile" }, h("b", { id: "live-instances" }, gauge("sagaflow_live_instances")), "live instances"),
        h("div", { class: "tile" }, h("b", {}, gauge("sagaflow_pending_timers")), "pending timers"),
        h("div", { class: "tile" }, h("b", { id: "read-model-lag" }, ready.read_model_lag ?? gauge("sagaflow_projection_lag_events")), "read-model lag (events)")),
      h("div", { class: "card" }, h("h2", {}, "Sagas per minute"), chart,
        h("p", { class: "legend" }, h("span", { class: "key started" }, "started"), h("span", { class: "key ok" }, "completed"),
          h("span", { class: "key compensation" }, "compensated"), h("span", { class: "key stopped" }, "cancelled"), h("span", { class: "key failure" }, "failed"))),
      h("div", { class: "card" }, h("h2", {}, "Sagas since the server started"),
        h("table", { class: "list" }, h("thead", {}, h("tr", {}, ["workflow", "started", "completed", "compensated", "failed", "cancelled"].map((c) => h("th", {}, c)))),
          h("tbody", {}, totals))),
      h("div", { class: "card" }, h("h2", {}, "Step latency"),
        h("table", { class: "list", id: "latency" }, h("thead", {}, h("tr", {}, ["workflow", "step", "phase", "attempts", "mean", "p50", "p99"].map((c) => h("th", {}, c)))),
          h("tbody", {}, Object.entries(hist).sort().map(([k, e]) => {
            const [wf, step, phase] = k.split("|");
            return h("tr", {}, h("td", {}, wf), h("td", {}, step), h("td", {}, phase), h("td", { class: "num" }, e.count),
              h("td", { class: "num" }, e.count ? fmtMs((e.sum / e.count) * 1000) : ""), h("td", {}, quantile(e, 0.5)), h("td", {}, quantile(e, 0.99)));
          })))));
  }
  await sample();
  const timer = setInterval(() => attempt(sample), 5000);
  S.view.signal.addEventListener("abort", () => clearInterval(timer));
  return box;
}
