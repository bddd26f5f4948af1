// A job page's GPU usage: per slice, sparklines of memory used and compute share (vs allocation).

import { enc, get, reportable } from "../api.js";
import { h, put } from "../dom.js";
import { mib, pct } from "../format.js";
import { sparkline } from "../sparkline.js";

const POINTS = 60;
const histories = new Map(); // job id -> Map(slice id -> {memory: [], compute: [], slice})

function historyOf(jobId) {
  if (!histories.has(jobId)) {
    histories.set(jobId, new Map());
    while (histories.size > 8) histories.delete(histories.keys().next().value);
  }
  return histories.get(jobId);
}

function push(list, value) {
  list.push(value);
  if (list.length > POINTS) list.splice(0, list.length - POINTS);
}

function ratio(used, allocated) {
  if (used === null || used === undefined || !allocated) return null;
  return (used / allocated) * 100;
}

function card(entry, node, ended) {
  const sl = entry.slice;
  const memText = `memory ${sl.used_memory_mib === null || sl.used_memory_mib === undefined ? "–" : mib(sl.used_memory_mib)} of ${mib(sl.memory_mib)}`;
  const cpuText = `compute ${pct(sl.share_pct)} of ${pct(sl.compute_pct)}`;
  const label = `${sl.task}: ${memText}, ${cpuText}`;
  return h(
    "figure",
    { class: `spark-card${ended ? " ended" : ""}`, dataset: { slice: sl.slice_id } },
    h(
      "figcaption",
      {},
      h("strong", {}, sl.task),
      h("span", { class: "muted small", title: sl.gpu_uuid }, ` ${node ? `${node} · ` : ""}${sl.mig_instance ? `MIG ${sl.mig_instance}` : String(sl.gpu_uuid).slice(0, 12)}`),
      h("span", { class: "muted small" }, ` · ${sl.tier}`),
      sl.state && sl.state !== "ok" ? h("span", { class: "badge warn-badge" }, sl.state) : null,
      ended ? h("span", { class: "badge" }, "ended") : null,
    ),
    sparkline({
      label,
      points: POINTS,
      series: [
        { values: entry.memory, cls: "spark-memory" },
        { values: entry.compute, cls: "spark-compute" },
      ],
    }),
    h(
      "p",
      { class: "spark-values small" },
      h("span", { class: "key key-memory" }, memText),
      h("span", { class: "key key-compute" }, cpuText),
      sl.throttled_pct ? h("span", { class: "warn" }, `throttled ${pct(sl.throttled_pct)}`) : null,
    ),
  );
}

export function usagePanel(jobId) {
  const history = historyOf(jobId);
  const box = h("div", { id: "sparklines", class: "sparklines" }, h("p", { class: "muted" }, "Loading…"));
  const note = h("p", { class: "muted small" }, "Used as a share of the allocation (dashed line: the limit), last ~2 minutes.");
  const element = h(
    "section",
    { "aria-labelledby": "usage-heading" },
    h("h2", { id: "usage-heading" }, "GPU usage"),
    note,
    box,
  );
  let nodes = new Map();

  function render(current) {
    const live = current.length > 0;
    const ids = live ? current.map((s) => s.slice_id) : [...history.keys()];
    if (!ids.length) {
      put(box, h("p", { class: "muted" }, "No GPU slices: the job is not placed, or asks for no GPU."));
      return;
    }
    put(box, ids.map((id) => card(history.get(id), nodes.get(id), !live)));
  }

  async function refresh() {
    try {
      const usage = await get(`/jobs/${enc(jobId)}/usage`);
      for (const sl of usage.slices) {
        if (!history.has(sl.slice_id)) history.set(sl.slice_id, { memory: [], compute: [], slice: sl });
        const entry = history.get(sl.slice_id);
        entry.slice = sl;
        push(entry.memory, ratio(sl.used_memory_mib, sl.memory_mib));
        push(entry.compute, ratio(sl.share_pct, sl.compute_pct));
      }
      render(usage.slices);
    } catch (err) {
      if (reportable(err)) put(box, h("p", { class: "muted" }, `No usage: ${err.message}`));
    }
  }

  /** The job's allocations tell which node each slice is on. */
  function update(job) {
    nodes = new Map((job.allocations || []).map((a) => [a.id, a.node]));
  }

  return { element, refresh, update };
}
