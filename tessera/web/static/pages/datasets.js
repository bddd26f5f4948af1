// Datasets: phase, source, how much is cached, hit ratio, and the latest load's progress.

import { enc, get, mapLimit, reportable } from "../api.js";
import { badge, h, messageRow, put, table, tableWrap } from "../dom.js";
import { age, bytes, duration, pct } from "../format.js";
import { poll } from "../poll.js";

export const title = "Datasets";

function progress(value, label) {
  const v = Math.max(0, Math.min(100, Number(value) || 0));
  return h(
    "span",
    { class: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": v.toFixed(0), "aria-label": label },
    h("span", { class: "progress-fill", style: { width: `${v}%` } }),
    h("span", { class: "progress-text" }, pct(v)),
  );
}

function loadCell(load) {
  if (!load) return "–";
  const parts = [h("span", {}, `#${load.number} `), badge(load.state), " "];
  if (load.state === "Running" || load.state === "Pending") {
    parts.push(progress(load.percent, `load ${load.number} progress`));
    if (load.eta_seconds !== null && load.eta_seconds !== undefined) parts.push(h("span", { class: "muted small" }, ` ETA ${duration(load.eta_seconds)}`));
  } else {
    parts.push(h("span", { class: "muted small" }, `${pct(load.percent)} · ${load.finished_at ? `${age(load.finished_at)} ago` : ""}`));
  }
  if (load.message) parts.push(h("div", { class: "muted small" }, load.message));
  return parts;
}

export function mount(root) {
  const error = h("p", { class: "banner error", role: "alert", hidden: true });
  const { table: tbl, tbody } = table(
    "datasets-table",
    ["Name", "Project", "Phase", "Source", "Size", "Cached", "Hit ratio", "Nodes", "Latest load"],
    "Datasets",
  );
  tbody.append(messageRow(9, "Loading…"));
  put(root, h("h1", {}, "Datasets"), error, tableWrap(tbl, "Datasets table"));

  const poller = poll(async () => {
    try {
      const datasets = (await get("/datasets")).sort((a, b) => a.project.localeCompare(b.project) || a.name.localeCompare(b.name));
      const loads = await mapLimit(datasets.slice(0, 100), 4, (d) => get(`/datasets/${enc(d.name)}/loads`, { project: d.project }));
      const rows = datasets.map((d, i) => {
        const list = loads[i] && loads[i].ok ? loads[i].value : [];
        const latest = list.reduce((best, l) => (!best || l.number > best.number ? l : best), null);
        const st = d.status || {};
        return h(
          "tr",
          { dataset: { dataset: d.name } },
          h("td", { class: "name" }, h("strong", {}, d.name)),
          h("td", {}, d.project),
          h("td", { class: "state", title: st.message || "" }, badge(st.phase || "Pending")),
          h("td", { class: "source" }, h("code", {}, d.spec.source)),
          h("td", { class: "nowrap" }, st.total_bytes === null || st.total_bytes === undefined ? "–" : `${bytes(st.total_bytes)} · ${st.total_files ?? "?"} files`),
          h("td", {}, progress(st.cached_percent, `${d.name} cached`)),
          h("td", { class: "num" }, st.hit_ratio === null || st.hit_ratio === undefined ? "–" : pct(st.hit_ratio * 100)),
          h("td", { class: "small" }, (st.nodes || []).map((n) => `${n.node} ${pct(n.cached_percent)}`).join(", ") || "–"),
          h("td", {}, loadCell(latest)),
        );
      });
      put(tbody, ...(rows.length ? rows : [messageRow(9, "No datasets.")]));
      error.hidden = true;
    } catch (err) {
      if (!reportable(err)) return;
      error.textContent = `Could not load datasets: ${err.message}`;
      error.hidden = false;
    }
  }, 5000);
  return () => poller.stop();
}
