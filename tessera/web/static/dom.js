// DOM helpers: every piece of data goes in through textContent or attributes, never as HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = String(value);
    else if (key === "dataset") {
      for (const [k, v] of Object.entries(value)) if (v !== null && v !== undefined) el.dataset[k] = String(v);
    } else if (key === "style" && typeof value === "object") {
      for (const [k, v] of Object.entries(value)) el.style.setProperty(k, String(v));
    } else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "value" && "value" in el && el.tagName !== "BUTTON") {
      el.value = String(value);
    } else if (key === "checked" || key === "selected" || key === "disabled" || key === "hidden") {
      el[key] = Boolean(value);
    } else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
}

function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Create an HTML element: h("a", {href: "#/jobs", class: "x"}, "text", otherNode). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

/** Create an SVG element. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

/** Replace an element's children. */
export function put(el, ...children) {
  el.replaceChildren();
  appendAll(el, children);
  return el;
}

/** A horizontally scrolling wrapper for a table (keeps narrow screens usable). */
export function tableWrap(table, label) {
  return h("div", { class: "table-wrap", role: "region", "aria-label": label, tabindex: "0" }, table);
}

/** A <table> with a header row; returns {table, tbody}. */
export function table(id, columns, caption) {
  const tbody = h("tbody");
  const t = h(
    "table",
    { id },
    caption ? h("caption", { class: "visually-hidden" }, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => (c instanceof Node ? h("th", { scope: "col" }, c) : h("th", { scope: "col" }, c))))),
    tbody,
  );
  return { table: t, tbody };
}

/** A row spanning every column with a muted message (empty or loading tables). */
export function messageRow(columns, text) {
  return h("tr", { class: "empty" }, h("td", { colspan: String(columns) }, text));
}

/** Only http(s) and relative URLs may become links. */
export function safeUrl(url) {
  if (typeof url !== "string") return null;
  try {
    const parsed = new URL(url, location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

/** A state badge: <span class="badge state-running">RUNNING</span>. */
export function badge(text, extraClass = "") {
  const value = String(text ?? "");
  const cls = `badge state-${value.toLowerCase().replace(/[^a-z0-9]+/g, "-")} ${extraClass}`.trim();
  return h("span", { class: cls }, value);
}

/** A small labelled meter: allocated (light) and used (dark) over a capacity. */
export function meter({ label, capacity, allocated, used, format }) {
  const cap = capacity > 0 ? capacity : 1;
  const clamp = (v) => Math.max(0, Math.min(100, (v / cap) * 100));
  const fmt = format || ((v) => String(v));
  const parts = [`allocated ${fmt(allocated)}`];
  parts.push(used === null || used === undefined ? "used unknown" : `used ${fmt(used)}`);
  const summary = `${label}: ${parts.join(", ")} of ${fmt(capacity)}`;
  return h(
    "div",
    { class: "meter", role: "img", "aria-label": summary, title: summary },
    h("span", { class: "meter-label" }, label),
    h(
      "span",
      { class: "meter-track" },
      h("span", { class: "meter-alloc", style: { width: `${clamp(allocated || 0)}%` } }),
      used === null || used === undefined
        ? null
        : h("span", { class: "meter-used", style: { width: `${clamp(used)}%` } }),
    ),
    h(
      "span",
      { class: "meter-text" },
      `alloc ${fmt(allocated || 0)} · used ${used === null || used === undefined ? "–" : fmt(used)}`,
    ),
  );
}
