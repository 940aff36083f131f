// Small DOM helpers the views share: elements, the error banner, collection pickers,
// thumbnails, drop zones.

import { get, thumbnailUrl } from "./api.js";

/** An element: el("button", {class: "x", onclick: f}, "text", child, ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const banner = () => document.getElementById("error");

/** Shows an error's message (the API's, for ApiError) in the page's alert banner. */
export function showError(error) {
  const node = banner();
  node.textContent = error && error.message ? error.message : String(error);
  node.hidden = false;
}

export function clearError() {
  banner().hidden = true;
  banner().textContent = "";
}

/** Runs `work`, showing what it throws; `button` is disabled meanwhile. */
export async function guarded(work, button) {
  clearError();
  if (button) button.disabled = true;
  try {
    return await work();
  } catch (e) {
    showError(e);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

/** A labelled <select> of the server's collections; the last choice is remembered. */
export function collectionPicker(onchange) {
  const select = el("select", { id: "collection", name: "collection" });
  const label = el("label", {}, "Collection", select);
  guarded(async () => {
    const { collections } = await get("/v1/collections");
    const remembered = sessionStorage.getItem("lens.collection");
    for (const info of collections) {
      select.append(el("option", { value: info.name }, `${info.name} (${info.count})`));
    }
    if (!collections.length) select.append(el("option", { value: "" }, "no collections"));
    if (collections.some((i) => i.name === remembered)) select.value = remembered;
    if (onchange) onchange(select.value);
  });
  select.addEventListener("change", () => {
    sessionStorage.setItem("lens.collection", select.value);
    if (onchange) onchange(select.value);
  });
  return { label, select };
}

/** An <img> of an item's thumbnail, loaded when it can be; `alt` names the item. */
export function thumbnail(collection, id, size = 256) {
  const img = el("img", { alt: `item ${id}`, class: "thumb", "data-id": id });
  thumbnailUrl(collection, id, size).then(
    (url) => {
      img.src = url;
    },
    (e) => {
      img.alt = `item ${id} (no thumbnail: ${e.message})`;
    },
  );
  return img;
}

/** A drop zone (also focusable: Enter opens the file chooser) that gives files to `take`. */
export function dropZone(text, input, take) {
  const zone = el("div", { class: "drop", tabindex: "0", role: "button" }, text);
  input.tabIndex = -1; // the zone is the keyboard's way to it: one stop, not two
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      input.click();
    }
  });
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const files = [...e.dataTransfer.files].filter((f) => f.type.startsWith("image/"));
    if (files.length) take(files);
  });
  input.addEventListener("change", () => {
    if (input.files.length) take([...input.files]);
  });
  return zone;
}

/** Metadata as one line of key=value. */
export function metaText(metadata) {
  return Object.entries(metadata || {})
    .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`)
    .join(", ");
}
