// Explore: one or more events, a metric, range, interval, timezone, filters and up to three
// breakdown dimensions, drawn as a line per series or group, a bar per group and a table.
//
// Two requests answer it: `lines` (a timeseries, or a breakdown with an interval when there
// are dimensions) and `totals` (a breakdown without interval: the bars and the table). With no
// breakdown, totals are by event name, so "unique users" totals are distinct users per event,
// never a sum of per-bucket uniques. The whole state lives in the query string.

import {
  ChipInput, FilterEditor, NONE, OTHER, Panel, RangeControl, SUGGESTED_INTERVAL, barOption, browserTimezone,
  bucketLabels, chart, debounce, dimensionLabel, el, exploreParams, dimensionOptions, discovery, drawChart, eventOptions,
  filterTree, fmt, fmtPct, groupKey, groupLabel, lineOption, metaBadges, metricLabel, params, parseJSON,
  query, setParams, suggest, table, timezoneInput, toDimension, valueLabel,
} from "./rearview.js";

const $ = (id) => document.getElementById(id);

const changed = () => {
  writeURL();
  runSoon();
};

const firstEvent = () => (events.values.length === 1 ? events.values[0] : null);

const events = new ChipInput($("events"), {
  id: "event-input", placeholder: "Add an event",
  loader: () => eventOptions(), onChange: changed,
});
const breakdown = new ChipInput($("breakdown"), {
  id: "breakdown-input", placeholder: "Add a dimension", max: 3,
  loader: () => dimensionOptions(firstEvent()), label: dimensionLabel, normalize: toDimension, onChange: changed,
});
const filters = new FilterEditor($("filters"), { event: firstEvent, onChange: changed });
const range = new RangeControl($("range-control"), (presetChanged) => {
  if (presetChanged) $("interval").value = SUGGESTED_INTERVAL[range.preset] || "day";
  changed();
});
timezoneInput($("timezone"), changed);
suggest($("metric-property"), async () => (await discovery.properties(firstEvent()))
  .map((p) => ({ value: p.property, label: `${fmt(p.count)} events` })));
$("metric").addEventListener("change", () => {
  syncMetric();
  if (!$("metric-property").hidden && !$("metric-property").value) $("metric-property").focus();
  changed();
});
$("metric-property").addEventListener("change", changed);
$("interval").addEventListener("change", changed);
$("limit").addEventListener("change", changed);

function syncMetric() {
  $("metric-property").hidden = !["sum", "avg"].includes($("metric").value);
}

function metric() {
  const kind = $("metric").value;
  return kind === "sum" || kind === "avg" ? `${kind}:${$("metric-property").value.trim()}` : kind;
}

function limit() {
  const n = parseInt($("limit").value, 10);
  return Number.isFinite(n) && n >= 1 ? Math.min(n, 50) : 10;
}

function readURL() {
  const p = params();
  events.set(p.getAll("event").filter(Boolean));
  const m = p.get("metric") || "events";
  if (m.startsWith("sum:") || m.startsWith("avg:")) {
    $("metric").value = m.slice(0, 3);
    $("metric-property").value = m.slice(4);
  } else {
    $("metric").value = m === "users" ? "users" : "events";
  }
  syncMetric();
  range.set(p.get("range") || "7d");
  $("interval").value = p.get("interval") || SUGGESTED_INTERVAL[range.preset] || "day";
  $("timezone").value = p.get("tz") || browserTimezone();
  filters.set(p.getAll("filter").map((f) => parseJSON(f, null)).filter(Boolean));
  breakdown.set(p.getAll("by").filter(Boolean));
  $("limit").value = p.get("limit") || "10";
}

function writeURL() {
  $("all-events").hidden = events.values.length > 0;
  setParams(exploreParams({
    events: events.values, metric: metric(), range: range.param, interval: $("interval").value,
    tz: $("timezone").value.trim(), filters: filters.filters, by: breakdown.values, limit: limit(),
  }));
}

/** The two API requests the current state asks for. */
function requests() {
  const tree = filterTree(filters.filters);
  const common = {
    date_range: range.value,
    timezone: $("timezone").value.trim() || "UTC",
    ...(tree ? { filters: tree } : {}),
  };
  const ev = events.values.length ? { events: [...events.values] } : {};
  const m = metric();
  const by = [...breakdown.values];
  const lines = by.length
    ? { kind: "breakdown", ...ev, metrics: [m], dimensions: by, interval: $("interval").value, limit: limit(), ...common }
    : { kind: "timeseries", ...ev, metrics: [m], interval: $("interval").value, ...common };
  const totals = {
    kind: "breakdown", ...ev, metrics: [m], dimensions: by.length ? by : ["event_name"],
    limit: by.length ? limit() : 50, ...common,
  };
  return { lines, totals };
}

const linesPanel = new Panel("lines", $("lines-card"));
const totalsPanel = new Panel("totals", $("bars-card"));
const tablePanel = new Panel("table", $("table-card"));
chart("lines", $("lines-chart"));
chart("bars", $("bars-chart"));

const isSpecial = (key) => key.split(" · ").some((v) => v === OTHER || v === NONE);
const hasValue = (v) => v !== null && v !== undefined && v !== 0;

