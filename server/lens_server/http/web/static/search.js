// Search: a collection's items nearest to a typed text, an image (chosen, dropped or
// pasted) or a stored item ("more like this"), as a grid of thumbnails best first.

import { c, post, upload } from "./api.js";
import { collectionPicker, dropZone, el, guarded, metaText, thumbnail } from "./ui.js";

export function render(main) {
  const picker = collectionPicker();
  const text = el("input", { type: "search", id: "query", name: "query", placeholder: "a photo of a cat" });
  const k = el("input", { type: "number", id: "k", name: "k", min: "1", max: "1000", value: "12" });
  const filter = el("input", { type: "text", id: "filter", name: "filter", placeholder: '{"kind": "animal"}' });
  const exact = el("input", { type: "checkbox", id: "exact", name: "exact" });
  const go = el("button", { type: "submit" }, "Search");
  const file = el("input", { type: "file", accept: "image/*", id: "image", class: "visually-hidden" });
  const fileLabel = el("label", { for: "image", class: "visually-hidden" }, "Image to search with");
  const summary = el("p", { class: "summary", "aria-live": "polite", id: "summary" });
  const grid = el("ul", { class: "grid", id: "hits", "aria-label": "Results" });

  const options = () => {
    const out = { k: Number(k.value) || 10, exact: exact.checked };
    if (filter.value.trim()) {
      try {
        out.filter = JSON.parse(filter.value);
      } catch (e) {
        throw new Error(`The filter is not JSON: ${e.message}`);
      }
    }
    return out;
  };

  async function run(what, send) {
    const collection = picker.select.value;
    summary.textContent = "Searching…";
    const started = performance.now();
    const result = await guarded(() => send(collection, options()), go);
    if (!result) {
      summary.textContent = "";
      return;
    }
    grid.replaceChildren(...result.hits.map((hit, rank) => card(collection, hit, rank)));
    // From the request to the grid in the page (its thumbnails follow on their own).
    const ms = performance.now() - started;
    performance.measure("lens-search", { start: started, end: started + ms });
    window.lensTimings = [...(window.lensTimings || []), { what, ms, hits: result.hits.length }];
    summary.textContent = `${result.hits.length} hits for ${what} in ${ms.toFixed(0)} ms (${result.model}:${result.version})`;
  }

  const byText = () =>
    run(`"${text.value}"`, (collection, o) => post(`${c(collection)}/search`, { ...o, query: { text: text.value } }));
  const byImage = (files) =>
    run(files[0].name || "the pasted image", (collection, o) => {
      const form = new FormData();
      form.append("image", files[0], files[0].name || "pasted.png");
      form.append("k", String(o.k));
      form.append("exact", String(o.exact));
      if (o.filter) form.append("filter", JSON.stringify(o.filter));
      return upload(`${c(collection)}/search`, form);
    });
  const byId = (id) => run(`more like ${id}`, (collection, o) => post(`${c(collection)}/search`, { ...o, query: { id } }));

  function card(collection, hit, rank) {
    const more = el("button", { type: "button", class: "secondary", onclick: () => byId(hit.id) }, "More like this");
    more.setAttribute("aria-label", `More like ${hit.id}`);
    const meta = metaText(hit.metadata);
    return el(
      "li",
      { "data-id": hit.id, "data-score": String(hit.score), "data-rank": String(rank), title: meta || hit.id },
      el(
        "figure",
        {},
        thumbnail(collection, hit.id),
        el("figcaption", {}, el("span", { class: "id" }, hit.id), el("span", { class: "score" }, hit.score.toFixed(3))),
      ),
      meta ? el("div", { class: "meta" }, meta) : null,
      more,
    );
  }

  const form = el(
    "form",
    { class: "controls", id: "search-form", role: "search" },
    picker.label,
    el("label", { for: "query" }, "Text", text),
    el("label", { for: "k" }, "k", k),
    el("label", { for: "filter" }, "Metadata filter (JSON)", filter),
    el("label", { class: "inline", for: "exact" }, exact, " exact"),
    go,
    fileLabel,
    file,
    dropZone("Drop, paste or choose an image", file, byImage),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (text.value.trim()) byText();
  });
  const paste = (e) => {
    const files = [...(e.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
    if (files.length) {
      e.preventDefault();
      byImage(files);
    }
  };
  document.addEventListener("paste", paste);
  main.append(el("h2", {}, "Search"), form, summary, grid);
  text.focus();
  return () => document.removeEventListener("paste", paste);
}
