// Funnels: steps (an event and its own filters each), conversion window, order, an optional
// breakdown by one dimension. Without a breakdown the chart is a funnel; with one, bars of
// users per step for each group. The table holds every figure of the API's answer.

import {
  DEMO_FUNNEL, FilterEditor, NONE, OTHER, Panel, RangeControl, browserTimezone, chart, debounce,
  decodeStep, dimensionLabel, dimensionOptions, discovery, drawChart, el, eventOptions, filterTree, fmt, fmtDuration,
  fmtPct, funnelOption, funnelParams, groupLabel, metaBadges, params, parseJSON, query, setParams,
  stackedBarOption, stepBody, suggest, table, timezoneInput, toDimension, valueLabel,
} from "./rearview.js";

const $ = (id) => document.getElementById(id);
const changed = () => {
  writeURL();
  runSoon();
};

let stepCount = 0;

/** One step's row: number, event, its own filters, an optional label, remove. */
class StepRow {
  constructor(step) {
    this.event = el("input", { type: "text", class: "event", placeholder: "event", spellcheck: "false", "aria-label": "Step event" });
    this.event.value = step.event || "";
    this.label = el("input", { type: "text", placeholder: "label (optional)", "aria-label": "Step label", style: "width:150px" });
    this.label.value = step.label || "";
    this.num = el("span", { class: "num" });
    this.remove = el("button", { type: "button", class: "icon", title: "Remove step", "aria-label": "Remove step", text: "×" });
    const filterRoot = el("div", { class: "grow" });
    this.root = el("div", { class: "step" }, this.num, this.event, filterRoot, this.label, this.remove);
    suggest(this.event, () => eventOptions());
    this.filters = new FilterEditor(filterRoot, { event: () => this.event.value.trim() || null, onChange: changed, prefix: `step-filter-${++stepCount}` });
    this.filters.set(step.filters || []);
    this.event.addEventListener("change", changed);
    this.label.addEventListener("change", changed);
    this.remove.addEventListener("click", () => {
      rows.splice(rows.indexOf(this), 1);
      renderSteps();
      changed();
    });
  }
  get value() {
    return { event: this.event.value.trim(), filters: this.filters.filters, label: this.label.value.trim() };
  }
}

let rows = [];
function renderSteps() {
  rows.forEach((r, i) => {
    r.num.textContent = String(i + 1);
    r.root.dataset.step = String(i + 1);
    r.remove.hidden = rows.length <= 2;
  });
  $("steps").replaceChildren(...rows.map((r) => r.root));
  $("add-step").hidden = rows.length >= 10;
}
function setSteps(steps) {
  rows = steps.map((s) => new StepRow(s));
  renderSteps();
}
$("add-step").addEventListener("click", () => {
  rows.push(new StepRow({ event: "", filters: [] }));
  renderSteps();
  rows[rows.length - 1].event.focus();
});

const range = new RangeControl($("range-control"), changed);
const filters = new FilterEditor($("filters"), { event: () => null, onChange: changed });
timezoneInput($("timezone"), changed);
suggest($("breakdown"), () => dimensionOptions(null));
for (const id of ["window-n", "window-unit", "order", "breakdown"]) $(id).addEventListener("change", changed);

const windowValue = () => `${Math.max(1, parseInt($("window-n").value, 10) || 14)}${$("window-unit").value}`;

async function readURL() {
  const p = params();
  let steps = p.getAll("step").map(decodeStep);
  if (steps.length < 2) {
    // A first visit: the demo's signup funnel when its events exist, else the top two events.
    let names = [];
    try {
      names = (await discovery.events()).map((e) => e.event);
    } catch {
      names = [];
    }
    if (DEMO_FUNNEL.every((s) => names.includes(s.event))) steps = DEMO_FUNNEL;
    else steps = [{ event: names[0] || "", filters: [] }, { event: names[1] || "", filters: [] }];
  }
  setSteps(steps);
  const w = /^(\d+)(min|h|d|w)$/.exec(p.get("window") || "14d") || [null, "14", "d"];
  $("window-n").value = w[1];
  $("window-unit").value = w[2];
  $("order").value = p.get("order") === "strict" ? "strict" : "ordered";
  $("breakdown").value = p.get("by") || "";
  range.set(p.get("range") || "7d");
  $("timezone").value = p.get("tz") || browserTimezone();
  filters.set(p.getAll("filter").map((f) => parseJSON(f, null)).filter(Boolean));
}

function writeURL() {
  setParams(funnelParams({
    steps: rows.map((r) => r.value), window: windowValue(), order: $("order").value,
    by: $("breakdown").value.trim(), range: range.param, tz: $("timezone").value.trim(), filters: filters.filters,
  }));
}

