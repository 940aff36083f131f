// The page's one way to the server: fetch against the public HTTP API, with the API key (when
// the server asks for one) kept in this tab's session storage, and errors as ApiError with
// the server's own message.

const KEY = "lens.apiKey";

export class ApiError extends Error {
  constructor(message, status = 0, type = "") {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
  }
}

let asking = null; // one key prompt at a time, shared by the requests that met a 401

function askKey(reason) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-reason").textContent = reason;
  input.value = "";
  asking = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        asking = null;
        const key = dialog.returnValue === "ok" ? input.value.trim() : "";
        if (key) sessionStorage.setItem(KEY, key);
        resolve(key);
      },
      { once: true },
    );
  });
  dialog.showModal();
  input.focus();
  return asking;
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let type = "";
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      type = body.error.type || "";
    }
  } catch {
    // not JSON: the status line says what there is
  }
  return new ApiError(message, response.status, type);
}

/** The server's answer to METHOD path: JSON parsed, or the Response itself with `raw`.
 * `json` is sent as a JSON body, `form` (FormData) as multipart. */
export async function request(path, { method = "GET", json, form, raw = false } = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = {};
    const key = sessionStorage.getItem(KEY);
    if (key) headers.Authorization = `Bearer ${key}`;
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form;
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body });
    } catch (e) {
      throw new ApiError(`Could not reach the server: ${e.message}`);
    }
    if (response.status === 401 && attempt < 2) {
      const error = await errorOf(response);
      sessionStorage.removeItem(KEY);
      if (await askKey(error.message)) continue;
      throw error;
    }
    if (!response.ok) throw await errorOf(response);
    return raw ? response : response.json();
  }
}

export const get = (path) => request(path);
export const post = (path, json) => request(path, { method: "POST", json });
export const upload = (path, form) => request(path, { method: "POST", form });

/** A collection path segment, escaped. */
export const c = (name) => `/v1/collections/${encodeURIComponent(name)}`;

const thumbnails = new Map(); // "collection/id/size" → object URL, for this page's life

/** An object URL of an item's thumbnail (fetched with the key; the browser's cache sends
 * If-None-Match on the next load). */
export async function thumbnailUrl(collection, id, size = 256) {
  const cacheKey = `${collection}/${id}/${size}`;
  if (!thumbnails.has(cacheKey)) {
    const path = `${c(collection)}/items/${encodeURIComponent(id)}/thumbnail?size=${size}`;
    const response = await request(path, { raw: true });
    thumbnails.set(cacheKey, URL.createObjectURL(await response.blob()));
  }
  return thumbnails.get(cacheKey);
}

/** Forgets the thumbnail of ids that were written again or deleted. */
export function forgetThumbnails(collection) {
  for (const [k, url] of thumbnails) {
    if (k.startsWith(`${collection}/`)) {
      URL.revokeObjectURL(url);
      thumbnails.delete(k);
    }
  }
}
