// Map: a collection's items on two axes computed by the server (the first two principal
// components of their vectors, or a UMAP layout where the server has umap-learn), coloured by
// a metadata field; wheel or +/- zooms, dragging or the arrow keys pan, a click opens the
// item and its nearest neighbours.

import { c, get, post } from "./api.js";
import { collectionPicker, el, guarded, metaText, thumbnail } from "./ui.js";

const PALETTE = ["#2456a6", "#d2691e", "#2e8b57", "#a32020", "#7b4fa6", "#b8860b", "#1e90ff", "#c71585", "#556b2f", "#708090"];

export function render(main) {
  let points = [];
  let view = { zoom: 1, x: 0, y: 0 }; // zoom about the centre, pan in map units
  let field = "";
  let asked = 0; // the latest map asked for: an older answer arriving late is dropped
  const canvas = el("canvas", { class: "map", id: "map", width: "960", height: "720", tabindex: "0", role: "img", "aria-label": "Map of the collection" });
  const colour = el("select", { id: "colour-by", name: "colour-by" }, el("option", { value: "" }, "(none)"));
  const method = el(
    "select",
    { id: "projection", name: "projection" },
    el("option", { value: "pca" }, "PCA"),
    el("option", { value: "umap" }, "UMAP"),
  );
  const summary = el("p", { class: "summary", id: "map-summary", "aria-live": "polite" });
  const legend = el("div", { class: "legend", id: "legend" });
  const panel = el("aside", { id: "map-item", "aria-live": "polite" }, el("p", { class: "summary" }, "Click a point to open its item."));
  const picker = collectionPicker((name) => name && guarded(() => load(name)));

  async function load(name) {
    const chosen = method.value;
    const mine = ++asked;
    summary.textContent = chosen === "umap" ? "Computing the UMAP layout (seconds to minutes for large collections)…" : "Projecting…";
    delete canvas.dataset.points;
    let made;
    try {
      made = await get(`${c(name)}/map?method=${encodeURIComponent(chosen)}`);
    } catch (e) {
      if (mine === asked) summary.textContent = "";
      throw e;
    }
    if (mine !== asked) return;
    for (const option of method.options) {
      const can = made.methods.includes(option.value);
      option.disabled = !can;
      option.textContent = option.value.toUpperCase() + (can ? "" : " (the server has no umap-learn)");
    }
    points = made.points;
    view = { zoom: 1, x: 0, y: 0 };
    const fields = [...new Set(points.flatMap((p) => Object.keys(p.metadata)))].sort();
    colour.replaceChildren(el("option", { value: "" }, "(none)"), ...fields.map((f) => el("option", { value: f }, f)));
    field = fields.includes(field) ? field : fields[0] || "";
    colour.value = field;
    const explained = made.explained.map((e) => `${(100 * e).toFixed(0)}%`).join(" / ");
    const how = made.method === "umap" ? "UMAP layout" : `PCA, variance along x / y ${explained}`;
    summary.textContent = `${points.length} points of ${made.total} items${made.sampled ? " (a sample)" : ""}; ${how}`;
    canvas.dataset.method = made.method;
    canvas.dataset.points = String(points.length);
    draw();
  }

  function project(p) {
    const w = canvas.width, h = canvas.height, s = (Math.min(w, h) / 2.2) * view.zoom;
    return [w / 2 + (p.x - view.x) * s, h / 2 - (p.y - view.y) * s];
  }

  function colours() {
    const values = [...new Set(points.map((p) => String(p.metadata[field] ?? "–")))].sort();
    return new Map(values.map((v, i) => [v, PALETTE[i % PALETTE.length]]));
  }

  function draw() {
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, canvas.width, canvas.height);
    const byValue = colours();
    let drawn = 0;
    for (const p of points) {
      const [x, y] = project(p);
      if (x < -5 || y < -5 || x > canvas.width + 5 || y > canvas.height + 5) continue;
      g.fillStyle = field ? byValue.get(String(p.metadata[field] ?? "–")) : PALETTE[0];
      g.beginPath();
      g.arc(x, y, 5, 0, 2 * Math.PI);
      g.fill();
      drawn++;
    }
    canvas.dataset.drawn = String(drawn);
    legend.replaceChildren(...(field ? [...byValue].map(([v, col]) => el("span", {}, el("i", { style: `background: ${col}` }), v)) : []));
  }

  async function open(point) {
    const collection = picker.select.value;
    const near = await post(`${c(collection)}/search`, { query: { id: point.id }, k: 7 });
    panel.replaceChildren(
      el("h3", {}, point.id),
      thumbnail(collection, point.id),
      el("p", { class: "meta" }, metaText(point.metadata)),
      el("h4", {}, "Nearest"),
      el("ul", { class: "grid", id: "neighbours" }, near.hits.filter((h) => h.id !== point.id).map((h) =>
        el("li", { "data-id": h.id }, el("figure", {}, thumbnail(collection, h.id, 128), el("figcaption", {}, h.id, el("span", { class: "score" }, h.score.toFixed(3))))),
      )),
    );
  }

  function nearest(event) {
    const box = canvas.getBoundingClientRect();
    const mx = ((event.clientX - box.left) * canvas.width) / box.width;
    const my = ((event.clientY - box.top) * canvas.height) / box.height;
    let best = null, bestD = 12 ** 2;
    for (const p of points) {
      const [x, y] = project(p);
      const d = (x - mx) ** 2 + (y - my) ** 2;
      if (d < bestD) [best, bestD] = [p, d];
    }
    return best;
  }

  const zoom = (factor) => {
    view.zoom = Math.min(64, Math.max(0.5, view.zoom * factor));
    draw();
  };
  let drag = null;
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    zoom(e.deltaY < 0 ? 1.25 : 0.8);
  });
  canvas.addEventListener("pointerdown", (e) => (drag = { x: e.clientX, y: e.clientY, moved: false }));
  canvas.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const s = ((Math.min(canvas.width, canvas.height) / 2.2) * view.zoom * canvas.getBoundingClientRect().width) / canvas.width;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    if (!drag.moved) return;
    view.x -= dx / s;
    view.y += dy / s;
    drag.x = e.clientX;
    drag.y = e.clientY;
    draw();
  });
  canvas.addEventListener("pointerup", (e) => {
    const wasDrag = drag && drag.moved;
    drag = null;
    const hit = !wasDrag && nearest(e);
    if (hit) guarded(() => open(hit));
  });
  canvas.addEventListener("keydown", (e) => {
    const step = 0.1 / view.zoom;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
    if (e.key === "+" || e.key === "=") zoom(1.25);
    else if (e.key === "-") zoom(0.8);
    else if (moves[e.key]) {
      view.x += moves[e.key][0];
      view.y += moves[e.key][1];
      draw();
    } else return;
    e.preventDefault();
  });
  colour.addEventListener("change", () => {
    field = colour.value;
    draw();
  });
  method.addEventListener("change", () => picker.select.value && guarded(() => load(picker.select.value)));

  main.append(
    el("h2", {}, "Map"),
    el(
      "div",
      { class: "controls" },
      picker.label,
      el("label", { for: "projection" }, "Projection", method),
      el("label", { for: "colour-by" }, "Colour by", colour),
      el("button", { type: "button", class: "secondary", onclick: () => zoom(1.25), "aria-label": "Zoom in" }, "+"),
      el("button", { type: "button", class: "secondary", onclick: () => zoom(0.8), "aria-label": "Zoom out" }, "−"),
    ),
    summary,
    el("div", { class: "map-wrap" }, el("div", {}, canvas, legend), panel),
  );
}
