// Shared by every dashboard page: the API client, page state in the URL, panels (loading,
// empty, error), chart options for Apache ECharts (the global `echarts`, vendored), tables,
// and the pickers that autocomplete from the discovery endpoints.
//
// Every figure comes from the API; nothing here knows SQL. What a page drew is exposed as
// `window.rearview` so the browser tests can compare it with the API's own answer:
//   requests[panel]  the body the panel sent      answers[panel]  the answer it drew
//   status[panel]    loading | ready | empty | error,  errors[panel] the message shown
//   draws[panel]     how many times it was drawn     chartData(name) the data a chart holds

export const rv = (window.rearview = {
  page: document.body.dataset.page,
  requests: {},
  answers: {},
  status: {},
  errors: {},
  draws: {},
  charts: {},
  chartOption(name) {
    const chart = this.charts[name];
    return chart ? chart.getOption() : null;
  },
  chartData(name) {
    const option = this.chartOption(name);
    if (!option) return null;
    const axis = (a) => (a && a[0] && a[0].type === "category" ? a[0].data : null);
    return {
      x: axis(option.xAxis),
      y: axis(option.yAxis),
      series: (option.series || []).map((s) => ({
        id: s.id, name: s.name, type: s.type, stack: s.stack || null,
        data: (s.data || []).map((d) => (d !== null && typeof d === "object" && "value" in d
          ? { name: d.name, value: d.value } : d)),
      })),
    };
  },
});

export const NONE = "$none";
export const OTHER = "$other";

// --- the API ---------------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(message, status, field) {
    super(message);
    this.status = status;
    this.field = field || null;
  }
}

// --- the key --------------------------------------------------------------------------------
// A read key of one project, entered once and kept in this browser's localStorage; sent as
// `Authorization: Bearer` with every API call. `rearview up` prints the dashboard's address
// with `#key=...`: the key is taken from the fragment (never sent to a server), kept, and
// removed from the address bar.

const KEY_STORAGE = "rearview.key";

