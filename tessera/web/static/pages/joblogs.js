// A job page's live logs: a task selector, a Follow toggle, and a streamed <pre>.

import { enc, request } from "../api.js";
import { h, put } from "../dom.js";

const MAX_CHARS = 2_000_000;
const KEEP_CHARS = 1_500_000;
const TAIL = 5000;
const RETRY_MS = 3000;

const TERMINAL = ["SUCCEEDED", "FAILED", "CANCELLED"];

/** A task has a log on its node once it has started there. */
function hasOutput(task) {
  return Boolean(task.node) && (task.state === "RUNNING" || Boolean(task.started_at));
}

function taskKey(task, multiGroup) {
  return multiGroup ? `${task.group}:${task.index}` : String(task.index);
}

export function logsPanel(jobId) {
  const select = h("select", { id: "task-index", name: "task" });
  const follow = h("input", { id: "follow", type: "checkbox", checked: true });
  const reload = h("button", { type: "button", class: "secondary small", id: "reload-logs" }, "Reload");
  const status = h("p", { id: "logs-status", class: "muted small", "aria-live": "polite" });
  const text = document.createTextNode("");
  const pre = h("pre", { id: "logs", class: "logs", tabindex: "0", "aria-label": "Task output" }, text);
  const element = h(
    "section",
    { "aria-labelledby": "logs-heading", class: "logs-section" },
    h(
      "div",
      { class: "section-head" },
      h("h2", { id: "logs-heading" }, "Logs"),
      h(
        "div",
        { class: "log-controls" },
        h("label", { for: "task-index" }, "Task"),
        select,
        h("label", { class: "inline" }, follow, " Follow"),
        reload,
      ),
    ),
    status,
    pre,
  );

  let controller = null;
  let state = "idle"; // idle | waiting | streaming | ended | error
  let retryAt = 0;
  let startedAttempt = null;
  let multiGroup = false;
  let optionsKey = "";
  let lastJob = null;

  function append(chunk) {
    if (!chunk) return;
    text.appendData(chunk);
    if (text.length > MAX_CHARS) text.deleteData(0, text.length - KEEP_CHARS);
    if (follow.checked) pre.scrollTop = pre.scrollHeight;
  }

  function stop() {
    if (controller) controller.abort();
    controller = null;
  }

  function selectedTask() {
    const key = select.value;
    const tasks = (lastJob && lastJob.tasks) || [];
    return tasks.find((t) => taskKey(t, multiGroup) === key) || null;
  }

  function start() {
    stop();
    text.data = "";
    const key = select.value;
    if (!key) {
      state = "idle";
      status.textContent = "This job has no tasks yet.";
      return;
    }
    const task = selectedTask();
    if (task && !hasOutput(task)) {
      // its node has no log for it before it starts: asking would only be refused; update() starts it
      state = "waiting";
      status.textContent = TERMINAL.includes(task.state)
        ? "The task never started, so it has no output."
        : "Waiting for the task to start; its output appears here.";
      return;
    }
    const [group, index] = key.includes(":") ? key.split(":") : [null, key];
    const ctl = new AbortController();
    controller = ctl;
    state = "streaming";
    startedAttempt = lastJob ? lastJob.status.attempt : null;
    status.textContent = follow.checked ? "Following…" : "Loading…";
    (async () => {
      try {
        const res = await request("GET", `/jobs/${enc(jobId)}/logs`, {
          params: { group, index, follow: follow.checked ? "true" : "false", tail: TAIL },
          raw: true,
          signal: ctl.signal,
        });
        if (controller === ctl) status.textContent = follow.checked ? "Following (live)." : "";
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          append(decoder.decode(value, { stream: true }));
        }
        append(decoder.decode());
        if (controller === ctl) {
          controller = null;
          state = "ended";
          status.textContent = follow.checked ? "End of output (the task has finished)." : "";
          if (!text.length) status.textContent = "No output.";
        }
      } catch (err) {
        if (err && err.name === "AbortError") return;
        if (controller !== ctl) return;
        controller = null;
        state = "error";
        retryAt = Date.now() + RETRY_MS;
        status.textContent = err.status === 401 ? "" : `No logs: ${err.message}`;
      }
    })();
  }

  select.addEventListener("change", start);
  reload.addEventListener("click", start);
  follow.addEventListener("change", () => {
    if (follow.checked) start();
    else {
      stop();
      if (state === "streaming") state = "ended";
      status.textContent = "Paused: turn Follow on to stream again.";
    }
  });

  /** Called with every fresh copy of the job: keeps the task list current, retries when useful. */
  function update(job) {
    lastJob = job;
    const tasks = (job.tasks || []).slice().sort((a, b) => a.group.localeCompare(b.group) || a.index - b.index);
    multiGroup = new Set(tasks.map((t) => t.group)).size > 1;
    const key = tasks.map((t) => `${t.group}:${t.index}:${t.node || ""}:${t.state}`).join("|");
    const first = optionsKey === "";
    if (key !== optionsKey) {
      const chosen = select.value;
      put(
        select,
        tasks.map((t) =>
          h(
            "option",
            { value: taskKey(t, multiGroup) },
            `${t.group}-${t.index}${t.node ? ` on ${t.node}` : ""} (${t.state.toLowerCase()})`,
          ),
        ),
      );
      if (chosen && [...select.options].some((o) => o.value === chosen)) select.value = chosen;
      optionsKey = key || "none";
    }
    const live = !TERMINAL.includes(job.status.state);
    if (first) {
      start();
      return;
    }
    const now = Date.now();
    if (state === "error" && follow.checked && live && now >= retryAt) start();
    else if (state === "ended" && follow.checked && live && startedAttempt !== job.status.attempt) start();
    else if (state === "idle" && select.value) start();
    else if (state === "waiting" && selectedTask() && hasOutput(selectedTask())) start();
  }

  return { element, update, stop };
}