function request() {
  const tree = filterTree(filters.filters);
  const by = toDimension($("breakdown").value);
  return {
    kind: "funnel",
    steps: rows.map((r) => stepBody(r.value)),
    window: windowValue(),
    order: $("order").value,
    ...(by ? { breakdown: by } : {}),
    date_range: range.value,
    timezone: $("timezone").value.trim() || "UTC",
    ...(tree ? { filters: tree } : {}),
  };
}

const chartPanel = new Panel("funnel", $("chart-card"));
const tablePanel = new Panel("table", $("table-card"));
chart("funnel", $("funnel-chart"));

function draw(answer) {
  const q = answer.query;
  const rowsOut = answer.rows;
  const n = q.steps.length;
  const by = q.breakdown;
  if (!by) {
    const steps = rowsOut.map((r) => ({ name: r.label, value: r.users, fromStart: r.conversion_from_start, fromPrevious: r.conversion_from_previous }));
    drawChart("funnel", funnelOption(steps, { detail: true }), { replace: true });
  } else {
    const groups = [];
    for (const r of rowsOut) if (!groups.includes(r.breakdown)) groups.push(r.breakdown);
    const shown = groups.filter((g) => g !== OTHER || answer.meta.truncated);
    const labels = rowsOut.slice(0, n).map((r) => `${r.step}. ${r.label}`);
    drawChart("funnel", stackedBarOption(labels, shown.map((g) => ({
      id: g, name: groupLabel(g), special: g === OTHER || g === NONE,
      data: rowsOut.filter((r) => r.breakdown === g).map((r) => r.users),
    })), { stacked: false, xLabel: (k) => k }));
  }
  const first = rowsOut.filter((r) => r.step === 1).reduce((a, r) => a + r.users, 0);
  const last = rowsOut.filter((r) => r.step === n).reduce((a, r) => a + r.users, 0);
  $("chart-title").textContent = by ? `Users per step by ${dimensionLabel(by)}` : "Conversion";
  $("chart-sub").textContent = first
    ? `${fmtPct(last / first)} of ${fmt(first)} users converted within ${windowText(q.window_s)}, ${q.order === "strict" ? "strict order" : "in order"}`
    : "";
  metaBadges($("chart-meta"), answer);
  const columns = [
    ...(by ? [{ key: "breakdown", label: dimensionLabel(by), format: (v) => valueLabel(v) }] : []),
    { key: "step", label: "#", num: true },
    { key: "label", label: "step" },
    { key: "users", label: "users", num: true, format: fmt },
    { key: "conversion_from_start", label: "from start", num: true, format: (v) => fmtPct(v) },
    { key: "conversion_from_previous", label: "from previous", num: true, format: (v, r) => (r.step === 1 ? "" : fmtPct(v)) },
    { key: "drop_off", label: "drop-off", num: true, format: (v, r) => (r.step === 1 ? "" : fmt(v)) },
    { key: "median_time_to_convert_s", label: "median time", num: true, format: (v, r) => (r.step === 1 ? "" : fmtDuration(v)) },
  ];
  table($("table"), columns, rowsOut.filter((r) => !by || r.breakdown !== OTHER || answer.meta.truncated), {
    rowKey: (r) => (by ? `${r.breakdown} · ${r.step}` : String(r.step)),
    rowClass: (r) => (by && (r.breakdown === OTHER || r.breakdown === NONE) ? "special" : null),
  });
  return first > 0;
}

function windowText(s) {
  const units = [[604800, "week"], [86400, "day"], [3600, "hour"], [60, "minute"], [1, "second"]];
  const [size, name] = units.find(([u]) => s % u === 0);
  const n = s / size;
  return `${n} ${name}${n === 1 ? "" : "s"}`;
}

function run() {
  if (rows.some((r) => !r.value.event)) {
    chartPanel.set("empty", "Pick an event for each step", "");
    tablePanel.set("empty", "", "");
    return;
  }
  tablePanel.set("loading");
  chartPanel.run(request(), query, draw, "No users started this funnel in this range", "Try a longer date range, or check the first step's event and filters.").then(() => {
    const state = chartPanel.root.dataset.state;
    tablePanel.drawn = tablePanel.drawn || state === "ready";
    tablePanel.set(state === "empty" ? "ready" : state, chartPanel.state.querySelector(".big")?.textContent || "",
      chartPanel.state.querySelector(".small")?.textContent || "");
  });
}
const runSoon = debounce(run, 250);

await readURL();
writeURL();
run();
