// Job detail: spec, state and pending reason, tasks, GPU usage sparklines, live logs, events.

import { del, enc, get, post, reportable } from "../api.js";
import { badge, h, messageRow, put, table, tableWrap } from "../dom.js";
import { age, clock, gpuRequest, mib, num, pct, TERMINAL_STATES, time } from "../format.js";
import { poll } from "../poll.js";
import { join } from "../shell.js";
import { confirmDialog, toast, toastError } from "../ui.js";
import { logsPanel } from "./joblogs.js";
import { usagePanel } from "./jobusage.js";

export const title = "Job";

function dl(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))),
  );
}

function summary(job) {
  const st = job.status;
  const spec = job.spec;
  return dl([
    ["Project", job.project],
    ["Queue", job.queue],
    ["Owner", job.owner],
    ["Kind", spec.kind],
    ["Priority", String(spec.priority)],
    ["Preemptible", spec.preemptible ? "yes" : null],
    ["Attempt", String(st.attempt)],
    ["Submitted", h("time", { datetime: st.submitted_at, title: time(st.submitted_at) }, `${age(st.submitted_at)} ago`)],
    ["Started", st.started_at ? h("time", { datetime: st.started_at }, time(st.started_at)) : null],
    ["Finished", st.finished_at ? h("time", { datetime: st.finished_at }, time(st.finished_at)) : null],
    ["Exit code", st.exit_code === null || st.exit_code === undefined ? null : String(st.exit_code)],
    ["Reason", st.reason ? `${st.reason}${st.message ? `: ${st.message}` : ""}` : null],
    ["Master", st.master ? `${st.master.address}:${st.master.port} (${st.master.node})` : null],
    ["Workers", st.workers === null || st.workers === undefined ? null : String(st.workers)],
    ["Deadline", spec.deadline || null],
    ["Datasets", (spec.data || []).map((d) => `${d.dataset} → ${d.path}`).join(", ") || null],
    ["Job id", h("code", {}, job.id)],
  ]);
}

function resources(r) {
  const parts = [gpuRequest(r)];
  if (r.gpu_models && r.gpu_models.length) parts.push(`models ${r.gpu_models.join("/")}`);
  parts.push(`${num(r.cpu, 2)} CPU`, mib(r.memory));
  return parts.join(" · ");
}

function specSection(job) {
  return job.spec.groups.map((g) =>
    h(
      "div",
      { class: "group-spec" },
      h("h3", {}, `${g.name} × ${g.replicas}${g.min_available && g.min_available !== g.replicas ? ` (gang ${g.min_available})` : ""}`),
      dl([
        ["Command", h("code", { class: "command" }, join(g.command))],
        ["Resources", resources(g.resources || {})],
        ["Image", g.image || null],
        ["Working dir", g.working_dir || null],
        [
          "Env",
          Object.keys(g.env || {}).length
            ? h("code", { class: "env" }, Object.entries(g.env).map(([k, v]) => `${k}=${v}`).join("\n"))
            : null,
        ],
      ]),
    ),
  );
}

function tasksTable(job) {
  const { table: tbl, tbody } = table(
    "tasks-table",
    ["Task", "Index", "Node", "State", "Exit code", "GPU slice", "Started", "Message"],
    "Tasks",
  );
  const slices = new Map();
  for (const a of job.allocations || []) {
    if (!slices.has(a.task_id)) slices.set(a.task_id, []);
    slices.get(a.task_id).push(a);
  }
  const tasks = (job.tasks || []).slice().sort((a, b) => a.group.localeCompare(b.group) || a.index - b.index);
  if (!tasks.length) tbody.append(messageRow(8, "No tasks yet."));
  for (const t of tasks) {
    const alloc = (slices.get(t.id) || [])
      .map((a) => `${a.mig_instance ? `MIG ${a.mig_instance}` : String(a.gpu_uuid || "–").slice(0, 12)} · ${mib(a.memory_mib)} · ${pct(a.compute_pct)}${a.tier ? ` · ${a.tier}` : ""}`)
      .join("; ");
    tbody.append(
      h(
        "tr",
        { dataset: { task: `${t.group}-${t.index}` } },
        h("td", { class: "nowrap" }, `${t.group}-${t.index}`),
        h("td", { class: "index" }, String(t.index)),
        h("td", {}, t.node || "–"),
        h("td", { class: "state" }, badge(t.state)),
        h("td", { class: "exit-code" }, t.exit_code === null || t.exit_code === undefined ? "–" : String(t.exit_code)),
        h("td", { class: "small" }, alloc || "–"),
        h("td", { class: "nowrap" }, t.started_at ? clock(t.started_at) : "–"),
        h("td", { class: "muted small" }, [t.reason, t.message].filter(Boolean).join(": ")),
      ),
    );
  }
  return tableWrap(tbl, "Tasks table");
}

function eventItems(events) {
  if (!events.length) return [h("li", { class: "muted" }, "No events yet.")];
  return events
    .slice()
    .reverse()
    .map((e) =>
      h(
        "li",
        { class: `event event-${String(e.type).toLowerCase()}`, dataset: { reason: e.reason } },
        h("time", { datetime: e.at, title: time(e.at) }, clock(e.at)),
        badge(e.reason, "reason"),
        e.to_state ? h("span", { class: "event-transition" }, `${e.from_state || "–"} → ${e.to_state}`) : null,
        h("span", { class: "event-message" }, e.message),
      ),
    );
}

