// The page's router: one view at a time, chosen by the address's #fragment, each an ES
// module that renders into <main> and returns a function that stops what it started.

import { clearError, showError } from "./ui.js";

const VIEWS = ["search", "classify", "models", "duplicates", "map", "status"];
let stop = null;

async function show() {
  const name = VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "search";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (stop) stop();
  stop = null;
  clearError();
  const main = document.getElementById("view");
  main.replaceChildren();
  main.dataset.view = name;
  try {
    const view = await import(`./${name}.js`);
    stop = (await view.render(main)) || null;
  } catch (e) {
    showError(e);
  }
  document.title = `lens: ${name}`;
}

window.addEventListener("hashchange", show);
show();