function takeKeyFromAddress() {
  const match = /(?:^#|&)key=([^&]+)/.exec(window.location.hash);
  if (!match) return;
  localStorage.setItem(KEY_STORAGE, decodeURIComponent(match[1]));
  const rest = window.location.hash.replace(/(^#|&)key=[^&]+/, "$1").replace(/^#&?$/, "");
  history.replaceState(null, "", window.location.pathname + window.location.search + rest);
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

/** Show the key form; *message* says why (a refused key), empty when the user asked. */
export function askForKey(message) {
  const form = document.getElementById("key-form");
  if (!form) return;
  form.hidden = false;
  document.getElementById("key-message").textContent = message || "";
  const input = document.getElementById("key-input");
  input.value = "";
  input.focus();
}

function setUpKeyForm() {
  takeKeyFromAddress();
  const form = document.getElementById("key-form");
  if (!form) return;
  document.getElementById("key-button").addEventListener("click", () => {
    if (form.hidden) askForKey(""); else form.hidden = true;
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const key = document.getElementById("key-input").value.trim();
    if (!key) return;
    localStorage.setItem(KEY_STORAGE, key);
    window.location.reload();
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    askForKey("The key is forgotten: enter one to see data.");
  });
}

setUpKeyForm();

export async function api(path, body) {
  let response;
  const headers = {};
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  try {
    response = await fetch(path, body === undefined ? { headers } : {
      method: "POST", headers, body: JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(`The Rearview API cannot be reached (${e.message}).`, 0);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.error) || `${response.status} ${response.statusText}`;
    if (response.status === 401 || response.status === 403) {
      askForKey(key ? `This key was refused: ${message}` : "Enter a read key to see this project's data.");
    }
    throw new ApiError(message, response.status, data && data.field);
  }
  return data;
}

export const query = (body) => api("/v1/query", body);

const discoveryCache = new Map();
function cached(url) {
  if (!discoveryCache.has(url)) {
    discoveryCache.set(url, api(url).catch((e) => { discoveryCache.delete(url); throw e; }));
  }
  return discoveryCache.get(url);
}
const enc = encodeURIComponent;

export const discovery = {
  async events() {
    return (await cached("/v1/schema/events")).events;
  },
  async properties(event) {
    return (await cached(`/v1/schema/properties${event ? `?event=${enc(event)}` : ""}`)).properties;
  },
  async values(dimension, event, q) {
    const url = `/v1/schema/values?property=${enc(dimension)}&limit=40`
      + (event ? `&event=${enc(event)}` : "") + (q ? `&q=${enc(q)}` : "");
    return (await api(url)).values;
  },
};

export async function eventOptions() {
  return (await discovery.events()).map((e) => ({ value: e.event, label: `${fmt(e.count)} events` }));
}

/** Dimensions to pick, as a user names them: event_name, hot columns, property keys. */
export async function dimensionOptions(event) {
  const props = await discovery.properties(event || null);
  const out = [{ value: "event_name", label: "event name" }];
  for (const p of props) {
    // A key queries cannot name (dimension null) is not offered.
    if (p.dimension && p.dimension !== "event_name") out.push({ value: p.property, label: `${fmt(p.count)} events` });
  }
  return out;
}

export async function valueOptions(dimension, event, q) {
  if (!dimension) return [];
  return (await discovery.values(toDimension(dimension), event || null, q)).map((v) => ({ value: v.value, label: `${fmt(v.count)}` }));
}

// --- formatting --------------------------------------------------------------------------------

const numberFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });
const compactFormat = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

export function fmt(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return numberFormat.format(n);
}
export function fmtCompact(n) {
  if (n === null || n === undefined) return "–";
  return Math.abs(n) < 10000 ? numberFormat.format(n) : compactFormat.format(n);
}
export function fmtPct(x, digits = 1) {
  if (x === null || x === undefined) return "–";
  return `${(x * 100).toFixed(digits)}%`;
}
export function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${+s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s - m * 60)} s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

/** How a dimension value is shown: $none and $other spelled out. */
export function valueLabel(v) {
  if (v === NONE) return "(none)";
  if (v === OTHER) return "Other";
  if (v === "") return "(empty)";
  return String(v);
}
export const groupKey = (values) => values.join(" · ");
export const groupLabel = (key) => {
  const parts = String(key).split(" · ");
  return parts.every((v) => v === OTHER) ? "Other" : parts.map(valueLabel).join(" · ");
};

export const HOT_DIMENSIONS = ["event_name", "country", "device_type", "browser"];

/** The API's dimension for what a user typed: a hot column as is, any other property as
 *  prop:<key> (so "path" and "prop:path" are the same dimension). */
export function toDimension(text) {
  const t = String(text).trim();
  if (!t || HOT_DIMENSIONS.includes(t) || t.startsWith("prop:")) return t;
  return `prop:${t}`;
}

export function dimensionLabel(d) {
  return d.startsWith("prop:") ? d.slice(5) : d.replace("_", " ");
}

export function metricLabel(m) {
  if (m === "events") return "events";
  if (m === "users") return "unique users";
  const [kind, key] = [m.slice(0, 3), m.slice(4)];
  return `${kind === "sum" ? "sum" : "average"} of ${key}`;
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** Axis labels for buckets (ISO strings with their offset, in the request's timezone): the
 *  local wall-clock part is shown as is, so labels are in the timezone the query asked for. */
export function bucketLabels(buckets, interval) {
  const parts = buckets.map((b) => ({ y: b.slice(0, 4), mo: +b.slice(5, 7), d: +b.slice(8, 10), t: b.slice(11, 16) }));
  const days = new Set(buckets.map((b) => b.slice(0, 10)));
  return parts.map((p) => {
    const day = `${MONTHS[p.mo - 1]} ${p.d}`;
    if (interval === "minute" || interval === "hour") return days.size > 1 ? `${day} ${p.t}` : p.t;
    if (interval === "month") return `${MONTHS[p.mo - 1]} ${p.y}`;
    return day;
  });
}

export function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// --- page state in the URL -----------------------------------------------------------------------

export const params = () => new URLSearchParams(location.search);

/** Replace the query string with *entries* ([key, value] pairs; empty values left out). */
export function setParams(entries) {
  const p = new URLSearchParams();
  for (const [k, v] of entries) if (v !== undefined && v !== null && v !== "") p.append(k, v);
  const qs = p.toString();
  const url = `${location.pathname}${qs ? `?${qs}` : ""}`;
  if (url !== `${location.pathname}${location.search}`) history.replaceState(null, "", url);
}

export function parseJSON(text, fallback) {
  try {
    return JSON.parse(text);
  } catch {
    return fallback;
  }
}

/** A step or event with filters as one URL value: the bare name, or JSON when it has filters. */
export function encodeStep(step) {
  if (!step.filters || !step.filters.length) {
    if (!step.label) return step.event || "";
  }
  return JSON.stringify({ event: step.event, filters: step.filters || [], ...(step.label ? { label: step.label } : {}) });
}
export function decodeStep(text) {
  if (text && text.startsWith("{")) {
    const s = parseJSON(text, {});
    return { event: s.event || "", filters: Array.isArray(s.filters) ? s.filters : [], label: s.label || "" };
  }
  return { event: text || "", filters: [], label: "" };
}

/** A list of leaf filters as the API's filter tree (null when there are none). */
export function filterTree(filters) {
  if (!filters || !filters.length) return null;
  return filters.length === 1 ? filters[0] : ["and", filters];
}

export const RANGES = [
  ["30min", "Last 30 minutes"], ["60min", "Last 60 minutes"], ["6h", "Last 6 hours"],
  ["24h", "Last 24 hours"], ["today", "Today"], ["yesterday", "Yesterday"], ["7d", "Last 7 days"],
  ["30d", "Last 30 days"], ["3mo", "Last 3 months"], ["custom", "Custom dates…"],
];
export const SUGGESTED_INTERVAL = {
  "30min": "minute", "60min": "minute", "6h": "hour", "24h": "hour", today: "hour",
  yesterday: "hour", "7d": "day", "30d": "day", "3mo": "week", custom: "day",
};

export function browserTimezone() {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  } catch {
    return "UTC";
  }
}

export function timezones() {
  let zones = [];
  try {
    zones = Intl.supportedValuesOf("timeZone");
  } catch {
    zones = [];
  }
  return ["UTC", ...zones.filter((z) => z !== "UTC")];
}

/** The date range control: a preset select and, for custom ranges, two date inputs.
 *  Its value is the API's date_range: a preset name or [from, to] dates. */
export class RangeControl {
  constructor(root, onChange) {
    this.onChange = onChange;
    this.select = el("select", { id: "range", "aria-label": "Date range" },
      RANGES.map(([v, label]) => el("option", { value: v, text: label })));
    this.from = el("input", { type: "date", id: "range-from", "aria-label": "From" });
    this.to = el("input", { type: "date", id: "range-to", "aria-label": "To" });
    this.custom = el("span", { class: "inline", hidden: true }, this.from, el("span", { class: "muted", text: "to" }), this.to);
    root.append(el("div", { class: "inline" }, this.select, this.custom));
    this.select.addEventListener("change", () => {
      if (this.select.value === "custom" && !this.from.value) {
        const today = new Date().toISOString().slice(0, 10);
        this.from.value = new Date(Date.now() - 6 * 86400e3).toISOString().slice(0, 10);
        this.to.value = today;
      }
      this.sync();
      this.onChange(true);
    });
    for (const input of [this.from, this.to]) input.addEventListener("change", () => this.onChange(false));
  }
  sync() {
    this.custom.hidden = this.select.value !== "custom";
  }
  /** From the URL's `range`: a preset, or "from..to". */
  set(text) {
    if (text && text.includes("..")) {
      const [a, b] = text.split("..");
      this.select.value = "custom";
      this.from.value = a;
      this.to.value = b;
    } else {
      this.select.value = RANGES.some(([v]) => v === text) ? text : this.select.value;
    }
    this.sync();
  }
  get param() {
    return this.select.value === "custom" ? `${this.from.value}..${this.to.value}` : this.select.value;
  }
  get value() {
    return this.select.value === "custom" ? [this.from.value, this.to.value] : this.select.value;
  }
  get preset() {
    return this.select.value;
  }
}

/** The timezone input, autocompleted from the browser's list of IANA zones. */
export function timezoneInput(input, onChange) {
  const list = el("datalist", { id: `${input.id}-list` }, timezones().map((z) => el("option", { value: z })));
  document.body.append(list);
  input.setAttribute("list", list.id);
  input.addEventListener("change", () => onChange());
  return input;
}

// --- suggestions -------------------------------------------------------------------------------

let listCount = 0;

/** Autocomplete *input* with a <datalist> filled by `loader(typed)` -> [{value, label}]. */
export function suggest(input, loader) {
  const list = el("datalist", { id: `suggest-${++listCount}` });
  document.body.append(list);
  input.setAttribute("list", list.id);
  input.setAttribute("autocomplete", "off");
  let timer = null;
  let last = null;
  const refresh = async (force = false) => {
    const typed = input.value;
    if (!force && typed === last) return;
    last = typed;
    try {
      const items = await loader(typed);
      list.replaceChildren(...items.map((it) => el("option", { value: it.value, label: it.label || null })));
    } catch (e) {
      input.title = `Suggestions unavailable: ${e.message}`;
    }
  };
  input.addEventListener("focus", () => refresh());
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(refresh, 150);
  });
  return { refresh: () => refresh(true) };
}

/** Chips with an input to add more: events, breakdown dimensions. */
export class ChipInput {
  constructor(root, { placeholder, max = 100, loader, label = (v) => v, normalize = (v) => v, onChange, id }) {
    this.values = [];
    this.normalize = normalize;
    this.max = max;
    this.label = label;
    this.onChange = onChange;
    this.chips = el("div", { class: "chips" });
    this.input = el("input", { type: "text", placeholder, id, "aria-label": placeholder });
    root.append(this.chips);
    this.suggestions = suggest(this.input, loader);
    const commit = () => {
      const v = this.input.value.trim();
      if (v) this.add(v);
    };
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); commit(); }
      if (e.key === "Backspace" && !this.input.value && this.values.length) this.remove(this.values.length - 1);
    });
    this.input.addEventListener("input", (e) => {
      if (e.inputType === "insertReplacementText") commit();
    });
    this.input.addEventListener("change", commit);
    this.render();
  }
  set(values) {
    this.values = values.slice(0, this.max);
    this.render();
  }
  add(text) {
    const v = this.normalize(text);
    this.input.value = "";
    if (!this.values.includes(v) && this.values.length < this.max) {
      this.values.push(v);
      this.render();
      this.onChange();
    }
    if (this.values.length < this.max) this.input.focus();
  }
  remove(i) {
    this.values.splice(i, 1);
    this.render();
    this.onChange();
  }
  render() {
    const chips = this.values.map((v, i) => el("span", { class: "chip", dataset: { value: v } },
      this.label(v), el("button", { type: "button", title: "Remove", "aria-label": `Remove ${v}`, onclick: () => this.remove(i), text: "×" })));
    this.input.hidden = this.values.length >= this.max;
    this.chips.replaceChildren(...chips, this.input);
  }
}