/** Rows of a breakdown answer worth drawing: `$other` only when some group was folded in. */
function shownRows(answer) {
  const dims = answer.query.dimensions;
  return answer.rows.filter((r) => answer.meta.truncated || !dims.every((d) => r[d] === OTHER));
}

function drawLines(answer) {
  const q = answer.query;
  const m = q.metrics[0];
  const buckets = [];
  const series = new Map();
  const add = (id, name, bucket, value) => {
    if (!series.has(id)) series.set(id, { id, name, data: [] });
    series.get(id).data.push(value);
    if (series.size === 1) buckets.push(bucket);
  };
  if (q.kind === "timeseries") {
    for (const r of answer.rows) add(r.series, r.series, r.bucket, r[m]);
  } else {
    for (const r of shownRows(answer)) {
      const key = groupKey(q.dimensions.map((d) => r[d]));
      add(key, groupLabel(key), r.bucket, r[m]);
    }
  }
  const list = [...series.values()];
  const by = q.kind === "breakdown" ? ` by ${q.dimensions.map(dimensionLabel).join(", ")}` : "";
  $("lines-title").textContent = `${capital(metricLabel(m))} per ${q.interval}${by}`;
  metaBadges($("lines-meta"), answer);
  drawChart("lines", lineOption(bucketLabels(buckets, q.interval), list, {
    valueFormatter: fmt, legend: list.length > 1, special: (s) => isSpecial(s.id),
  }));
  return list.some((s) => s.data.some(hasValue));
}

function drawTotals(answer) {
  const q = answer.query;
  const m = q.metrics[0];
  const rows = shownRows(answer);
  const keys = rows.map((r) => groupKey(q.dimensions.map((d) => r[d])));
  const values = rows.map((r) => r[m]);
  $("bars-title").textContent = `${capital(metricLabel(m))} by ${q.dimensions.map(dimensionLabel).join(", ")}`;
  metaBadges($("bars-meta"), answer);
  drawChart("bars", barOption(keys, values, { seriesName: metricLabel(m) }));
  const meta = answer.meta;
  const additive = m === "events" || m.startsWith("sum:");
  const total = additive ? values.reduce((a, v) => a + (v || 0), 0) : null;
  const columns = [
    ...q.dimensions.map((d, i) => ({
      key: d, label: dimensionLabel(d),
      // The $other row: "Other (n groups)" once, in the first column.
      format: (v, r) => (q.dimensions.every((x) => r[x] === OTHER)
        ? (i ? "" : `Other (${fmt(meta.total_groups - q.limit)} groups)`) : valueLabel(v)),
    })),
    { key: m, label: metricLabel(m), num: true, format: (v) => fmt(v) },
    ...(additive ? [{ key: "share", label: "share", num: true, value: (r) => (total ? r[m] / total : null), format: (v) => fmtPct(v) }] : []),
  ];
  table($("table"), columns, rows, {
    rowKey: (r) => groupKey(q.dimensions.map((d) => r[d])),
    rowClass: (r) => (isSpecial(groupKey(q.dimensions.map((d) => r[d]))) ? "special" : null),
  });
  $("table-sub").textContent = meta.truncated
    ? `top ${fmt(q.limit)} of ${fmt(meta.total_groups)} groups; Other holds the rest`
    : `${fmt(meta.total_groups)} group${meta.total_groups === 1 ? "" : "s"}`;
  return values.some(hasValue);
}

const capital = (s) => s.charAt(0).toUpperCase() + s.slice(1);

function run() {
  const m = metric();
  if (m.endsWith(":")) {
    for (const p of [linesPanel, totalsPanel, tablePanel]) p.set("empty", "Pick a property", "Sums and averages need a numeric property, such as price.");
    return;
  }
  if (range.preset === "custom" && !(range.value[0] && range.value[1])) {
    for (const p of [linesPanel, totalsPanel, tablePanel]) p.set("empty", "Pick both dates", "");
    return;
  }
  const { lines, totals } = requests();
  const seq = ++runs;
  tablePanel.set("loading");
  Promise.all([
    linesPanel.run(lines, query, drawLines),
    totalsPanel.run(totals, query, drawTotals).then(() => {
      // The table shows the totals' answer: it mirrors their panel's state and message.
      const state = totalsPanel.root.dataset.state;
      tablePanel.drawn = tablePanel.drawn || state === "ready";
      tablePanel.set(state, totalsPanel.state.querySelector(".big")?.textContent || "",
        totalsPanel.state.querySelector(".small")?.textContent || "");
    }),
  ]).then(() => {
    if (seq === runs) showErrors();
  });
}

let runs = 0;

/** A refused query's message (the API's `error`), once above the charts. */
function showErrors() {
  const rv = window.rearview;
  const messages = [...new Set(["lines", "totals"].map((n) => rv.errors[n]).filter(Boolean))];
  $("notice").hidden = !messages.length;
  $("notice").replaceChildren(...messages.map((m) => el("div", { text: m })));
  for (const panel of [linesPanel, totalsPanel, tablePanel]) {
    if (panel.root.dataset.state === "error") panel.set("error", panel.state.querySelector(".big")?.textContent || "", "");
  }
}

const runSoon = debounce(run, 250);

readURL();
writeURL();
run();
