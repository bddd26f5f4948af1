// Submit a job: one task group; problem+json field errors are shown next to their fields.

import { get, post, reportable } from "../api.js";
import { h, put } from "../dom.js";
import { canSubmit, session } from "../session.js";
import { split, SplitError } from "../shell.js";
import { toast } from "../ui.js";

export const title = "Submit a job";

// form field -> the API field path its errors name
const PATHS = {
  name: "name",
  project: "project",
  queue: "queue",
  command: "groups.0.command",
  workers: "groups.0.replicas",
  gpu_memory: "groups.0.resources.gpu_memory",
  gpu_compute: "groups.0.resources.gpu_compute",
  gpus: "groups.0.resources.gpus",
  cpu: "groups.0.resources.cpu",
  memory: "groups.0.resources.memory",
  priority: "priority",
  env: "groups.0.env",
};

// slots for errors about several fields together, and the inputs such an error marks
const SHARED = { "groups.0.resources": ["gpu_memory", "gpu_compute", "gpus"], "groups.0": [] };

function errorSlot(path, id) {
  return h("p", { class: "field-error", dataset: { field: path }, id });
}

function field(name, label, control, help) {
  const errorId = `${name}-error`;
  const helpId = help ? `${name}-help` : null;
  control.id = control.id || `f-${name}`;
  control.name = name;
  control.setAttribute("aria-describedby", [helpId, errorId].filter(Boolean).join(" "));
  return h(
    "div",
    { class: "field", dataset: { for: name } },
    h("label", { for: control.id }, label),
    control,
    help ? h("p", { class: "help", id: helpId }, help) : null,
    errorSlot(PATHS[name], errorId),
  );
}

const text = (attrs = {}) => h("input", { type: "text", autocomplete: "off", spellcheck: "false", ...attrs });

/** Typed numbers go as numbers; anything else as typed, so the API names what is wrong with it. */
function numberOrText(value) {
  const v = value.trim();
  return v !== "" && /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
}

export function parseEnv(textValue) {
  const env = {};
  textValue.split(/\r?\n/).forEach((line, i) => {
    const trimmed = line.trim();
    if (!trimmed || trimmed.startsWith("#")) return;
    const at = trimmed.indexOf("=");
    if (at <= 0) throw new Error(`line ${i + 1}: expected KEY=VALUE, got ${JSON.stringify(trimmed)}`);
    env[trimmed.slice(0, at).trim()] = trimmed.slice(at + 1);
  });
  return env;
}

