// Classify's few-shot part: example images dropped into one labelled box per class, saved
// as a few-shot classifier (each class's weight the mean of its examples' vectors).

import { post } from "./api.js";
import { dropZone, el, guarded } from "./ui.js";

const dataUri = (file) =>
  new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`Could not read ${file.name}`));
    reader.readAsDataURL(file);
  });

/** The few-shot section; `saved(info)` is told of each classifier it saves, made with the
 * model `model()` names ("": the default model). */
export function fewShot(saved, model = () => "") {
  const boxes = el("div", { class: "results", id: "shot-boxes" });
  const name = el("input", { type: "text", id: "shot-name", name: "shot-name", placeholder: "pets-few-shot" });
  const add = el("button", { type: "button", class: "secondary" }, "Add a class");
  const save = el("button", { type: "button" }, "Save few-shot classifier");
  let count = 0;

  function addBox() {
    const n = ++count;
    const files = [];
    const label = el("input", { type: "text", id: `shot-label-${n}`, name: "shot-label", placeholder: `class ${n}` });
    const input = el("input", { type: "file", accept: "image/*", multiple: true, id: `shot-images-${n}`, class: "visually-hidden" });
    const shown = el("p", { class: "meta" }, "no examples");
    const box = el(
      "section",
      { class: "card shot", "data-box": String(n) },
      el("label", { for: label.id }, `Label of class ${n}`, label),
      el("label", { for: input.id, class: "visually-hidden" }, `Examples of class ${n}`),
      input,
      dropZone("Drop or choose examples", input, (given) => {
        files.push(...given);
        shown.textContent = `${files.length} example${files.length === 1 ? "" : "s"}: ${files.map((f) => f.name).join(", ")}`;
      }),
      shown,
    );
    box.examples = files;
    boxes.append(box);
    label.focus();
  }

  async function saveClassifier() {
    if (!name.value.trim()) throw new Error("Name the few-shot classifier first.");
    const classes = [];
    for (const box of boxes.querySelectorAll("section.shot")) {
      const label = box.querySelector("input[name=shot-label]").value.trim();
      if (!label && !box.examples.length) continue;
      if (!label) throw new Error("Each class with examples needs a label.");
      classes.push({ label, images: await Promise.all(box.examples.map(dataUri)) });
    }
    const body = { name: name.value.trim(), few_shot: { classes } };
    if (model()) body.model = model();
    const info = await post("/v1/classifiers", body);
    await saved(info);
  }

  add.addEventListener("click", addBox);
  save.addEventListener("click", () => guarded(saveClassifier, save));
  addBox();
  addBox();
  return el(
    "section",
    { "aria-labelledby": "shot-title" },
    el("h2", { id: "shot-title" }, "Few-shot classifier"),
    el("div", { class: "controls" }, el("label", { for: "shot-name" }, "Name", name), add, save),
    boxes,
  );
}
