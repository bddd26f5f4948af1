// The cluster GPU map: every node, every GPU a box, its slices as segments sized by memory share.

import { badge, h, meter, put } from "./dom.js";
import { age, hue, mib, pct } from "./format.js";

function sliceSegment(slice, gpuMemory) {
  const share = gpuMemory > 0 ? Math.max(0, Math.min(100, (slice.memory_mib / gpuMemory) * 100)) : 0;
  const used = slice.used_memory_mib === null || slice.used_memory_mib === undefined ? "unknown" : mib(slice.used_memory_mib);
  const summary =
    `${slice.job} (${slice.project}) ${slice.task}: ${mib(slice.memory_mib)}, ${pct(slice.compute_pct)} compute; ` +
    `used ${used}, share ${pct(slice.share_pct)}` +
    (slice.state && slice.state !== "ok" ? `; ${slice.state}` : "");
  const color = hue(slice.job);
  return h(
    "a",
    {
      class: `slice slice-${String(slice.state || "ok").replace(/[^a-z-]/g, "")}`,
      href: `#/jobs/${encodeURIComponent(slice.job_id)}`,
      dataset: { sliceJob: slice.job },
      title: summary,
      "aria-label": summary,
      style: { width: `${share}%`, "--slice-hue": String(color) },
    },
    h("span", { class: "slice-label" }, slice.job),
  );
}

function legend(slices) {
  const byJob = new Map();
  for (const s of slices) {
    const entry = byJob.get(s.job_id) || { name: s.job, count: 0, memory: 0, compute: 0 };
    entry.count += 1;
    entry.memory += s.memory_mib;
    entry.compute += s.compute_pct;
    byJob.set(s.job_id, entry);
  }
  return h(
    "ul",
    { class: "slice-legend" },
    [...byJob.values()].map((e) =>
      h(
        "li",
        { style: { "--slice-hue": String(hue(e.name)) } },
        h("span", { class: "swatch", "aria-hidden": "true" }),
        `${e.name}${e.count > 1 ? ` ×${e.count}` : ""} · ${mib(e.memory)} · ${pct(e.compute)}`,
      ),
    ),
  );
}

function gpuBox(gpu, usage, slices) {
  const memory = gpu.memory_mib;
  const allocatedMemory = usage ? usage.allocated_memory_mib : slices.reduce((n, s) => n + s.memory_mib, 0);
  const allocatedCompute = usage ? usage.allocated_compute_pct : slices.reduce((n, s) => n + s.compute_pct, 0);
  const free = memory - slices.reduce((n, s) => n + s.memory_mib, 0);
  const box = h(
    "div",
    { class: `gpu${usage && usage.lost ? " gpu-lost" : ""}`, dataset: { gpu: gpu.uuid }, role: "group", "aria-label": `GPU ${gpu.index} ${gpu.model}` },
    h(
      "div",
      { class: "gpu-head" },
      h("span", { class: "gpu-index" }, `GPU ${gpu.index}`),
      h("span", { class: "gpu-model", title: gpu.uuid }, gpu.model),
      h("span", { class: "gpu-mem" }, mib(memory)),
      gpu.mig_mode ? badge("MIG") : null,
      usage && usage.lost ? badge("lost") : null,
      usage && usage.tier ? h("span", { class: "tier", title: `tiers: ${(usage.tiers || []).join(", ")}` }, usage.tier) : null,
    ),
    h(
      "div",
      { class: "slices" },
      slices.map((s) => sliceSegment(s, memory)),
      free > 0 && slices.length ? h("span", { class: "slice-free", style: { width: `${(free / memory) * 100}%` } }) : null,
      slices.length ? null : h("span", { class: "slices-empty" }, "free"),
    ),
    slices.length ? legend(slices) : null,
    meter({ label: "Memory", capacity: memory, allocated: allocatedMemory, used: usage ? usage.used_memory_mib : null, format: mib }),
    meter({
      label: "Compute",
      capacity: 100,
      allocated: allocatedCompute,
      used: usage ? usage.utilization_pct : null,
      format: (v) => pct(v),
    }),
  );
  return box;
}

/**
 * Draw the map into `container` (#gpu-map).
 * nodes: [Node]; usages: Map node name -> NodeUsage or null (not reported yet).
 */
export function renderGpuMap(container, nodes, usages) {
  if (!nodes.length) {
    put(container, h("p", { class: "muted" }, "No nodes have registered yet. Start one with ", h("code", {}, "tessera node"), "."));
    return;
  }
  const cards = nodes.map((node) => {
    const usage = usages.get(node.name) || null;
    const gpus = (node.inventory && node.inventory.gpus) || [];
    const byUuid = new Map((usage ? usage.gpus : []).map((g) => [g.uuid, g]));
    const slicesOf = (uuid) => (usage ? usage.slices.filter((s) => s.gpu_uuid === uuid) : []);
    return h(
      "section",
      { class: "node-card", dataset: { node: node.name }, "aria-label": `Node ${node.name}` },
      h(
        "header",
        { class: "node-head" },
        h("h3", {}, node.name),
        badge(node.state),
        h("span", { class: "muted small" }, `heartbeat ${age(node.last_heartbeat_at)} ago`),
        usage && usage.device_error ? h("span", { class: "warn small" }, usage.device_error) : null,
        usage ? null : h("span", { class: "muted small" }, "· no usage reported yet"),
      ),
      gpus.length
        ? h("div", { class: "gpus" }, gpus.map((g) => gpuBox(g, byUuid.get(g.uuid), slicesOf(g.uuid))))
        : h("p", { class: "muted small" }, "No GPUs."),
    );
  });
  put(container, ...cards);
}