export const OPS = [
  ["is", "is"], ["is_not", "is not"], ["contains", "contains"], ["not_contains", "does not contain"],
  ["regex", "matches"], ["gt", ">"], ["gte", "≥"], ["lt", "<"], ["lte", "≤"],
  ["is_set", "is set"], ["is_not_set", "is not set"],
];
const OP_LABEL = Object.fromEntries(OPS);
const NUMERIC = new Set(["gt", "gte", "lt", "lte"]);
const NO_VALUES = new Set(["is_set", "is_not_set"]);

export function filterText(f) {
  const [op, dim, values] = f;
  const shown = NO_VALUES.has(op) ? "" : ` ${(Array.isArray(values) ? values : [values]).map(valueLabel).join(", ")}`;
  return [dimensionLabel(dim), OP_LABEL[op] || op, shown.trim()];
}

/** Leaf filters as chips, and a small builder to add one: dimension, operator, values. */
export class FilterEditor {
  constructor(root, { event = () => null, onChange, prefix = "filter" }) {
    this.filters = [];
    this.event = event;
    this.onChange = onChange;
    this.chips = el("div", { class: "chips" });
    this.addButton = el("button", { type: "button", class: "link", text: "+ Add filter", id: `${prefix}-add` });
    this.dim = el("input", { type: "text", class: "dim", placeholder: "property", id: `${prefix}-dim`, "aria-label": "Filter property" });
    this.op = el("select", { id: `${prefix}-op`, "aria-label": "Filter operator" }, OPS.map(([v, l]) => el("option", { value: v, text: l })));
    this.vals = el("input", { type: "text", class: "values", placeholder: "values, comma separated", id: `${prefix}-values`, "aria-label": "Filter values" });
    this.apply = el("button", { type: "button", class: "primary", text: "Add", id: `${prefix}-apply` });
    this.cancel = el("button", { type: "button", text: "Cancel" });
    this.builder = el("span", { class: "filter-builder", hidden: true }, this.dim, this.op, this.vals, this.apply, this.cancel);
    root.append(this.chips);
    suggest(this.dim, () => dimensionOptions(this.event()));
    this.valueSuggestions = suggest(this.vals, (typed) => {
      const parts = typed.split(",");
      const done = parts.slice(0, -1).map((s) => s.trim()).filter(Boolean);
      const current = parts[parts.length - 1].trim();
      const prefix = done.length ? `${done.join(", ")}, ` : "";
      return valueOptions(this.dim.value.trim(), this.event(), current)
        .then((opts) => opts.filter((o) => !done.includes(o.value)).map((o) => ({ value: prefix + o.value, label: o.label })));
    });
    this.dim.addEventListener("change", () => this.valueSuggestions.refresh());
    this.op.addEventListener("change", () => { this.vals.hidden = NO_VALUES.has(this.op.value); });
    this.addButton.addEventListener("click", () => this.open());
    this.cancel.addEventListener("click", () => this.close());
    this.apply.addEventListener("click", () => this.commit());
    for (const input of [this.dim, this.vals]) {
      input.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); this.commit(); } });
    }
    this.render();
  }
  open() {
    this.builder.hidden = false;
    this.addButton.hidden = true;
    this.dim.focus();
  }
  close() {
    this.builder.hidden = true;
    this.addButton.hidden = false;
    this.dim.value = "";
    this.vals.value = "";
    this.dim.setCustomValidity("");
  }
  commit() {
    const dim = toDimension(this.dim.value);
    const op = this.op.value;
    if (!dim) { this.dim.focus(); return; }
    let filter;
    if (NO_VALUES.has(op)) filter = [op, dim];
    else {
      const values = this.vals.value.split(",").map((s) => s.trim()).filter(Boolean);
      if (!values.length) { this.vals.focus(); return; }
      filter = [op, dim, NUMERIC.has(op) ? [Number(values[0])] : values];
    }
    this.filters.push(filter);
    this.close();
    this.render();
    this.onChange();
  }
  set(filters) {
    this.filters = filters.filter((f) => Array.isArray(f) && f.length >= 2);
    this.render();
  }
  remove(i) {
    this.filters.splice(i, 1);
    this.render();
    this.onChange();
  }
  render() {
    const chips = this.filters.map((f, i) => {
      const [dim, op, values] = filterText(f);
      return el("span", { class: "chip filter", dataset: { filter: JSON.stringify(f) } },
        el("span", { text: dim }), el("span", { class: "op", text: op }), values ? el("span", { text: values }) : null,
        el("button", { type: "button", title: "Remove filter", "aria-label": "Remove filter", onclick: () => this.remove(i), text: "×" }));
    });
    this.chips.replaceChildren(...chips, this.addButton, this.builder);
  }
}

