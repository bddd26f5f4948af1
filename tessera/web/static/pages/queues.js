// Queues: the tree with quota, borrowing limit, weight and policies; live job counts per queue.

import { get, reportable } from "../api.js";
import { badge, h, messageRow, put, table, tableWrap } from "../dom.js";
import { amounts, LIVE_STATES, num } from "../format.js";
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
    ["Name", "Parent", "Guaranteed", "Borrowing limit", "Weight", "Running", "Pending", "Placement", "Enforcement"],
    "Queues",
  );
  tbody.append(messageRow(9, "Loading…"));
  put(
    root,
    h("h1", {}, "Queues"),
    h("p", { class: "muted" }, "Quota is in GPU-equivalents (a slice counts as the larger of its memory and compute shares), CPU cores and memory. Running and pending count live jobs."),
    error,
    tableWrap(tbl, "Queues table"),
  );

  const poller = poll(async () => {
    try {
      const [queues, page] = await Promise.all([get("/queues"), get("/jobs", { state: LIVE_STATES, limit: 500 })]);
      const running = new Map();
      const pending = new Map();
      for (const job of page.items) {
        const target = job.status.state === "PENDING" ? pending : running;
        target.set(job.queue, (target.get(job.queue) || 0) + 1);
      }
      const more = page.continue ? "+" : "";
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
          ),
          h("td", {}, q.spec.parent || "–"),
          h("td", { class: "nowrap" }, amounts(q.spec.guaranteed)),
          h("td", { class: "nowrap" }, amounts(q.spec.borrowing_limit)),
          h("td", {}, num(q.spec.weight, 2)),
          h("td", { class: "num" }, `${running.get(q.name) || 0}${more}`),
          h("td", { class: "num" }, `${pending.get(q.name) || 0}${more}`),
          h("td", {}, q.spec.placement || "inherited"),
          h(
            "td",
            { class: "nowrap" },
            badge(`memory ${q.spec.enforcement?.memory || "inherited"}`, "plain"),
            " ",
            badge(`compute ${q.spec.enforcement?.compute || "inherited"}`, "plain"),
          ),
        ),
      );
      put(tbody, ...(rows.length ? rows : [messageRow(9, "No queues.")]));
      error.hidden = true;
    } catch (err) {
      if (!reportable(err)) return;
      error.textContent = `Could not load queues: ${err.message}`;
      error.hidden = false;
    }
  }, 5000);
  return () => poller.stop();
}