export function mount(root, { navigate }) {
  const info = session();
  const inputs = {
    name: text({ placeholder: "generated when empty", maxlength: "63" }),
    project: h("select", {}),
    queue: h("select", {}, h("option", { value: "" }, "(the project's default)")),
    command: text({ placeholder: "python train.py --epochs 3", required: true }),
    workers: text({ inputmode: "numeric", value: "1" }),
    gpu_memory: text({ placeholder: "e.g. 4Gi" }),
    gpu_compute: text({ inputmode: "numeric", placeholder: "1–100" }),
    gpus: text({ inputmode: "decimal", placeholder: "e.g. 1, 2 or 0.5" }),
    cpu: text({ inputmode: "decimal", placeholder: "1" }),
    memory: text({ placeholder: "1Gi" }),
    priority: text({ list: "priority-classes", value: "normal" }),
    env: h("textarea", { rows: "3", spellcheck: "false", placeholder: "KEY=VALUE, one a line" }),
  };
  const general = h("div", { class: "form-errors", id: "form-errors", role: "alert" });
  const submit = h("button", { id: "submit", type: "submit" }, "Submit job");
  const form = h(
    "form",
    { id: "submit-form", class: "card form", novalidate: true },
    h("datalist", { id: "priority-classes" }, ["low", "normal", "high"].map((p) => h("option", { value: p }))),
    general,
    h(
      "div",
      { class: "grid" },
      field("name", "Name", inputs.name, "Lowercase letters, digits and '-'."),
      field("project", "Project", inputs.project),
      field("queue", "Queue", inputs.queue),
      field("priority", "Priority", inputs.priority, "low, normal, high, or a number."),
    ),
    field("command", "Command", inputs.command, "Split like a shell line; quotes are respected, nothing is expanded."),
    h(
      "fieldset",
      { class: "grid" },
      h("legend", {}, "Each worker gets"),
      field("workers", "Workers", inputs.workers, "Tasks placed together; rank 0 is the master."),
      field("gpu_memory", "GPU memory", inputs.gpu_memory, "A slice: memory and/or compute…"),
      field("gpu_compute", "GPU compute %", inputs.gpu_compute),
      field("gpus", "Whole GPUs", inputs.gpus, "…or whole GPUs (a fraction < 1 takes a share of both)."),
      field("cpu", "CPU", inputs.cpu),
      field("memory", "Memory", inputs.memory),
      h("div", { class: "field span-all" }, errorSlot("groups.0.resources", "resources-error"), errorSlot("groups.0", "group-error")),
    ),
    field("env", "Environment", inputs.env),
    h("div", { class: "actions" }, submit, h("a", { href: "#/jobs", class: "button secondary" }, "Back to jobs")),
  );
  put(root, h("h1", {}, "Submit a job"), form);

  let projects = [];
  function fillQueues() {
    const project = projects.find((p) => p.name === inputs.project.value);
    const chosen = inputs.queue.value;
    put(inputs.queue, h("option", { value: "" }, project ? `(default: ${project.default_queue})` : "(the project's default)"));
    for (const q of project ? project.queues : []) inputs.queue.append(h("option", { value: q }, q));
    if ([...inputs.queue.options].some((o) => o.value === chosen)) inputs.queue.value = chosen;
  }
  inputs.project.addEventListener("change", fillQueues);

  get("/projects")
    .catch(() => Object.keys((info && info.projects) || {}).map((name) => ({ name, queues: [], default_queue: "" })))
    .then((list) => {
      projects = list.filter((p) => canSubmit(p.name));
      if (!projects.length) projects = list;
      put(inputs.project, projects.map((p) => h("option", { value: p.name }, p.name)));
      const preferred = projects.find((p) => p.name === "default") || projects[0];
      if (preferred) inputs.project.value = preferred.name;
      fillQueues();
    });

  function clearErrors() {
    for (const slot of form.querySelectorAll(".field-error")) slot.textContent = "";
    for (const dynamic of general.querySelectorAll(".field-error")) dynamic.remove();
    general.replaceChildren();
    for (const el of Object.values(inputs)) el.removeAttribute("aria-invalid");
  }

  /** Put each error by the field it names (the closest one, by path prefix), else at the top. */
  function showErrors(errors, detail) {
    let firstInvalid = null;
    const slots = [...form.querySelectorAll(".field-error[data-field]")];
    for (const err of errors) {
      const path = err.field || "body";
      let slot = slots.find((s) => s.dataset.field === path);
      if (!slot) {
        slot = slots
          .filter((s) => path.startsWith(`${s.dataset.field}.`))
          .sort((a, b) => b.dataset.field.length - a.dataset.field.length)[0];
      }
      if (!slot) {
        slot = errorSlot(path);
        slot.classList.add("general");
        general.append(slot);
        slots.push(slot);
      }
      slot.textContent = slot.textContent ? `${slot.textContent}; ${err.message}` : err.message;
      const names = SHARED[slot.dataset.field] || Object.keys(PATHS).filter((k) => PATHS[k] === slot.dataset.field);
      for (const name of names) {
        inputs[name].setAttribute("aria-invalid", "true");
        firstInvalid = firstInvalid || inputs[name];
      }
    }
    if (!errors.length && detail) general.append(h("p", { class: "form-error" }, detail));
    (firstInvalid || submit).focus();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const v = (name) => inputs[name].value.trim();
    let command;
    let env;
    const local = [];
    try {
      command = split(inputs.command.value);
      if (!command.length) local.push({ field: PATHS.command, message: "enter the command to run" });
    } catch (err) {
      if (!(err instanceof SplitError)) throw err;
      local.push({ field: PATHS.command, message: err.message });
    }
    try {
      env = parseEnv(inputs.env.value);
    } catch (err) {
      local.push({ field: PATHS.env, message: err.message });
    }
    if (local.length) {
      showErrors(local);
      return;
    }
    const res = {};
    for (const key of ["gpu_memory", "memory"]) if (v(key)) res[key] = v(key);
    for (const key of ["gpu_compute", "gpus", "cpu"]) if (v(key)) res[key] = numberOrText(v(key));
    const group = { name: "worker", replicas: v("workers") ? numberOrText(v("workers")) : 1, command, env, resources: res };
    const body = { project: inputs.project.value || "default", groups: [group] };
    if (v("name")) body.name = v("name");
    if (inputs.queue.value) body.queue = inputs.queue.value;
    if (v("priority")) body.priority = numberOrText(v("priority"));
    submit.disabled = true;
    submit.textContent = "Submitting…";
    try {
      const job = await post("/jobs", body);
      toast(`Submitted ${job.name}.`, "success");
      navigate(`/jobs/${encodeURIComponent(job.id)}`);
    } catch (err) {
      if (!reportable(err)) return;
      showErrors(err.errors, err.detail || err.message);
      toast(`Not submitted: ${err.detail || err.message}`, "error");
    } finally {
      submit.disabled = false;
      submit.textContent = "Submit job";
    }
  });
  inputs.name.focus();
  return null;
}