// --- panels --------------------------------------------------------------------------------------

/** A card whose content comes from one request: shows loading, empty and error states. */
export class Panel {
  /** *quiet*: a panel that refreshes itself shows no loading state once it has drawn. */
  constructor(name, root, { quiet = false } = {}) {
    this.name = name;
    this.root = root;
    this.quiet = quiet;
    this.seq = 0;
    this.drawn = false;
    root.classList.add("panel");
    this.state = root.querySelector(":scope > .panel-state");
    if (!this.state) {
      this.state = el("div", { class: "panel-state" });
      root.append(this.state);
    }
    this.set("idle");
  }
  set(state, big = "", detail = "") {
    rv.status[this.name] = state;
    this.root.dataset.state = state;
    // The state covers the card's content, never its title.
    const head = this.root.querySelector(":scope > .card-head");
    this.state.style.top = head ? `${head.offsetTop + head.offsetHeight}px` : "0";
    this.state.classList.toggle("first-load", state === "loading" && !this.drawn);
    if (state === "loading") this.state.replaceChildren(el("div", { class: "spinner" }), el("div", { text: "Loading…" }));
    else this.state.replaceChildren(el("div", { class: "big", text: big }), detail ? el("div", { class: "small", text: detail }) : "");
  }
  /** Run *request* (a function returning a promise of the answer); `draw(answer)` returns
   *  false when the answer holds nothing to show. Stale answers are dropped. */
  async run(body, fetcher, draw, emptyText = "No events in this range", emptyHint = "Try a longer date range or fewer filters.") {
    const seq = ++this.seq;
    rv.requests[this.name] = body;
    if (!(this.quiet && this.drawn)) this.set("loading");
    try {
      const answer = await fetcher(body);
      if (seq !== this.seq) return null;
      rv.answers[this.name] = answer;
      delete rv.errors[this.name];
      const shown = draw(answer);
      this.drawn = true;
      rv.draws[this.name] = (rv.draws[this.name] || 0) + 1;
      if (shown === false) this.set("empty", emptyText, emptyHint);
      else this.set("ready");
      return answer;
    } catch (e) {
      if (seq !== this.seq) return null;
      rv.errors[this.name] = e.message;
      delete rv.answers[this.name];
      this.set("error", e.status === 400 ? "The query was refused" : "The query failed", e.message);
      return null;
    }
  }
}

