// fetch wrapper: JSON in and out, the CSRF header on every write, problem+json errors, 401 handling,
// reads retried after a 429's Retry-After.

const BASE = "/api/v1";
let csrfToken = null;
let unauthorized = () => {};

export class ApiError extends Error {
  constructor(status, problem) {
    const p = problem || {};
    super(p.detail || p.title || `request failed (${status})`);
    this.status = status;
    this.title = p.title || "";
    this.detail = p.detail || "";
    this.errors = Array.isArray(p.errors) ? p.errors : [];
  }
}

export function setCsrf(token) {
  csrfToken = token || null;
}

/** Called on any 401 (except from the session endpoint itself): the app shows the sign-in page. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

function readCookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return null;
}

export function url(path, params) {
  const u = new URL(BASE + path, location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (value === null || value === undefined || value === "") continue;
    if (Array.isArray(value)) value.forEach((v) => u.searchParams.append(key, String(v)));
    else u.searchParams.set(key, String(value));
  }
  return u.pathname + u.search;
}

const RETRIES_429 = 3;

/** Seconds to wait before asking again after a 429: its Retry-After, at most 10 s. */
function retryAfter(res) {
  const header = res.headers.get("Retry-After");
  if (header === null) return 1; // Number(null) would be 0: no pause at all
  const seconds = Number(header);
  return Number.isFinite(seconds) && seconds >= 0 ? Math.min(seconds, 10) : 1;
}

function pause(seconds, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, seconds * 1000);
    if (signal) {
      signal.addEventListener(
        "abort",
        () => {
          clearTimeout(timer);
          reject(new DOMException("aborted", "AbortError"));
        },
        { once: true },
      );
    }
  });
}

async function problemOf(res) {
  try {
    const type = res.headers.get("content-type") || "";
    if (type.includes("json")) return await res.json();
    const text = (await res.text()).slice(0, 500);
    return { title: res.statusText, detail: text || res.statusText };
  } catch {
    return { title: res.statusText, detail: res.statusText };
  }
}

/**
 * request("GET", "/jobs", {params: {state: ["RUNNING"]}}) -> parsed JSON (null for 204).
 * With raw: true the Response itself comes back (for streamed bodies).
 */
export async function request(method, path, { params, body, signal, raw = false } = {}) {
  const headers = { Accept: raw ? "text/plain, application/problem+json" : "application/json" };
  if (method !== "GET" && method !== "HEAD") {
    headers["X-CSRF-Token"] = csrfToken || readCookie("tessera_csrf") || "";
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const safe = method === "GET" || method === "HEAD";
  let res;
  for (let attempt = 0; ; attempt++) {
    try {
      res = await fetch(url(path, params), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
        signal,
      });
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError(0, { title: "Network error", detail: "cannot reach the control plane" });
    }
    // the API sheds load with 429 + Retry-After: a read is asked again after that wait; a write
    // is not (the user decides), its error says when to try again
    if (res.status !== 429 || !safe || attempt >= RETRIES_429) break;
    await pause(retryAfter(res), signal);
  }
  if (!res.ok) {
    const problem = await problemOf(res);
    if (res.status === 429 && !problem.detail) {
      problem.detail = `the control plane is busy; try again in ${retryAfter(res)} s`;
    }
    if (res.status === 401 && path !== "/session") unauthorized();
    throw new ApiError(res.status, problem);
  }
  if (raw) return res;
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, params, options = {}) => request("GET", path, { ...options, params });
export const post = (path, body, options = {}) => request("POST", path, { ...options, body });
export const del = (path, options = {}) => request("DELETE", path, options);

export const enc = encodeURIComponent;

/** Is this an error worth telling the user about (not an abort, not the 401 that signs them out)? */
export function reportable(err) {
  return !(err && (err.name === "AbortError" || err.status === 401));
}

/** Run fn over items, at most `width` at a time; resolves to [{ok, value|error, item}]. */
export async function mapLimit(items, width, fn) {
  const results = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      try {
        results[i] = { ok: true, item: items[i], value: await fn(items[i]) };
      } catch (error) {
        results[i] = { ok: false, item: items[i], error };
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, worker));
  return results;
}
