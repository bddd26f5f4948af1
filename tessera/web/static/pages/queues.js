// Queues: the tree with quota, usage, borrowed, dominant and fair share, weight and policies.

import { get, reportable } from "../api.js";
import { h, messageRow, put, table, tableWrap } from "../dom.js";
import { amounts, num } from "../format.js";
import { poll } from "../poll.js";

export const title = "Queues";

/** Queues in tree order (parents before children), each with its depth. */
export function treeOrder(queues) {
  const byParent = new Map();
  const names = new Set(queues.map((q) => q.name));
  for (const q of queues) {
    const parent = q.spec.parent && names.has(q.spec.parent) ? q.spec.parent : null;
    if (!byParent.has(parent)) byParent.set(parent, []);
    byParent.get(parent).push(q);
  }
  const out = [];
  const walk = (parent, depth) => {
    for (const q of (byParent.get(parent) || []).sort((a, b) => a.name.localeCompare(b.name))) {
      out.push({ queue: q, depth });
      if (depth < 32) walk(q.name, depth + 1);
    }
  };
  walk(null, 0);
  return out;
}

export function mount(root) {
  const error = h("p", { class: "banner error", role: "alert", hidden: true });
  const { table: tbl, tbody } = table(
    "queues-table",
    ["Name", "Parent", "Used", "Guaranteed", "Borrowed", "Borrowing limit", "Weight", "Share / fair share", "Running", "Pending"],
    "Queues",
  );
  tbody.append(messageRow(10, "Loading…"));
  put(
    root,
    h("h1", {}, "Queues"),
    h("p", { class: "muted" }, "Quota is in GPU-equivalents (a slice counts as the larger of its memory and compute shares), CPU cores and memory. Used and borrowed are what the scheduler charges; share is the dominant share of the cluster, against the queue's fair share among active siblings."),
    error,
    tableWrap(tbl, "Queues table"),
  );

  const poller = poll(async () => {
    try {
      const [queues, usages] = await Promise.all([get("/queues"), get("/queues/usage")]);
      const usage = new Map(usages.map((u) => [u.queue, u]));
      const pct = (x) => `${Math.round(x * 100)}%`;
      const rows = treeOrder(queues).map(({ queue: q, depth }) =>
        h(
          "tr",
          { dataset: { queue: q.name } },
          h(
            "td",
            { class: "name", style: { "padding-left": `${0.75 + depth * 1.25}rem` } },
            depth ? h("span", { class: "tree-mark", "aria-hidden": "true" }, "└ ") : null,
            h("strong", {}, q.name),
            q.spec.description ? h("div", { class: "muted small" }, q.spec.description) : null,
            h(
              "div",
              { class: "muted small nowrap" },
              `placement ${q.spec.placement || "inherited"} · memory ${q.spec.enforcement?.memory || "inherited"}`,
              ` · compute ${q.spec.enforcement?.compute || "inherited"}`,
            ),
          ),
          h("td", {}, q.spec.parent || "–"),
          h("td", { class: "nowrap used" }, usage.has(q.name) ? amounts(usage.get(q.name).used) : "–"),
          h("td", { class: "nowrap" }, amounts(q.spec.guaranteed)),
          h("td", { class: "nowrap borrowed" }, usage.has(q.name) ? amounts(usage.get(q.name).borrowed) : "–"),
          h("td", { class: "nowrap" }, amounts(q.spec.borrowing_limit)),
          h("td", {}, num(q.spec.weight, 2)),
          h(
            "td",
            { class: "nowrap share" },
            usage.has(q.name) ? `${pct(usage.get(q.name).dominant_share)} / ${pct(usage.get(q.name).fair_share)}` : "–",
          ),
          h("td", { class: "num" }, String(usage.get(q.name)?.running ?? 0)),
          h("td", { class: "num" }, String(usage.get(q.name)?.pending ?? 0)),
        ),
      );
      put(tbody, ...(rows.length ? rows : [messageRow(10, "No queues.")]));
      error.hidden = true;
    } catch (err) {
      if (!reportable(err)) return;
      error.textContent = `Could not load queues: ${err.message}`;
      error.hidden = false;
    }
  }, 5000);
  return () => poller.stop();
}