// --- charts --------------------------------------------------------------------------------------

export const PALETTE = ["#3b5bdb", "#12b886", "#f59f00", "#e64980", "#7048e8", "#1c7ed6",
  "#f76707", "#2f9e44", "#ae3ec9", "#0c8599", "#d6336c", "#5c940d"];
export const OTHER_COLOR = "#adb5bd";
const AXIS = "#e6e9ef";
const LABEL = "#687083";
const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';

export function chart(name, node) {
  const instance = echarts.init(node, null, { renderer: "canvas" });
  new ResizeObserver(() => instance.resize()).observe(node);
  rv.charts[name] = instance;
  return instance;
}

/** Draw *option* into chart *name*. *replace*: clear the chart first, without a second
 *  entry animation. ECharts 6.1 loses a funnel's laid-out labels when the series is updated
 *  in place (they are drawn again only after a clear), so funnels are always replaced. */
export function drawChart(name, option, { replace = false } = {}) {
  const chart = rv.charts[name];
  if (replace) {
    const again = chart.__rearviewDrawn === true;
    chart.clear();
    chart.setOption(again ? { ...option, animation: false } : option, { notMerge: true });
  } else {
    chart.setOption(option, { notMerge: true });
  }
  chart.__rearviewDrawn = true;
}

function base(extra) {
  return {
    color: PALETTE,
    textStyle: { fontFamily: FONT, color: LABEL },
    animationDuration: 350,
    animationDurationUpdate: 250,
    ...extra,
  };
}

