// Overview: job counts by state, the cluster GPU map (allocated vs used), recent events.

import { enc, get, reportable } from "../api.js";
import { badge, h, put } from "../dom.js";
import { clock, JOB_STATES, mib, pct } from "../format.js";
import { renderGpuMap } from "../gpumap.js";
import { poll } from "../poll.js";

export const title = "Overview";

const COUNT_EVERY = 3; // job counts and events every third refresh (~6 s)

async function usageOf(node) {
  // a node whose row was never written after it registered has not heartbeated, so has no usage
  if (node.updated_at === node.created_at) return null;
  try {
    return await get(`/nodes/${enc(node.name)}/usage`);
  } catch (err) {
    if (err.status === 404) return null;
    throw err;
  }
}

function renderCounts(container, jobs, more) {
  const counts = new Map(JOB_STATES.map((s) => [s, 0]));
  for (const job of jobs) counts.set(job.status.state, (counts.get(job.status.state) || 0) + 1);
  put(
    container,
    JOB_STATES.map((state) =>
      h(
        "a",
        {
          class: `stat stat-${state.toLowerCase()}${counts.get(state) ? "" : " zero"}`,
          href: `#/jobs?state=${state}`,
          dataset: { state },
        },
        h("span", { class: "stat-value" }, String(counts.get(state)) + (more ? "+" : "")),
        h("span", { class: "stat-label" }, state.toLowerCase()),
      ),
    ),
  );
}

function renderTotals(container, nodes, usages) {
  let gpus = 0;
  let memory = 0;
  let allocatedMemory = 0;
  let allocatedCompute = 0;
  let usedMemory = 0;
  for (const node of nodes) {
    const usage = usages.get(node.name);
    for (const gpu of node.inventory.gpus || []) {
      gpus += 1;
      memory += gpu.memory_mib;
      const u = usage && usage.gpus.find((g) => g.uuid === gpu.uuid);
      if (u) {
        allocatedMemory += u.allocated_memory_mib;
        allocatedCompute += u.allocated_compute_pct;
        usedMemory += u.used_memory_mib || 0;
      }
    }
  }
  const ready = nodes.filter((n) => n.state === "Ready").length;
  put(
    container,
    h("span", {}, `${ready}/${nodes.length} nodes ready`),
    h("span", {}, `${gpus} GPUs`),
    h("span", {}, `memory allocated ${mib(allocatedMemory)} of ${mib(memory)} (used ${mib(usedMemory)})`),
    h("span", {}, `compute allocated ${pct(gpus ? allocatedCompute / gpus : 0)}`),
  );
}

function renderEvents(container, events) {
  if (!events.length) {
    put(container, h("li", { class: "muted" }, "No events yet."));
    return;
  }
  put(
    container,
    events.map((e) =>
      h(
        "li",
        { class: `event event-${String(e.type).toLowerCase()}` },
        h("time", { datetime: e.at }, clock(e.at)),
        h("span", { class: "event-kind" }, `${e.kind}/${e.object_name}`),
        badge(e.reason, "reason"),
        h("span", { class: "event-message" }, e.message || (e.to_state ? `${e.from_state || "–"} → ${e.to_state}` : "")),
      ),
    ),
  );
}

/** Keep keyboard focus on the same slice across a redraw. */
function keepFocus(container, draw) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.getAttribute("title") : null;
  draw();
  if (key) {
    const again = [...container.querySelectorAll("a.slice")].find((a) => a.getAttribute("title") === key);
    if (again) again.focus();
  }
}

export function mount(root) {
  const error = h("p", { class: "banner error", role: "alert", hidden: true });
  const counts = h("div", { id: "job-counts", class: "stats", "aria-label": "Jobs by state" });
  const totals = h("p", { id: "cluster-totals", class: "totals muted" });
  const map = h("div", { id: "gpu-map", class: "gpu-map", "aria-busy": "true" }, h("p", { class: "muted" }, "Loading…"));
  const events = h("ol", { id: "recent-events", class: "events compact" });
  put(
    root,
    h("h1", {}, "Overview"),
    error,
    h("section", { "aria-labelledby": "jobs-heading" }, h("h2", { id: "jobs-heading" }, "Jobs"), counts),
    h(
      "section",
      { "aria-labelledby": "map-heading" },
      h("div", { class: "section-head" }, h("h2", { id: "map-heading" }, "GPU map"), h("span", { class: "legend small muted" },
        h("span", { class: "legend-alloc" }), "allocated ", h("span", { class: "legend-used" }), "used")),
      totals,
      map,
    ),
    h("section", { "aria-labelledby": "events-heading" }, h("h2", { id: "events-heading" }, "Recent events"), events),
  );

  let tick = 0;
  let eventsAfter = null;
  let recent = [];
  async function refreshEvents(revision) {
    // events come oldest first: read forward from a little before now, then from the last one seen
    let after = eventsAfter ?? Math.max(0, revision - 5000);
    for (let i = 0; i < 5; i += 1) {
      const batch = await get("/events", { after_revision: after, limit: 1000 });
      if (batch.length) {
        recent = recent.concat(batch).slice(-15);
        after = batch[batch.length - 1].revision;
      }
      if (batch.length < 1000) break;
    }
    eventsAfter = after;
    renderEvents(events, recent.slice().reverse());
  }

  const poller = poll(async () => {
    try {
      const slow = tick % COUNT_EVERY === 0;
      tick += 1;
      const nodesP = get("/nodes");
      const jobsP = slow ? get("/jobs", { limit: 500 }) : null;
      const nodes = await nodesP;
      nodes.sort((a, b) => a.name.localeCompare(b.name));
      const usageList = await Promise.all(nodes.map((n) => usageOf(n)));
      const usages = new Map(nodes.map((n, i) => [n.name, usageList[i]]));
      keepFocus(map, () => renderGpuMap(map, nodes, usages));
      map.setAttribute("aria-busy", "false");
      renderTotals(totals, nodes, usages);
      if (jobsP) {
        const page = await jobsP;
        renderCounts(counts, page.items, Boolean(page.continue));
        await refreshEvents(page.revision);
      }
      error.hidden = true;
    } catch (err) {
      if (!reportable(err)) return;
      error.textContent = `Could not refresh: ${err.message}`;
      error.hidden = false;
    }
  }, 2000);
  return () => poller.stop();
}
