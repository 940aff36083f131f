// Duplicates: groups of near-duplicate items at a chosen threshold, side by side; the extras
// (each group's items but the first, or those ticked) can be deleted (write scope).

import { c, forgetThumbnails, post } from "./api.js";
import { collectionPicker, el, guarded, thumbnail } from "./ui.js";

export function render(main) {
  const picker = collectionPicker();
  const threshold = el("input", { type: "number", id: "threshold", name: "threshold", step: "any", min: "-1", max: "1", value: "0.95" });
  const go = el("button", { type: "submit" }, "Find duplicates");
  const summary = el("p", { class: "summary", id: "dup-summary", "aria-live": "polite" });
  const groups = el("div", { class: "groups", id: "groups" });
  const remove = el("button", { type: "button", class: "danger", hidden: true }, "Delete ticked extras");

  async function find() {
    const collection = picker.select.value;
    const found = await post(`${c(collection)}/duplicates`, { threshold: Number(threshold.value) });
    summary.textContent = `${found.groups.length} groups, ${found.pairs.length} pairs at ${threshold.value} or closer`;
    groups.replaceChildren(
      ...found.groups.map((ids, g) =>
        el(
          "section",
          { class: "group", "aria-label": `group ${g + 1}: ${ids.join(", ")}` },
          ids.map((id, i) => {
            const box = el("input", { type: "checkbox", name: "extra", value: id, checked: i > 0 || undefined });
            return el("figure", { "data-id": id }, thumbnail(collection, id), el("figcaption", {}, el("label", { class: "inline" }, box, ` delete ${id}`)));
          }),
        ),
      ),
    );
    remove.hidden = !found.groups.length;
  }

  async function deleteExtras() {
    const collection = picker.select.value;
    const ids = [...groups.querySelectorAll("input[name=extra]:checked")].map((b) => b.value);
    if (!ids.length) throw new Error("Tick the items to delete first.");
    if (!confirm(`Delete ${ids.length} item(s) from ${collection}: ${ids.join(", ")}?`)) return;
    const { deleted } = await post(`${c(collection)}/delete`, { ids });
    forgetThumbnails(collection);
    await find();
    summary.textContent = `Deleted ${deleted}. ${summary.textContent}`;
  }

  const form = el(
    "form",
    { class: "controls", id: "dup-form" },
    picker.label,
    el("label", { for: "threshold" }, "Least similarity", threshold),
    go,
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(find, go);
  });
  remove.addEventListener("click", () => guarded(deleteExtras, remove));
  main.append(el("h2", {}, "Duplicates"), form, summary, groups, el("div", { class: "row" }, remove));
}
