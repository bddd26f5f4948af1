// Nodes: state and conditions (LogDiskFull...), GPUs, labels, heartbeat.

import { get, reportable } from "../api.js";
import { badge, h, messageRow, put, table, tableWrap } from "../dom.js";
import { age, mib, num, time } from "../format.js";
import { poll } from "../poll.js";

export const title = "Nodes";

function gpuSummary(gpus) {
  if (!gpus.length) return "none";
  const groups = new Map();
  for (const g of gpus) {
    const key = `${g.model} · ${mib(g.memory_mib)}${g.mig_mode ? " · MIG" : ""}`;
    groups.set(key, (groups.get(key) || 0) + 1);
  }
  return [...groups].map(([key, n]) => `${n} × ${key}`).join(", ");
}

export function mount(root) {
  const error = h("p", { class: "banner error", role: "alert", hidden: true });
  const { table: tbl, tbody } = table(
    "nodes-table",
    ["Name", "State", "GPUs", "CPU", "Memory", "Labels", "Last heartbeat", "Agent"],
    "Nodes",
  );
  tbody.append(messageRow(8, "Loading…"));
  put(root, h("h1", {}, "Nodes"), error, tableWrap(tbl, "Nodes table"));

  const poller = poll(async () => {
    try {
      const nodes = (await get("/nodes")).sort((a, b) => a.name.localeCompare(b.name));
      const rows = nodes.map((n) => {
        const inv = n.inventory || {};
        const labels = Object.entries(n.labels || {});
        return h(
          "tr",
          { dataset: { node: n.name } },
          h("td", { class: "name" }, h("strong", {}, n.name)),
          h(
            "td",
            { class: "state" },
            badge(n.state),
            (inv.conditions || []).map((c) =>
              h("span", { class: "badge warn-badge condition", title: c.message || c.type, dataset: { condition: c.type } }, c.type),
            ),
          ),
          h(
            "td",
            {},
            gpuSummary(inv.gpus || []),
            inv.simulated ? h("span", { class: "badge plain" }, "simulated") : null,
          ),
          h("td", { class: "num" }, num(inv.cpu, 2)),
          h("td", { class: "nowrap" }, mib(inv.memory)),
          h("td", {}, labels.length ? labels.map(([k, v]) => h("span", { class: "label-chip" }, `${k}=${v}`)) : "–"),
          h(
            "td",
            { class: "nowrap" },
            n.last_heartbeat_at ? h("time", { datetime: n.last_heartbeat_at, title: time(n.last_heartbeat_at) }, `${age(n.last_heartbeat_at)} ago`) : "never",
          ),
          h(
            "td",
            { class: "small muted" },
            [inv.agent_version && `agent ${inv.agent_version}`, inv.driver_version && `driver ${inv.driver_version}`, inv.cuda_version && `CUDA ${inv.cuda_version}`]
              .filter(Boolean)
              .join(" · ") || "–",
          ),
        );
      });
      put(tbody, ...(rows.length ? rows : [messageRow(8, "No nodes have registered yet.")]));
      error.hidden = true;
    } catch (err) {
      if (!reportable(err)) return;
      error.textContent = `Could not load nodes: ${err.message}`;
      error.hidden = false;
    }
  }, 5000);
  return () => poller.stop();
}