const tooltipBase = {
  backgroundColor: "#fff", borderColor: AXIS, borderWidth: 1, padding: [8, 10],
  textStyle: { color: "#1c2230", fontSize: 12.5 }, extraCssText: "box-shadow: 0 4px 14px rgba(16,24,40,.12);",
};

/** A line per series: `series` is [{id, name, data}] aligned with the x labels. */
export function lineOption(xLabels, series, { valueFormatter = fmt, area = series.length === 1, legend = series.length > 1, special = () => false } = {}) {
  return base({
    grid: { left: 8, right: 20, top: legend ? 40 : 16, bottom: 8, outerBoundsMode: "same", outerBoundsContain: "axisLabel" },
    legend: legend ? { type: "scroll", top: 0, left: 0, icon: "roundRect", itemWidth: 12, itemHeight: 8, textStyle: { color: LABEL } } : { show: false },
    tooltip: { ...tooltipBase, trigger: "axis", valueFormatter, order: "valueDesc" },
    xAxis: {
      type: "category", data: xLabels, boundaryGap: false,
      axisLine: { lineStyle: { color: AXIS } }, axisTick: { show: false }, axisLabel: { color: LABEL, hideOverlap: true },
    },
    yAxis: {
      type: "value", minInterval: 1, splitLine: { lineStyle: { color: "#eef0f3" } },
      axisLabel: { color: LABEL, formatter: (v) => fmtCompact(v) },
    },
    series: series.map((s, i) => ({
      id: s.id, name: s.name, type: "line", data: s.data, showSymbol: s.data.length < 40, symbolSize: 5,
      lineStyle: { width: 2, ...(special(s) ? { type: "dashed" } : {}) },
      ...(special(s) ? { color: OTHER_COLOR } : { color: PALETTE[i % PALETTE.length] }),
      emphasis: { focus: "series" },
      ...(area ? { areaStyle: { opacity: 0.08 } } : {}),
    })),
  });
}

/** Horizontal bars, largest first: categories are raw group keys, shown through groupLabel. */
export function barOption(keys, values, { valueFormatter = fmt, seriesName = "" } = {}) {
  const special = (k) => k.split(" · ").some((v) => v === OTHER || v === NONE);
  return base({
    grid: { left: 8, right: 56, top: 8, bottom: 8, outerBoundsMode: "same", outerBoundsContain: "axisLabel" },
    tooltip: { ...tooltipBase, trigger: "axis", axisPointer: { type: "shadow" }, valueFormatter,
      formatter: (ps) => `${escapeHtml(groupLabel(ps[0].name))}<br><b>${escapeHtml(valueFormatter(ps[0].value))}</b> ${escapeHtml(seriesName)}` },
    xAxis: { type: "value", minInterval: values.every((v) => v === null || Number.isInteger(v)) ? 1 : 0,
      splitLine: { lineStyle: { color: "#eef0f3" } }, axisLabel: { color: LABEL, formatter: (v) => fmtCompact(v) } },
    yAxis: {
      type: "category", data: keys, inverse: true, axisTick: { show: false }, axisLine: { lineStyle: { color: AXIS } },
      axisLabel: { color: LABEL, width: 170, overflow: "truncate", formatter: (k) => groupLabel(k) },
    },
    series: [{
      id: "totals", name: seriesName, type: "bar", data: values, barMaxWidth: 22,
      itemStyle: { borderRadius: [0, 3, 3, 0], color: (p) => (special(p.name) ? OTHER_COLOR : PALETTE[0]) },
      label: { show: true, position: "right", color: LABEL, formatter: (p) => fmtCompact(p.value) },
    }],
  });
}

/** Vertical bars, stacked (or side by side): one segment per series over the x categories. */
export function stackedBarOption(xKeys, series, { valueFormatter = fmt, stacked = true, xLabel = groupLabel } = {}) {
  return base({
    grid: { left: 8, right: 12, top: 40, bottom: 8, outerBoundsMode: "same", outerBoundsContain: "axisLabel" },
    legend: { type: "scroll", top: 0, left: 0, icon: "roundRect", itemWidth: 12, itemHeight: 8, textStyle: { color: LABEL } },
    tooltip: { ...tooltipBase, trigger: "axis", axisPointer: { type: "shadow" }, valueFormatter },
    xAxis: { type: "category", data: xKeys, axisTick: { show: false }, axisLine: { lineStyle: { color: AXIS } },
      axisLabel: { color: LABEL, interval: 0, hideOverlap: true, formatter: (k) => xLabel(k) } },
    yAxis: { type: "value", minInterval: 1, splitLine: { lineStyle: { color: "#eef0f3" } }, axisLabel: { color: LABEL, formatter: (v) => fmtCompact(v) } },
    series: series.map((s, i) => ({
      id: s.id, name: s.name, type: "bar", ...(stacked ? { stack: "total" } : {}), data: s.data, barMaxWidth: 38,
      color: s.special ? OTHER_COLOR : PALETTE[i % PALETTE.length],
      emphasis: { focus: "series" },
    })),
  });
}

