// Classify: images (chosen or dropped) against typed labels or a saved classifier, with the
// default model or one picked, as bars of probabilities per image; the labels can be saved
// as a zero-shot classifier.

import { get, post, upload } from "./api.js";
import { fewShot } from "./fewshot.js";
import { dropZone, el, guarded } from "./ui.js";

const splitLabels = (text) =>
  text
    .split(/[\n,]/)
    .map((s) => s.trim())
    .filter(Boolean);

export function render(main) {
  let files = [];
  const file = el("input", { type: "file", accept: "image/*", multiple: true, id: "classify-images", class: "visually-hidden" });
  const chosen = el("p", { class: "summary", id: "chosen", "aria-live": "polite" }, "No images chosen.");
  const labels = el("textarea", { id: "labels", name: "labels", rows: "3", cols: "30", placeholder: "cat, dog, car" });
  const saved = el("select", { id: "classifier", name: "classifier" }, el("option", { value: "" }, "(the labels typed)"));
  const model = el("select", { id: "classify-model", name: "model" }, el("option", { value: "" }, "(the default model)"));
  const templates = el("input", { type: "text", id: "template-set", name: "template-set", list: "template-sets", placeholder: "the model's default" });
  const known = el("datalist", { id: "template-sets" }, el("option", { value: "simple" }), el("option", { value: "openai-imagenet" }));
  const go = el("button", { type: "submit" }, "Classify");
  const name = el("input", { type: "text", id: "save-name", name: "save-name", placeholder: "pets" });
  const save = el("button", { type: "button", class: "secondary" }, "Save as classifier");
  const note = el("p", { class: "summary", id: "saved", "aria-live": "polite" });
  const results = el("div", { class: "results", id: "classified", "aria-label": "Classifications" });
  const by = el("p", { class: "summary", id: "classified-by", "aria-live": "polite" });

  const refreshSaved = () =>
    guarded(async () => {
      const { classifiers } = await get("/v1/classifiers");
      const current = saved.value;
      saved.replaceChildren(el("option", { value: "" }, "(the labels typed)"));
      for (const info of classifiers) saved.append(el("option", { value: info.name }, `${info.name}: ${info.labels.join(", ")}`));
      saved.value = classifiers.some((i) => i.name === current) ? current : "";
    });

  const listModels = () =>
    guarded(async () => {
      const listed = await get("/v1/models");
      for (const info of listed.data) {
        model.append(el("option", { value: info.id }, `${info.id}${info.is_default ? " (default)" : ""}`));
      }
    });

  const take = (given) => {
    files = given;
    chosen.textContent = `${files.length} image${files.length === 1 ? "" : "s"}: ${files.map((f) => f.name).join(", ")}`;
  };

  async function classify() {
    if (!files.length) throw new Error("Choose or drop at least one image first.");
    const form = new FormData();
    for (const f of files) form.append("image", f, f.name);
    if (model.value) form.append("model", model.value);
    if (saved.value) form.append("classifier", saved.value);
    else {
      for (const label of splitLabels(labels.value)) form.append("labels", label);
      if (templates.value.trim()) form.append("template_set", templates.value.trim());
    }
    const result = await upload("/v1/classify", form);
    results.replaceChildren(...result.results.map((r, i) => card(files[i], r.labels)));
    const how = result.classifier ? `classifier ${result.classifier}` : "the labels typed";
    by.textContent = `${files.length} image${files.length === 1 ? "" : "s"} by ${result.model}:${result.version}, ${how}`;
  }

  function card(image, scores) {
    const url = URL.createObjectURL(image);
    return el(
      "section",
      { class: "card", "data-top": scores[0] ? scores[0].label : "" },
      el("img", { src: url, alt: `uploaded image ${image.name}` }),
      el("h3", { class: "meta" }, image.name),
      el(
        "ul",
        { class: "bars" },
        scores.map((s) => {
          const pct = (100 * s.probability).toFixed(1);
          return el(
            "li",
            { "data-label": s.label },
            el("span", {}, s.label),
            el("span", { class: "bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": pct, "aria-label": s.label },
              el("span", { style: `width: ${pct}%` })),
            el("span", { class: "score" }, `${pct}%`),
          );
        }),
      ),
    );
  }

  async function saveClassifier() {
    const wanted = splitLabels(labels.value);
    if (!name.value.trim()) throw new Error("Name the classifier first.");
    if (wanted.length < 2) throw new Error("Type at least two labels to save.");
    const zeroShot = { labels: wanted, template_set: templates.value.trim() };
    const body = { name: name.value.trim(), zero_shot: zeroShot };
    if (model.value) body.model = model.value;
    const info = await post("/v1/classifiers", body);
    note.textContent = `Saved classifier ${info.name} (${info.labels.length} labels, model ${info.model}).`;
    await refreshSaved();
  }

  const form = el(
    "form",
    { class: "controls", id: "classify-form" },
    el("label", { for: "classify-images", class: "visually-hidden" }, "Images to classify"),
    file,
    dropZone("Drop or choose images", file, take),
    el("label", { for: "labels" }, "Labels (comma or line separated)", labels),
    el("label", { for: "template-set" }, "Template set", templates, known),
    el("label", { for: "classify-model" }, "Model", model),
    el("label", { for: "classifier" }, "or a saved classifier", saved),
    go,
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(classify, go);
  });
  save.addEventListener("click", () => guarded(saveClassifier, save));
  main.append(
    el("h2", {}, "Classify"),
    form,
    chosen,
    by,
    results,
    el("div", { class: "controls" }, el("label", { for: "save-name" }, "Classifier name", name), save),
    note,
    fewShot(
      async (info) => {
        note.textContent = `Saved classifier ${info.name} (${info.kind}, ${info.labels.length} labels, model ${info.model}).`;
        await refreshSaved();
        saved.value = info.name;
      },
      () => model.value,
    ),
  );
  refreshSaved();
  listModels();
}
