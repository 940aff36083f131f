// Models: every model's versions with their state, runtime, memory and parity; deploy a
// version or roll back (with a confirmation; admin scope); collections' re-index progress.

import { get, post } from "./api.js";
import { el, guarded, showError } from "./ui.js";

const mib = (bytes) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
const parity = (v) => (v ? v.toFixed(4) : "–");

export function render(main) {
  const models = el("div", { id: "models" });
  const collections = el("div", { id: "collections" });
  const note = el("p", { class: "summary", id: "deployed", "aria-live": "polite" });
  let admin = true; // until the server says otherwise (403)
  let moving = false; // a re-index or a version between states: worth reading again soon

  async function change(path, body, what, button) {
    if (!confirm(`${what}?`)) return;
    try {
      button.disabled = true;
      const done = await post(path, body);
      note.textContent = `${done.model.id}: version ${done.version} serving (was ${done.previous_version}).`;
    } catch (e) {
      if (e.status === 403) admin = false;
      showError(e);
    }
    await refresh();
  }

  function modelTable(model) {
    const name = encodeURIComponent(model.id);
    const rows = model.versions.map((v) => {
      const deploy = el("button", { type: "button", disabled: !admin || v.state === "serving" || undefined }, `Deploy ${v.version}`);
      deploy.setAttribute("aria-label", `Deploy ${model.id} version ${v.version}`);
      deploy.addEventListener("click", () =>
        change(`/v1/models/${name}/deploy`, { version: v.version }, `Deploy ${model.id} version ${v.version}`, deploy),
      );
      return el(
        "tr",
        { "data-version": String(v.version), "data-state": v.state },
        el("td", {}, String(v.version)),
        el("td", { class: "state" }, v.state + (v.reason ? ` (${v.reason})` : "")),
        el("td", {}, v.runtimes.map((r) => `${r.modality}: ${r.runtime}`).join(", ") || v.providers.join(", ")),
        el("td", {}, mib(v.memory_bytes)),
        el("td", {}, `${parity(v.image_parity)} / ${parity(v.text_parity)}`),
        el("td", {}, String(v.in_flight)),
        el("td", {}, deploy),
      );
    });
    const back = el("button", { type: "button", class: "secondary", disabled: !admin || !model.previous_version || undefined }, "Roll back");
    back.setAttribute("aria-label", `Roll back ${model.id}`);
    back.addEventListener("click", () =>
      change(`/v1/models/${name}/rollback`, {}, `Roll ${model.id} back to version ${model.previous_version}`, back),
    );
    return el(
      "section",
      { class: "table-wrap", "data-model": model.id },
      el("h3", {}, `${model.id}${model.is_default ? " (default)" : ""}: ${model.kind}, ${model.dim}-d, serving version ${model.serving_version} `, back),
      el(
        "table",
        {},
        el("caption", { class: "visually-hidden" }, `Versions of ${model.id}`),
        el("thead", {}, el("tr", {}, ["Version", "State", "Runtime", "Memory", "Parity (image / text)", "In flight", ""].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, rows),
      ),
    );
  }

  function collectionTable(list) {
    return el(
      "table",
      {},
      el("caption", {}, "Collections"),
      el("thead", {}, el("tr", {}, ["Name", "Model", "Items", "Index", "Re-index"].map((h) => el("th", { scope: "col" }, h)))),
      el(
        "tbody",
        {},
        list.map((info) =>
          el(
            "tr",
            { "data-collection": info.name },
            el("td", {}, info.name),
            el("td", {}, info.model ? `${info.model}:${info.version}` : "vectors only"),
            el("td", {}, String(info.count)),
            el("td", {}, `${info.built_type}, ${mib(info.memory_bytes)}`),
            el(
              "td",
              {},
              info.reindex
                ? el("progress", { max: String(info.reindex.total || 1), value: String(info.reindex.done), "aria-label": `re-index of ${info.name} to version ${info.reindex.version}` })
                : "–",
              info.reindex ? ` ${info.reindex.done} / ${info.reindex.total} to version ${info.reindex.version} ${info.reindex.error}` : "",
            ),
          ),
        ),
      ),
    );
  }

  async function refresh() {
    await guarded(async () => {
      const [listed, { collections: infos }] = await Promise.all([get("/v1/models"), get("/v1/collections")]);
      const steady = new Set(["serving", "available", "ready", "failed"]);
      moving =
        infos.some((i) => i.reindex || i.rebuilding) ||
        listed.data.some((m) => m.versions.some((v) => !steady.has(v.state)));
      models.replaceChildren(...listed.data.map(modelTable));
      collections.replaceChildren(collectionTable(infos));
    });
  }

  // With a key, whether it holds the admin scope: the gate checks a route's scope before it
  // reads the body, so a deploy with a version it refuses (-1) answers 403 without the
  // scope and 400 with it, and deploys nothing either way.
  async function probeAdmin(model) {
    if (!sessionStorage.getItem("lens.apiKey") || !model) return;
    try {
      await post(`/v1/models/${encodeURIComponent(model)}/deploy`, { version: -1 });
    } catch (e) {
      if (e.status === 403) admin = false;
    }
  }

  main.append(el("h2", {}, "Models"), note, models, el("div", { class: "table-wrap" }, collections));
  get("/v1/models")
    .then((listed) => probeAdmin(listed.default_model || (listed.data[0] && listed.data[0].id)))
    .catch(() => {})
    .finally(refresh);
  // Re-index progress and states move on their own: read them again while the view is open.
  const timer = setInterval(() => {
    if (moving) refresh();
  }, 3000);
  return () => clearInterval(timer);
}