const FUNNEL_SHADES = ["#3b5bdb", "#4c6ef5", "#5c7cfa", "#748ffc", "#91a7ff", "#a5b8ff", "#bac8ff", "#c9d4ff", "#d6deff", "#e1e7ff"];

/** A funnel of steps [{name, value, fromStart, fromPrevious}]: widths are users. */
export function funnelOption(steps, { detail = false } = {}) {
  return base({
    tooltip: { ...tooltipBase, trigger: "item",
      formatter: (p) => {
        const s = steps[p.dataIndex];
        return `<b>${escapeHtml(s.name)}</b><br>${fmt(s.value)} users<br>${fmtPct(s.fromStart)} of step 1`
          + (p.dataIndex ? `<br>${fmtPct(s.fromPrevious)} of the step before` : "");
      } },
    series: [{
      id: "funnel", name: "users", type: "funnel", sort: "none", orient: "vertical",
      left: "6%", width: "54%", top: 8, bottom: 24, gap: 4, min: 0, max: Math.max(1, steps[0] ? steps[0].value : 1),
      minSize: "2%", funnelAlign: "center",
      // Labels in one column right of the widest segment, joined to their segment by a line:
      // never over a slope, however steep the drop.
      labelLayout: { x: "64%", align: "left" },
      label: { show: true, position: "right", color: "#1c2230", fontSize: 12.5, lineHeight: 17,
        formatter: (p) => {
          const s = steps[p.dataIndex];
          const previous = detail && p.dataIndex ? ` · ${fmtPct(s.fromPrevious)} of the step before` : "";
          return `{name|${s.name}}\n{n|${fmt(s.value)}} {pct|${fmtPct(s.fromStart)}${detail ? " of step 1" : ""}${previous}}`;
        },
        rich: { name: { color: LABEL, fontSize: 12 }, n: { fontWeight: 600, fontSize: 13.5, color: "#1c2230" }, pct: { color: LABEL, fontSize: 12 } } },
      labelLine: { length: 18, lineStyle: { color: "#cfd4dd" } },
      itemStyle: { borderColor: "#fff", borderWidth: 1 },
      data: steps.map((s, i) => ({ name: s.name, value: s.value, itemStyle: { color: FUNNEL_SHADES[Math.min(i, FUNNEL_SHADES.length - 1)] } })),
    }],
  });
}

// --- tables ----------------------------------------------------------------------------------

/** A table of *rows*: columns are {key, label, num, format(value, row), cls(row)}. Every cell
 *  carries its raw value in data-value and its column in data-col. */
export function table(container, columns, rows, { rowKey = null, rowClass = null } = {}) {
  const head = el("tr", {}, columns.map((c) => el("th", { class: c.num ? "num" : null, text: c.label })));
  const body = rows.map((row) => el("tr", { class: rowClass ? rowClass(row) : null, dataset: rowKey ? { key: rowKey(row) } : {} },
    columns.map((c) => {
      const v = c.value ? c.value(row) : row[c.key];
      const cell = el("td", { class: c.num ? "num" : null, dataset: { col: c.key, value: v === null || v === undefined ? "null" : String(v) } });
      const shown = c.format ? c.format(v, row) : v;
      if (shown instanceof Node) cell.append(shown);
      else cell.textContent = shown === null || shown === undefined ? "–" : String(shown);
      return cell;
    })));
  container.replaceChildren(el("table", { class: "data" }, el("thead", {}, head), el("tbody", {}, body)));
}

/** The source and meta of an answer, as badges. */
export function metaBadges(node, answer) {
  const badges = [];
  const src = answer.source || "";
  if (src.startsWith("rollup:")) badges.push(el("span", { class: "badge rollup", title: `answered from the rollup table ${src.slice(7)}`, text: `rollup · ${src.slice(7)}`, dataset: { source: src } }));
  else badges.push(el("span", { class: "badge raw", title: answer.meta && answer.meta.rollup_not_used ? `no rollup used: ${answer.meta.rollup_not_used}` : "answered from the raw events table, each event counted once", text: "raw events", dataset: { source: src } }));
  const m = answer.meta || {};
  if (m.approximate) {
    const err = m.standard_error ? ` ±${fmtPct(m.standard_error)}` : "";
    badges.push(el("span", { class: "badge approx", title: `${m.method || "sketch"} estimate`, text: `approximate${err}`, dataset: { approximate: "true" } }));
  } else {
    badges.push(el("span", { class: "badge", text: "exact", dataset: { approximate: "false" } }));
  }
  if (m.truncated) badges.push(el("span", { class: "badge", text: `top of ${fmt(m.total_groups)} groups` }));
  if (m.elapsed_ms !== undefined) badges.push(el("span", { class: "muted", text: `${fmt(Math.round(m.elapsed_ms))} ms` }));
  node.replaceChildren(...badges);
}

