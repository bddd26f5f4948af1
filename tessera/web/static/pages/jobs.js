// Jobs: filterable, auto-refreshing table with bulk cancel and delete.

import { del, enc, get, mapLimit, post, reportable } from "../api.js";
import { badge, h, messageRow, put, table, tableWrap } from "../dom.js";
import { age, JOB_STATES, jobGpuSummary, TERMINAL_STATES, time } from "../format.js";
import { poll } from "../poll.js";
import { confirmDialog, toast } from "../ui.js";

export const title = "Jobs";

const PAGE = 100;
const COLUMNS = 8;

function info(job) {
  const st = job.status;
  if (st.state === "PENDING" && st.pending_reason) return st.pending_reason.message || st.pending_reason.code;
  if (st.reason) return st.message ? `${st.reason}: ${st.message}` : st.reason;
  return st.message || "";
}

function option(value, label, selected) {
  return h("option", { value, selected }, label);
}

export function mount(root, { query }) {
  // each visit starts from the address: #/jobs?state=RUNNING&project=x&queue=y&q=z
  const filters = { states: new Set(), project: "", queue: "", q: query.get("q") || "", limit: PAGE };
  if (query.has("state")) filters.states = new Set(query.getAll("state").filter((s) => JOB_STATES.includes(s)));
  if (query.has("project")) filters.project = query.get("project");
  if (query.has("queue")) filters.queue = query.get("queue");

  const selected = new Set();
  const rows = new Map(); // job id -> {tr, ...cells}
  let jobs = [];
  let seq = 0;
  let applied = 0;

  const error = h("p", { class: "banner error", role: "alert", hidden: true });
  const search = h("input", {
    id: "job-search",
    type: "search",
    name: "q",
    placeholder: "name contains…",
    value: filters.q,
    maxlength: "63",
    autocomplete: "off",
  });
  const project = h("select", { id: "project-filter", name: "project" }, option("", "All projects", true));
  const queue = h("select", { id: "queue-filter", name: "queue" }, option("", "All queues", true));
  const states = h(
    "fieldset",
    { id: "state-filter", class: "chips" },
    h("legend", {}, "State"),
    JOB_STATES.map((state) =>
      h(
        "label",
        { class: "chip" },
        h("input", { type: "checkbox", name: "state", value: state, checked: filters.states.has(state) }),
        state.toLowerCase(),
      ),
    ),
  );
  const count = h("span", { id: "selected-count", class: "muted", "aria-live": "polite" });
  const bulkCancel = h("button", { id: "bulk-cancel", type: "button", class: "secondary", disabled: true }, "Cancel selected");
  const bulkDelete = h("button", { id: "bulk-delete", type: "button", class: "danger", disabled: true }, "Delete selected");
  const selectAll = h("input", { type: "checkbox", class: "select-all", "aria-label": "Select all shown jobs" });
  const { table: tbl, tbody } = table(
    "jobs-table",
    [selectAll, "Name", "Project", "Queue", "State", "GPU request", "Age", "Info"],
    "Jobs",
  );
  tbody.append(messageRow(COLUMNS, "Loading…"));
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Show more");

  put(
    root,
    h("div", { class: "page-head" }, h("h1", {}, "Jobs"), h("a", { class: "button", href: "#/submit" }, "Submit a job")),
    h(
      "form",
      { class: "filters", role: "search", "aria-label": "Filter jobs" },
      h("div", { class: "field" }, h("label", { for: "job-search" }, "Search"), search),
      h("div", { class: "field" }, h("label", { for: "project-filter" }, "Project"), project),
      h("div", { class: "field" }, h("label", { for: "queue-filter" }, "Queue"), queue),
      states,
    ),
    error,
    h("div", { class: "bulk", role: "toolbar", "aria-label": "Selected jobs" }, bulkCancel, bulkDelete, count),
    tableWrap(tbl, "Jobs table"),
    h("div", { class: "actions" }, more),
  );

  function syncSelection() {
    for (const id of [...selected]) if (!rows.has(id)) selected.delete(id);
    const n = selected.size;
    count.textContent = n ? `${n} selected` : "";
    bulkCancel.disabled = n === 0;
    bulkDelete.disabled = n === 0;
    selectAll.checked = n > 0 && n === rows.size;
    selectAll.indeterminate = n > 0 && n < rows.size;
  }

  function rowFor(job) {
    let row = rows.get(job.id);
    if (!row) {
      const check = h("input", { type: "checkbox", class: "select", "aria-label": `Select ${job.name}` });
      check.addEventListener("change", () => {
        if (check.checked) selected.add(job.id);
        else selected.delete(job.id);
        syncSelection();
      });
      row = {
        check,
        link: h("a", { href: `#/jobs/${enc(job.id)}` }),
        project: h("td"),
        queue: h("td"),
        state: h("td", { class: "state" }),
        gpu: h("td"),
        age: h("td", { class: "nowrap" }),
        info: h("td", { class: "info muted" }),
      };
      row.tr = h(
        "tr",
        { dataset: { job: job.name, id: job.id } },
        h("td", { class: "check" }, check),
        h("td", { class: "name" }, row.link),
        row.project,
        row.queue,
        row.state,
        row.gpu,
        row.age,
        row.info,
      );
      rows.set(job.id, row);
    }
    row.link.textContent = job.name;
    row.project.textContent = job.project;
    row.queue.textContent = job.queue;
    if (row.state.textContent !== job.status.state) put(row.state, badge(job.status.state));
    row.gpu.textContent = jobGpuSummary(job.spec);
    row.age.textContent = age(job.status.submitted_at || job.created_at);
    row.age.title = time(job.status.submitted_at || job.created_at);
    row.info.textContent = info(job);
    row.check.checked = selected.has(job.id);
    return row;
  }

  function render(page) {
    jobs = page.items;
    const seen = new Set(jobs.map((j) => j.id));
    for (const id of [...rows.keys()]) if (!seen.has(id)) rows.delete(id);
    const wanted = jobs.map((j) => rowFor(j).tr);
    if (!wanted.length) {
      put(tbody, messageRow(COLUMNS, filters.q || filters.states.size || filters.project || filters.queue ? "No jobs match these filters." : "No jobs yet."));
    } else {
      const current = [...tbody.children];
      if (current.length !== wanted.length || current.some((tr, i) => tr !== wanted[i])) {
        const active = document.activeElement;
        put(tbody, ...wanted);
        if (active && tbody.contains(active)) active.focus();
      }
    }
    more.hidden = !page.continue || filters.limit >= 500;
    syncSelection();
  }

  async function refresh() {
    const mine = ++seq;
    filters.q = search.value; // what is typed now, even while the debounce waits
    try {
      const page = await get("/jobs", {
        state: [...filters.states],
        project: filters.project,
        queue: filters.queue,
        q: filters.q.trim(),
        limit: filters.limit,
      });
      if (mine < applied) return;
      applied = mine;
      render(page);
      error.hidden = true;
    } catch (err) {
      if (!reportable(err) || mine < applied) return;
      error.textContent = `Could not load jobs: ${err.message}`;
      error.hidden = false;
    }
  }

  const poller = poll(refresh, 2000);

  let debounce = null;
  search.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      filters.q = search.value;
      poller.now();
    }, 250);
  });
  search.closest("form").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(debounce);
    filters.q = search.value;
    poller.now();
  });
  project.addEventListener("change", () => {
    filters.project = project.value;
    poller.now();
  });
  queue.addEventListener("change", () => {
    filters.queue = queue.value;
    poller.now();
  });
  states.addEventListener("change", () => {
    filters.states = new Set([...states.querySelectorAll("input[name=state]:checked")].map((i) => i.value));
    poller.now();
  });
  selectAll.addEventListener("change", () => {
    for (const id of rows.keys()) {
      if (selectAll.checked) selected.add(id);
      else selected.delete(id);
    }
    for (const row of rows.values()) row.check.checked = selectAll.checked;
    syncSelection();
  });
  more.addEventListener("click", () => {
    filters.limit = Math.min(500, filters.limit + PAGE);
    poller.now();
  });

  async function bulk(kind) {
    const chosen = jobs.filter((j) => selected.has(j.id));
    if (!chosen.length) return;
    const targets = kind === "cancel" ? chosen.filter((j) => !TERMINAL_STATES.includes(j.status.state)) : chosen;
    const names = chosen.map((j) => j.name);
    const list = names.length > 5 ? `${names.slice(0, 5).join(", ")} and ${names.length - 5} more` : names.join(", ");
    const plural = chosen.length === 1 ? "job" : `${chosen.length} jobs`;
    const ok = await confirmDialog(
      kind === "cancel"
        ? `Cancel ${plural} (${list})? Running tasks are stopped.`
        : `Delete ${plural} (${list})? Live ones are cancelled first; this cannot be undone.`,
      kind === "cancel"
        ? { yes: "Cancel jobs", no: "Keep them", danger: true }
        : { yes: "Delete jobs", no: "Keep them", danger: true },
    );
    if (!ok) return;
    bulkCancel.disabled = bulkDelete.disabled = true;
    const results = await mapLimit(targets, 4, (job) =>
      kind === "cancel" ? post(`/jobs/${enc(job.id)}/cancel`, { message: "" }) : del(`/jobs/${enc(job.id)}`),
    );
    const failed = results.filter((r) => !r.ok && reportable(r.error));
    const done = results.filter((r) => r.ok).length;
    const skipped = chosen.length - targets.length;
    const verb = kind === "cancel" ? "Cancelled" : "Deleted";
    let message = `${verb} ${done} job${done === 1 ? "" : "s"}.`;
    if (skipped) message += ` ${skipped} had already finished.`;
    toast(message, failed.length ? "info" : "success");
    for (const f of failed) toast(`${f.item.name}: ${f.error.message}`, "error");
    if (kind === "delete") for (const r of results) if (r.ok) selected.delete(r.item.id);
    poller.now();
  }
  bulkCancel.addEventListener("click", () => bulk("cancel"));
  bulkDelete.addEventListener("click", () => bulk("delete"));

  // filter choices
  Promise.all([get("/projects").catch(() => []), get("/queues").catch(() => [])]).then(([projects, queues]) => {
    for (const p of projects) project.append(option(p.name, p.name, p.name === filters.project));
    for (const q of queues) queue.append(option(q.name, q.name, q.name === filters.queue));
    if (filters.project && !projects.some((p) => p.name === filters.project)) project.append(option(filters.project, filters.project, true));
    if (filters.queue && !queues.some((q) => q.name === filters.queue)) queue.append(option(filters.queue, filters.queue, true));
  });

  return () => {
    poller.stop();
    clearTimeout(debounce);
  };
}
