// Formatting of quantities, times and requests, matching the CLI's spellings where it has them.

export function mib(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const n = Number(value);
  if (Math.abs(n) >= 1024 * 1024) return `${trim(n / (1024 * 1024))} TiB`;
  if (Math.abs(n) >= 1024) return `${trim(n / 1024)} GiB`;
  return `${Math.round(n)} MiB`;
}

export function bytes(value) {
  if (value === null || value === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let n = Number(value);
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i === 0 ? n : trim(n)} ${units[i]}`;
}

export function trim(n, digits = 1) {
  return Number(n.toFixed(digits)).toString();
}

export function pct(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return `${Number(value).toFixed(digits)}%`;
}

export function num(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return trim(Number(value), digits);
}

/** "12s", "5m", "3h", "2d" since an ISO time (or until, for a future one: "in 5m"). */
export function age(iso, now = Date.now()) {
  if (!iso) return "–";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "–";
  const seconds = Math.round((now - t) / 1000);
  const text = duration(Math.abs(seconds));
  return seconds < 0 ? `in ${text}` : text;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60 ? `${s % 60}s` : ""}`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60) ? `${Math.floor((s % 3600) / 60)}m` : ""}`;
  return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600) ? `${Math.floor((s % 86400) / 3600)}h` : ""}`;
}

export function time(iso) {
  if (!iso) return "–";
  const t = new Date(iso);
  return Number.isNaN(t.getTime()) ? "–" : t.toLocaleString();
}

export function clock(iso) {
  if (!iso) return "–";
  const t = new Date(iso);
  return Number.isNaN(t.getTime()) ? "–" : t.toLocaleTimeString();
}

/** What one task of a group asks of GPUs: "1 GPU", "0.5 GPU", "4 GiB · 30%", "MIG 1g.10gb", "no GPU". */
export function gpuRequest(resources) {
  const r = resources || {};
  if (r.mig_profile) return `MIG ${r.mig_profile}`;
  if (r.gpu_memory !== null && r.gpu_memory !== undefined || r.gpu_compute !== null && r.gpu_compute !== undefined) {
    const parts = [];
    if (r.gpu_memory !== null && r.gpu_memory !== undefined) parts.push(mib(r.gpu_memory));
    if (r.gpu_compute !== null && r.gpu_compute !== undefined) parts.push(`${r.gpu_compute}%`);
    return parts.join(" · ");
  }
  if (r.gpus !== null && r.gpus !== undefined) {
    const n = Number(r.gpus);
    return n >= 1 ? `${n} GPU${n === 1 ? "" : "s"}` : `${n} GPU`;
  }
  return "no GPU";
}

/** A job spec's GPU ask, all groups: "2 × 4 GiB · 30%". */
export function jobGpuSummary(spec) {
  const groups = (spec && spec.groups) || [];
  return groups
    .map((g) => `${g.replicas ?? 1} × ${gpuRequest(g.resources)}${groups.length > 1 ? ` (${g.name})` : ""}`)
    .join(", ");
}

export function amounts(a) {
  if (!a) return "unlimited";
  const parts = [];
  parts.push(`${num(a.gpu ?? 0, 2)} GPU`);
  parts.push(`${num(a.cpu ?? 0, 2)} CPU`);
  parts.push(mib(a.memory ?? 0));
  return parts.join(" · ");
}

/** A stable hue per name, for slices of the same job. */
export function hue(name) {
  let hash = 0;
  for (const ch of String(name)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return hash % 360;
}

export const LIVE_STATES = ["PENDING", "SCHEDULED", "STARTING", "RUNNING", "PREEMPTED", "RESIZING", "RECOVERING"];
export const JOB_STATES = [...LIVE_STATES, "SUCCEEDED", "FAILED", "CANCELLED"];
export const TERMINAL_STATES = ["SUCCEEDED", "FAILED", "CANCELLED"];
