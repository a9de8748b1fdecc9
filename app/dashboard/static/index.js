// Overview: what a newcomer sees first. Demo traffic as a line (events per minute by event
// name, last 60 minutes), a stacked bar (events by country and device, last 24 hours), the
// demo signup funnel, and the live tiles. Each chart links to the page that explores it.

import {
  DEMO_FUNNEL, NONE, OTHER, Panel, browserTimezone, chart, drawChart, drawEventMinutes, every, exploreParams,
  fmt, fmtPct, funnelOption, funnelParams, groupLabel, href, metaBadges, query, refreshLiveTiles,
  stackedBarOption, stepBody,
} from "./rearview.js";

const $ = (id) => document.getElementById(id);
const tz = browserTimezone();

const MINUTES = { kind: "breakdown", dimensions: ["event_name"], interval: "minute", date_range: "60min", limit: 8, timezone: tz };
const COUNTRIES = { kind: "breakdown", dimensions: ["country", "device_type"], date_range: "24h", limit: 60, timezone: tz };
const FUNNEL = { kind: "funnel", steps: DEMO_FUNNEL.map(stepBody), date_range: "24h", timezone: tz };

$("minutes-link").href = href("/explore", exploreParams({ range: "60min", interval: "minute", tz, by: ["event_name"], limit: 8 }));
$("countries-link").href = href("/explore", exploreParams({ range: "24h", interval: "hour", tz, by: ["country", "device_type"], limit: 10 }));
$("funnel-link").href = href("/funnel", funnelParams({ steps: DEMO_FUNNEL, range: "24h", tz }));

chart("minutes", $("minutes-chart"));
chart("countries", $("countries-chart"));
chart("funnel", $("funnel-chart"));
const panels = {
  minutes: new Panel("minutes", $("minutes-card"), { quiet: true }),
  countries: new Panel("countries", $("countries-card"), { quiet: true }),
  funnel: new Panel("funnel", $("funnel-card"), { quiet: true }),
};

const drawMinutes = (answer) => drawEventMinutes("minutes", $("minutes-meta"), answer);

function drawCountries(answer) {
  const totals = new Map();
  const devices = new Map();
  const cells = new Map();
  for (const r of answer.rows) {
    if (r.country === OTHER && !answer.meta.truncated) continue;
    totals.set(r.country, (totals.get(r.country) || 0) + r.events);
    devices.set(r.device_type, (devices.get(r.device_type) || 0) + r.events);
    cells.set(`${r.country}\u0000${r.device_type}`, r.events);
  }
  const rank = (m) => [...m.entries()].sort((a, b) => {
    const special = (k) => (k === OTHER ? 2 : k === NONE ? 1 : 0);
    return special(a[0]) - special(b[0]) || b[1] - a[1] || (a[0] < b[0] ? -1 : 1);
  }).map(([k]) => k);
  const countries = rank(totals);
  const series = rank(devices).map((d) => ({
    id: d, name: groupLabel(d), special: d === OTHER,
    data: countries.map((c) => cells.get(`${c}\u0000${d}`) || 0),
  }));
  metaBadges($("countries-meta"), answer);
  drawChart("countries", stackedBarOption(countries, series));
  return countries.length > 0 && [...totals.values()].some((v) => v > 0);
}

function drawFunnel(answer) {
  const steps = answer.rows.map((r) => ({
    name: r.label, value: r.users, fromStart: r.conversion_from_start, fromPrevious: r.conversion_from_previous,
  }));
  drawChart("funnel", funnelOption(steps), { replace: true });
  const last = answer.rows[answer.rows.length - 1];
  $("funnel-card").querySelector(".sub").textContent = steps[0].value
    ? `${fmt(steps[0].value)} users saw the pricing page, ${fmtPct(last.conversion_from_start)} purchased · last 24 hours`
    : "pricing page → signup started → signed up → purchased, last 24 hours";
  return steps[0].value > 0;
}

const noDemo = "No funnel yet";
const noDemoHint = "It needs page_view events with path /pricing, then signup_start, signup and purchase (the demo traffic sends them).";

async function refreshCharts() {
  const [minutes] = await Promise.all([
    panels.minutes.run(MINUTES, query, drawMinutes, "No events in the last 60 minutes", "Events appear here a second or two after they are sent."),
    panels.countries.run(COUNTRIES, query, drawCountries, "No events in the last 24 hours", ""),
    panels.funnel.run(FUNNEL, query, drawFunnel, noDemo, noDemoHint),
  ]);
  $("welcome").hidden = !(minutes && panels.minutes.root.dataset.state === "empty" && panels.countries.root.dataset.state === "empty");
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

every(2000, refreshLiveTiles);
every(10000, refreshCharts);
