// Status: requests/s, latency p50 / p99, queue depth and batch size over the last minutes,
// read every few seconds from the server's own counters (GET /metrics, Prometheus' text).

import { request } from "./api.js";
import { el, guarded } from "./ui.js";

const EVERY_MS = 2000;
const KEEP = 150; // samples: five minutes

/** name → [{labels, value}] from Prometheus' text format. */
export function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v;
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value: Number(m[3]) });
  }
  return out;
}

const total = (metrics, name) => (metrics.get(name) || []).reduce((s, x) => s + x.value, 0);

/** Cumulative bucket counts summed over every label but `le`: [[le, count]] ascending. */
function buckets(metrics, name) {
  const byLe = new Map();
  for (const { labels, value } of metrics.get(`${name}_bucket`) || []) {
    const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
    byLe.set(le, (byLe.get(le) || 0) + value);
  }
  return [...byLe].sort((a, b) => a[0] - b[0]);
}

function quantile(now, before, q) {
  const counts = now.map(([le, n], i) => [le, n - (before[i] ? before[i][1] : 0)]);
  const all = counts.length ? counts[counts.length - 1][1] : 0;
  if (!all) return null;
  const found = counts.find(([, n]) => n >= q * all);
  return found ? found[0] : null;
}

function chart(title, unit) {
  const canvas = el("canvas", { width: "600", height: "240", role: "img", "aria-label": title });
  const figure = el("div", { class: "figure" }, "–");
  const box = el("section", { class: "card chart" }, el("h3", {}, title), figure, canvas);
  const series = [];
  return {
    box,
    push(value) {
      series.push(value);
      if (series.length > KEEP) series.shift();
      const digits = Number.isInteger(value) || value >= 10 ? 0 : 2;
      figure.textContent = value === null || value === undefined ? "–" : `${value.toFixed(digits)} ${unit}`;
      const g = canvas.getContext("2d");
      g.clearRect(0, 0, canvas.width, canvas.height);
      const values = series.filter((v) => v !== null);
      const top = Math.max(1e-9, ...values);
      g.strokeStyle = "#2456a6";
      g.lineWidth = 3;
      g.beginPath();
      series.forEach((v, i) => {
        const x = (i / (KEEP - 1)) * canvas.width;
        const y = canvas.height - 8 - ((v || 0) / top) * (canvas.height - 16);
        if (i) g.lineTo(x, y);
        else g.moveTo(x, y);
      });
      g.stroke();
    },
  };
}

export function render(main) {
  const charts = {
    rps: chart("Requests per second", "req/s"),
    p50: chart("Latency p50", "ms"),
    p99: chart("Latency p99", "ms"),
    queue: chart("Queue depth", "inputs"),
    batch: chart("Mean batch size", "inputs"),
  };
  const summary = el("p", { class: "summary", id: "status-summary", "aria-live": "polite" }, "Reading the server's counters…");
  let last = null;

  async function sample() {
    const response = await request("/metrics", { raw: true });
    const metrics = parseMetrics(await response.text());
    const now = {
      t: performance.now(),
      requests: total(metrics, "lens_requests_total"),
      latency: buckets(metrics, "lens_request_duration_seconds"),
      batchSum: total(metrics, "lens_batch_size_sum"),
      batchCount: total(metrics, "lens_batch_size_count"),
    };
    const queue = total(metrics, "lens_batch_queue_inputs");
    if (last) {
      const seconds = (now.t - last.t) / 1000;
      const p50 = quantile(now.latency, last.latency, 0.5);
      const p99 = quantile(now.latency, last.latency, 0.99);
      const batches = now.batchCount - last.batchCount;
      charts.rps.push((now.requests - last.requests) / seconds);
      charts.p50.push(p50 === null || p50 === Infinity ? null : 1000 * p50);
      charts.p99.push(p99 === null || p99 === Infinity ? null : 1000 * p99);
      charts.batch.push(batches ? (now.batchSum - last.batchSum) / batches : null);
    }
    charts.queue.push(queue);
    summary.textContent = `${now.requests} requests answered since start; latency from histogram buckets (upper bounds)`;
    last = now;
  }

  main.append(el("h2", {}, "Status"), summary, el("div", { class: "charts", id: "charts" }, Object.values(charts).map((x) => x.box)));
  let stopped = false;
  const timer = setInterval(() => {
    if (!stopped) guarded(sample);
  }, EVERY_MS);
  guarded(sample);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