/** Calls `fn` now and every *ms* while the page is visible; never two at once. */
export function every(ms, fn) {
  let timer = null;
  let running = false;
  const tick = async () => {
    clearTimeout(timer);
    if (running) return;
    running = true;
    try {
      if (!document.hidden) await fn();
    } catch {
      // A failed refresh shows in its panel; the next one tries again.
    } finally {
      running = false;
    }
    timer = setTimeout(tick, ms);
  };
  document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
  tick();
  return { now: tick };
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// --- links between pages ---------------------------------------------------------------------

/** Explore's query string for a state: the same keys explore.js reads. */
export function exploreParams({ events = [], metric = "events", range = "7d", interval = "day", tz = "", filters = [], by = [], limit = 10 }) {
  return [
    ...events.map((e) => ["event", e]),
    ["metric", metric],
    ["range", range],
    ["interval", interval],
    ["tz", tz],
    ...filters.map((f) => ["filter", JSON.stringify(f)]),
    ...by.map((d) => ["by", d]),
    ["limit", String(limit)],
  ];
}

/** Funnel's query string for a state: the same keys funnel.js reads. */
export function funnelParams({ steps = [], window = "14d", order = "ordered", by = "", range = "7d", tz = "", filters = [] }) {
  return [
    ...steps.map((s) => ["step", encodeStep(s)]),
    ["window", window],
    ["order", order],
    ["by", by],
    ["range", range],
    ["tz", tz],
    ...filters.map((f) => ["filter", JSON.stringify(f)]),
  ];
}

export function href(path, entries) {
  const p = new URLSearchParams();
  for (const [k, v] of entries) if (v !== undefined && v !== null && v !== "") p.append(k, v);
  const qs = p.toString();
  return qs ? `${path}?${qs}` : path;
}

/** The demo traffic's signup funnel (app/generate.py). */
export const DEMO_FUNNEL = [
  { event: "page_view", filters: [["is", "prop:path", ["/pricing"]]], label: "Pricing page" },
  { event: "signup_start", filters: [], label: "Signup started" },
  { event: "signup", filters: [], label: "Signed up" },
  { event: "purchase", filters: [], label: "Purchased" },
];

/** The API's form of a step: {event, filters, label} with a filter tree. */
export function stepBody(step) {
  const tree = filterTree(step.filters);
  return { event: step.event, ...(tree ? { filters: tree } : {}), ...(step.label ? { label: step.label } : {}) };
}

/** The last 60 minutes of events per minute by event name (a breakdown with an interval),
 *  drawn as a line per event into chart *name*; false when there were none. */
export function drawEventMinutes(name, metaNode, answer) {
  const buckets = [];
  const series = new Map();
  for (const r of answer.rows) {
    if (r.event_name === OTHER && !answer.meta.truncated) continue;
    if (!series.has(r.event_name)) series.set(r.event_name, { id: r.event_name, name: groupLabel(r.event_name), data: [] });
    series.get(r.event_name).data.push(r.events);
    if (series.size === 1) buckets.push(r.bucket);
  }
  const list = [...series.values()];
  metaBadges(metaNode, answer);
  drawChart(name, lineOption(bucketLabels(buckets, "minute"), list, { special: (s) => s.id === OTHER }));
  return list.some((s) => s.data.some((v) => v > 0));
}

// --- live figures ------------------------------------------------------------------------------

/** Fill the "online now" tiles (ids u-1m, u-5m, u-15m, this-minute) from GET /v1/live. */
export async function refreshLiveTiles() {
  const dot = document.getElementById("live-dot");
  try {
    const live = await api("/v1/live");
    rv.answers.live = live;
    rv.draws.live = (rv.draws.live || 0) + 1;
    rv.status.live = "ready";
    delete rv.errors.live;
    for (const period of ["1m", "5m", "15m"]) {
      const node = document.getElementById(`u-${period}`);
      node.textContent = fmt(live.active_users[period]);
      node.dataset.value = String(live.active_users[period]);
    }
    const minute = document.getElementById("this-minute");
    minute.textContent = fmt(live.events_this_minute);
    minute.dataset.value = String(live.events_this_minute);
    if (dot) dot.className = live.active_users["15m"] > 0 ? "dot" : "dot idle";
    return live;
  } catch (e) {
    rv.status.live = "error";
    rv.errors.live = e.message;
    if (dot) {
      dot.className = "dot off";
      dot.title = e.message;
    }
    throw e;
  }
}
