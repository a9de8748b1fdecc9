// Retention: a cohort table with a colour scale (one row per cohort period, one column per
// period after it) and the curve of all cohorts together.

import {
  FilterEditor, Panel, RangeControl, browserTimezone, bucketLabels, chart, debounce, decodeStep, discovery,
  drawChart, el, encodeStep, eventOptions, filterTree, fmt, fmtPct, lineOption, metaBadges, params, parseJSON,
  query, setParams, stepBody, suggest, timezoneInput,
} from "./rearview.js";

const $ = (id) => document.getElementById(id);
const changed = () => {
  writeURL();
  runSoon();
};

const range = new RangeControl($("range-control"), changed);
const startFilters = new FilterEditor($("start-filters"), { event: () => $("start-event").value.trim() || null, onChange: changed, prefix: "start-filter" });
const returnFilters = new FilterEditor($("return-filters"), { event: () => $("return-event").value.trim() || null, onChange: changed, prefix: "return-filter" });
const filters = new FilterEditor($("filters"), { event: () => null, onChange: changed });
suggest($("start-event"), () => eventOptions());
suggest($("return-event"), () => eventOptions());
timezoneInput($("timezone"), changed);
for (const id of ["start-event", "return-event", "period", "periods", "cohort"]) $(id).addEventListener("change", changed);

async function readURL() {
  const p = params();
  let start = decodeStep(p.get("start") || "");
  if (!start.event) {
    try {
      const names = (await discovery.events()).map((e) => e.event);
      start = { event: names.includes("page_view") ? "page_view" : names[0] || "", filters: [] };
    } catch {
      start = { event: "", filters: [] };
    }
  }
  const ret = decodeStep(p.get("return") || "");
  $("start-event").value = start.event;
  startFilters.set(start.filters);
  $("return-event").value = ret.event;
  returnFilters.set(ret.filters);
  range.set(p.get("range") || "7d");
  $("period").value = ["day", "week", "month"].includes(p.get("period")) ? p.get("period") : "day";
  $("periods").value = p.get("periods") || "8";
  $("cohort").value = p.get("cohort") === "recurring" ? "recurring" : "first_time";
  $("timezone").value = p.get("tz") || browserTimezone();
  filters.set(p.getAll("filter").map((f) => parseJSON(f, null)).filter(Boolean));
}

const startStep = () => ({ event: $("start-event").value.trim(), filters: startFilters.filters });
const returnStep = () => ({ event: $("return-event").value.trim(), filters: returnFilters.filters });
const periods = () => Math.min(90, Math.max(1, parseInt($("periods").value, 10) || 8));

function writeURL() {
  const ret = returnStep();
  setParams([
    ["start", encodeStep(startStep())],
    ["return", ret.event || ret.filters.length ? encodeStep(ret) : ""],
    ["period", $("period").value],
    ["periods", String(periods())],
    ["cohort", $("cohort").value],
    ["range", range.param],
    ["tz", $("timezone").value.trim()],
    ...filters.filters.map((f) => ["filter", JSON.stringify(f)]),
  ]);
}

function request() {
  const tree = filterTree(filters.filters);
  const ret = returnStep();
  return {
    kind: "retention",
    start_event: stepBody(startStep()),
    ...(ret.event || ret.filters.length ? { return_event: stepBody({ ...ret, event: ret.event || null }) } : {}),
    period: $("period").value,
    periods: periods(),
    cohort: $("cohort").value,
    date_range: range.value,
    timezone: $("timezone").value.trim() || "UTC",
    ...(tree ? { filters: tree } : {}),
  };
}

const panel = new Panel("retention", $("cohorts-card"));
const curvePanel = new Panel("curve", $("curve-card"));
chart("curve", $("curve-chart"));

/** Background for a rate: the accent colour, stronger as more of the cohort came back. */
function shade(rate) {
  const alpha = 0.06 + 0.86 * Math.max(0, Math.min(1, rate));
  return { background: `rgba(59, 91, 219, ${alpha.toFixed(3)})`, color: alpha > 0.5 ? "#fff" : "#1c2230" };
}

function cell(rate, users, extra) {
  if (users === null || users === undefined) {
    return el("td", { class: "cell pending", title: "this period has not started yet", dataset: { ...extra, users: "null", rate: "null" } });
  }
  const td = el("td", { class: "cell", dataset: { ...extra, users: String(users), rate: rate === null ? "null" : String(rate) },
    title: `${fmt(users)} users` });
  td.textContent = rate === null ? "–" : fmtPct(rate, rate === 1 || rate === 0 ? 0 : 1);
  if (rate !== null) Object.assign(td.style, shade(rate));
  return td;
}

