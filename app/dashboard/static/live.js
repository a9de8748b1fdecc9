// Live: online now (GET /v1/live every 2 s), events per minute (a query every 5 s), top events,
// and the pipeline's health (GET /v1/pipeline every 5 s): dead letters per minute by error
// class, consumer lag, redactions by detector, and whether the workers answer at all.

import {
  Panel, api, barOption, browserTimezone, chart, drawChart, drawEventMinutes, el, every, fmt, query,
  refreshLiveTiles, rv, stackedBarOption, table,
} from "./rearview.js";

const $ = (id) => document.getElementById(id);
const MINUTES = {
  kind: "breakdown", dimensions: ["event_name"], interval: "minute", date_range: "60min", limit: 8,
  timezone: browserTimezone(),
};

chart("minutes", $("minutes-chart"));
chart("dlq", $("dlq-chart"));
chart("redactions", $("redactions-chart"));
const minutesPanel = new Panel("minutes", $("minutes-card"), { quiet: true });
const panels = {
  dlq: new Panel("dlq", $("dlq-card"), { quiet: true }),
  redactions: new Panel("redactions", $("redactions-card"), { quiet: true }),
  lag: new Panel("lag", $("lag-card"), { quiet: true }),
  classes: new Panel("classes", $("classes-card"), { quiet: true }),
};

function drawTop(top) {
  const max = Math.max(1, ...top.map((t) => t.count));
  $("top-events").replaceChildren(...(top.length ? top.map((t) => el("li", { dataset: { event: t.event_name, count: String(t.count) } },
    el("span", { text: t.event_name }), el("span", { class: "n", text: fmt(t.count) }),
    el("span", { class: "bar", style: `width:${(100 * t.count / max).toFixed(1)}%` })))
    : [el("li", { class: "muted" }, el("span", { text: "No events in the last 5 minutes" }))]));
}

async function refreshLive() {
  const live = await refreshLiveTiles();
  drawTop(live.top_events);
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

const localMinute = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });

function setText(id, text, value) {
  $(id).textContent = text;
  $(id).dataset.value = value === null || value === undefined ? "null" : String(value);
}

function drawPipeline(p) {
  rv.answers.pipeline = p;
  rv.draws.pipeline = (rv.draws.pipeline || 0) + 1;
  rv.status.pipeline = "ready";
  // Workers.
  const down = p.workers.filter((w) => !w.reachable);
  setText("workers", `${p.workers_reachable} / ${p.workers_total}`, p.workers_reachable);
  $("worker-dot").className = down.length ? "dot off" : "dot";
  $("workers-tile").classList.toggle("bad", down.length > 0);
  $("workers-hint").textContent = down.length ? `not answering: ${down[0].url}` : "metrics scraped from every worker";
  $("workers-hint").title = down.length ? down[0].error : "";
  // Consumer lag.
  const lagKnown = p.workers_reachable > 0;
  setText("lag-total", lagKnown ? fmt(p.consumer_lag.total) : "–", lagKnown ? p.consumer_lag.total : null);
  const several = p.workers_total > 1;
  // One row per topic (and worker): its partitions' lag summed, and the worst one.
  const topics = new Map();
  for (const part of p.consumer_lag.partitions) {
    const key = `${part.worker} ${part.topic}`;
    if (!topics.has(key)) topics.set(key, { worker: part.worker, topic: part.topic, partitions: 0, lag: 0, worst: null });
    const t = topics.get(key);
    t.partitions += 1;
    t.lag += part.lag;
    if (t.worst === null || part.lag > t.worst.lag) t.worst = part;
  }
  table($("lag-table"), [
    ...(several ? [{ key: "worker", label: "worker" }] : []),
    { key: "topic", label: "topic" }, { key: "partitions", label: "partitions", num: true },
    { key: "lag", label: "lag", num: true, format: fmt },
    { key: "worst", label: "most behind", num: true, value: (t) => (t.worst && t.worst.lag ? `${t.worst.partition}` : ""),
      format: (v, t) => (v === "" ? "–" : `partition ${v}: ${fmt(t.worst.lag)}`) },
  ], [...topics.values()], { rowKey: (t) => `${t.worker} ${t.topic}` });
  if (!lagKnown) panels.lag.set("error", "No worker answered", down.length ? down[0].error : "");
  else if (!p.consumer_lag.partitions.length) panels.lag.set("empty", "No partitions assigned yet", "");
  else panels.lag.set("ready");
  // Dead letters.
  const d = p.dead_letters;
  setText("dlq-total", d.total === null ? "–" : fmt(d.total), d.total);
  $("dlq-tile").classList.toggle("bad", (d.total || 0) > 0);
  const classes = Object.keys(d.by_error_class);
  drawChart("dlq", stackedBarOption(d.minutes.map(localMinute), classes.map((c) => ({ id: c, name: c, data: d.by_error_class[c] })),
    { xLabel: (k) => k }));
  table($("classes-table"), [
    { key: "error_class", label: "error class" }, { key: "stage", label: "stage" },
    { key: "letters", label: "letters", num: true, format: fmt },
  ], d.classes, { rowKey: (r) => `${r.error_class} ${r.stage}` });
  for (const name of ["dlq", "classes"]) {
    if (d.error) panels[name].set("error", "The dlq table cannot be read", d.error);
    else if (!d.total) panels[name].set("empty", "No dead letters in the last 60 minutes", "Every event was accepted.");
    else panels[name].set("ready");
  }
  // Redactions.
  const total = p.redactions.reduce((a, r) => a + r.count, 0);
  setText("redactions-total", lagKnown ? fmt(total) : "–", lagKnown ? total : null);
  drawChart("redactions", barOption(p.redactions.map((r) => r.detector), p.redactions.map((r) => r.count), { seriesName: "redactions" }));
  if (!lagKnown) panels.redactions.set("error", "No worker answered", down.length ? down[0].error : "");
  else if (!total) panels.redactions.set("empty", "No personal data found yet", "Emails, phone numbers, cards and the like are redacted before storage.");
  else panels.redactions.set("ready");
  $("pipeline-status").textContent = `as of ${new Date(p.as_of).toLocaleTimeString()}`
    + (down.length ? ` · ${down.length} worker${down.length > 1 ? "s" : ""} not answering` : "");
}

async function refreshPipeline() {
  try {
    drawPipeline(await api("/v1/pipeline"));
  } catch (e) {
    rv.status.pipeline = "error";
    rv.errors.pipeline = e.message;
    for (const panel of Object.values(panels)) panel.set("error", "Pipeline health unavailable", e.message);
  }
}

every(2000, refreshLive);
every(5000, () => minutesPanel.run(MINUTES, query, (a) => drawEventMinutes("minutes", $("minutes-meta"), a),
  "No events in the last 60 minutes", "Events appear a second or two after they are sent."));
every(5000, refreshPipeline);