export function mount(root, { params, navigate }) {
  const jobId = params[0];
  const name = h("span", {}, jobId);
  const stateEl = h("span", { id: "job-state", class: "badge", role: "status" }, "…");
  const cancel = h("button", { id: "cancel-job", type: "button", class: "secondary", disabled: true }, "Cancel job");
  const remove = h("button", { id: "delete-job", type: "button", class: "danger", disabled: true }, "Delete");
  const pending = h("p", { id: "pending-reason", class: "banner warn", hidden: true });
  const error = h("p", { class: "banner error", role: "alert", hidden: true });
  const summaryBox = h("div", { id: "job-summary" });
  const specBox = h("div", { id: "job-spec" });
  const tasksBox = h("div", { id: "job-tasks" }, tableWrap(table("tasks-table", ["Task"], "Tasks").table, "Tasks table"));
  const events = h("ol", { id: "events", class: "events" }, h("li", { class: "muted" }, "Loading…"));
  const logs = logsPanel(jobId);
  const usage = usagePanel(jobId);

  put(
    root,
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / "),
    h("div", { class: "page-head" }, h("h1", {}, name), stateEl, h("div", { class: "head-actions" }, cancel, remove)),
    pending,
    error,
    h("div", { class: "two-col" },
      h("section", { "aria-labelledby": "status-heading" }, h("h2", { id: "status-heading" }, "Status"), summaryBox),
      h("section", { "aria-labelledby": "spec-heading" }, h("h2", { id: "spec-heading" }, "Spec"), specBox),
    ),
    h("section", { "aria-labelledby": "tasks-heading" }, h("h2", { id: "tasks-heading" }, "Tasks"), tasksBox),
    usage.element,
    logs.element,
    h("section", { "aria-labelledby": "events-heading" }, h("h2", { id: "events-heading" }, "Events"), events),
  );

  let job = null;
  let shownRevision = null;
  let eventsKey = "";
  let usagePoller = null;
  let usageFinal = false;

  function renderJob(j) {
    job = j;
    const state = j.status.state;
    const terminal = TERMINAL_STATES.includes(state);
    name.textContent = j.name;
    document.title = `${j.name} · Tessera`;
    stateEl.textContent = state;
    stateEl.className = `badge state-${state.toLowerCase()}`;
    cancel.disabled = terminal;
    remove.disabled = false;
    const reason = j.status.pending_reason;
    if (state === "PENDING" && reason) {
      pending.textContent = `${reason.code}: ${reason.message}`;
      pending.hidden = false;
    } else if (state === "PENDING") {
      pending.textContent = "Waiting for the scheduler.";
      pending.hidden = false;
    } else {
      pending.textContent = "";
      pending.hidden = true;
    }
    if (shownRevision !== j.revision) {
      shownRevision = j.revision;
      put(summaryBox, summary(j));
      if (!specBox.firstChild) put(specBox, ...specSection(j));
      put(tasksBox, tasksTable(j));
    }
    logs.update(j);
    usage.update(j);
    if (terminal && (usagePoller || !usageFinal)) {
      // one last reading, then no more polling: an ended job's slices are released
      if (usagePoller) usagePoller.stop();
      usagePoller = null;
      usageFinal = true;
      usage.refresh();
    } else if (!terminal && !usagePoller) {
      usageFinal = false;
      usagePoller = poll(usage.refresh, 2000);
    }
  }

  let gone = false;
  async function refresh() {
    if (gone) return; // deleted (404): asking again would only be refused
    try {
      const [j, evs] = await Promise.all([get(`/jobs/${enc(jobId)}`), get(`/jobs/${enc(jobId)}/events`)]);
      renderJob(j);
      const key = `${evs.length}:${evs.length ? evs[evs.length - 1].id : ""}`;
      if (key !== eventsKey) {
        eventsKey = key;
        put(events, ...eventItems(evs));
      }
      error.hidden = true;
    } catch (err) {
      if (!reportable(err)) return;
      error.textContent = err.status === 404 ? `No job ${jobId}: it may have been deleted.` : `Could not refresh: ${err.message}`;
      error.hidden = false;
      if (err.status === 404) {
        gone = true;
        logs.stop();
        stateEl.textContent = "gone";
        cancel.disabled = true;
        remove.disabled = true;
      }
    }
  }

  const poller = poll(refresh, 2000);

  cancel.addEventListener("click", async () => {
    if (!job) return;
    const ok = await confirmDialog(`Cancel job ${job.name}? Its running tasks are stopped.`, {
      yes: "Cancel job",
      no: "Keep it",
      danger: true,
    });
    if (!ok) return;
    cancel.disabled = true;
    try {
      await post(`/jobs/${enc(job.id)}/cancel`, { message: "" });
      toast(`Cancelled ${job.name}.`, "success");
    } catch (err) {
      if (reportable(err)) toastError(err, "Cancel");
    }
    poller.now();
  });

  remove.addEventListener("click", async () => {
    if (!job) return;
    const ok = await confirmDialog(`Delete job ${job.name}? A live job is cancelled first; this cannot be undone.`, {
      yes: "Delete job",
      no: "Keep it",
      danger: true,
    });
    if (!ok) return;
    try {
      await del(`/jobs/${enc(job.id)}`);
      toast(`Deleted ${job.name}.`, "success");
      navigate("/jobs");
    } catch (err) {
      if (reportable(err)) toastError(err, "Delete");
    }
  });

  return () => {
    poller.stop();
    if (usagePoller) usagePoller.stop();
    logs.stop();
  };
}