function draw(answer) {
  const q = answer.query;
  const n = q.periods;
  const cohorts = [];
  const byCohort = new Map();
  for (const r of answer.rows) {
    if (!byCohort.has(r.cohort)) {
      byCohort.set(r.cohort, { cohort: r.cohort, size: r.cohort_size, cells: [] });
      cohorts.push(byCohort.get(r.cohort));
    }
    byCohort.get(r.cohort).cells[r.period] = r;
  }
  // All cohorts together, per period: returning users over the sizes of the cohorts whose
  // period has started (a later cohort has fewer periods behind it).
  const total = [];
  for (let k = 0; k < n; k++) {
    let users = 0;
    let size = 0;
    for (const c of cohorts) {
      const r = c.cells[k];
      if (r && r.users !== null) {
        users += r.users;
        size += c.size;
      }
    }
    total.push({ users: size ? users : null, rate: size ? users / size : null, size });
  }
  const unit = { day: "Day", week: "Week", month: "Month" }[q.period];
  const labels = bucketLabels(cohorts.map((c) => c.cohort), q.period);
  const head = el("tr", {}, el("th", { text: "Cohort" }), el("th", { class: "num", text: "Users" }),
    ...Array.from({ length: n }, (_, k) => el("th", { class: "num", style: "text-align:center", text: `${unit} ${k}` })));
  const totalSize = cohorts.reduce((a, c) => a + c.size, 0);
  const allRow = el("tr", { dataset: { cohort: "all" } }, el("td", {}, el("b", { text: "All cohorts" })),
    el("td", { class: "num size", text: fmt(totalSize) }),
    ...total.map((t, k) => cell(t.rate, t.users, { cohort: "all", period: String(k) })));
  const body = cohorts.map((c, i) => el("tr", { dataset: { cohort: c.cohort } },
    el("td", { text: labels[i] }), el("td", { class: "num size", dataset: { col: "cohort_size", value: String(c.size) }, text: fmt(c.size) }),
    ...Array.from({ length: n }, (_, k) => {
      const r = c.cells[k];
      return cell(r ? r.rate : null, r ? r.users : null, { cohort: c.cohort, period: String(k) });
    })));
  $("cohorts").replaceChildren(el("table", { class: "data cohorts" }, el("thead", {}, head), el("tbody", {}, allRow, ...body)));
  const adverb = { day: "Daily", week: "Weekly", month: "Monthly" }[q.period];
  $("cohorts-title").textContent = `${adverb} retention after ${q.start_event.label}`;
  $("cohorts-sub").textContent = `${fmt(cohorts.length)} cohorts, ${fmt(totalSize)} users; came back: ${q.return_event.label}`;
  metaBadges($("cohorts-meta"), answer);
  drawChart("curve", {
    ...lineOption(Array.from({ length: n }, (_, k) => `${unit} ${k}`), [{ id: "all", name: "all cohorts", data: total.map((t) => (t.rate === null ? null : +(t.rate * 100).toFixed(2))) }],
      { valueFormatter: (v) => (v === null || v === undefined ? "–" : `${v}%`) }),
  });
  rearviewCurveAxis();
  return totalSize > 0;
}

/** The curve's y axis in percent, 0 to 100. */
function rearviewCurveAxis() {
  window.rearview.charts.curve.setOption({ yAxis: { min: 0, max: 100, minInterval: 0, axisLabel: { formatter: (v) => `${v}%` } } });
}

function run() {
  if (!$("start-event").value.trim()) {
    panel.set("empty", "Pick the start event", "The event that puts a user in a cohort, such as signup.");
    curvePanel.set("empty", "", "");
    return;
  }
  curvePanel.set("loading");
  panel.run(request(), query, draw, "No users did the start event in this range", "Try a longer date range, or another start event.").then(() => {
    const state = panel.root.dataset.state;
    curvePanel.drawn = curvePanel.drawn || state === "ready";
    curvePanel.set(state, state === "error" ? "" : panel.state.querySelector(".big")?.textContent || "", "");
  });
}
const runSoon = debounce(run, 250);

await readURL();
writeURL();
run();
