// Service detail: spec, revisions (traffic, scale, latency, errors) and replicas.

import { enc, get, reportable } from "../api.js";
import { badge, h, messageRow, put, table, tableWrap } from "../dom.js";
import { age, gpuRequest, mib, num, time } from "../format.js";
import { poll } from "../poll.js";
import { join } from "../shell.js";
import { trafficText, urlCell } from "./services.js";

export const title = "Service";

function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))),
  );
}

function ms(value) {
  return value === null || value === undefined ? "–" : `${num(value, 1)} ms`;
}

function revisionsTable(svc) {
  const { table: tbl, tbody } = table(
    "revisions-table",
    ["Revision", "Version", "Traffic", "Ready / desired", "RPS", "p50", "p99", "Requests", "Errors", "In flight", "Cold start"],
    "Revisions",
  );
  const revisions = (svc.revisions || []).slice().sort((a, b) => b.number - a.number);
  if (!revisions.length) tbody.append(messageRow(11, "No revisions."));
  for (const r of revisions) {
    const m = r.metrics || {};
    const errorRate = m.requests ? ` (${num((m.errors / m.requests) * 100, 1)}%)` : "";
    tbody.append(
      h(
        "tr",
        { dataset: { revision: String(r.number) } },
        h("td", {}, h("strong", {}, `r${r.number}`), r.number === svc.status.latest_revision ? h("span", { class: "badge plain" }, "latest") : null, r.panic ? h("span", { class: "badge warn-badge" }, "panic") : null),
        h("td", {}, r.spec.version || "–"),
        h("td", { class: "num" }, `${r.traffic_percent}%`),
        h("td", { class: "num" }, `${r.ready_replicas} / ${r.desired_replicas}`),
        h("td", { class: "num" }, num(m.rps, 2)),
        h("td", { class: "num" }, ms(m.p50_ms)),
        h("td", { class: "num" }, ms(m.p99_ms)),
        h("td", { class: "num" }, String(m.requests ?? 0)),
        h("td", { class: `num${m.errors ? " warn" : ""}` }, `${m.errors ?? 0}${errorRate}`),
        h("td", { class: "num" }, `${num(m.in_flight, 1)}${m.held ? ` (+${m.held} held)` : ""}`),
        h("td", { class: "num" }, r.cold_start_s === null || r.cold_start_s === undefined ? "–" : `${num(r.cold_start_s, 2)} s`),
      ),
    );
  }
  return tableWrap(tbl, "Revisions table");
}

function replicasTable(svc) {
  const { table: tbl, tbody } = table(
    "replicas-table",
    ["Replica", "Revision", "State", "Node", "Endpoint", "Up", "Message"],
    "Replicas",
  );
  const replicas = (svc.replicas || []).slice().sort((a, b) => b.revision_number - a.revision_number || String(a.created_at).localeCompare(String(b.created_at)));
  if (!replicas.length) tbody.append(messageRow(7, "No replicas (scaled to zero, or none started yet)."));
  for (const r of replicas) {
    tbody.append(
      h(
        "tr",
        { dataset: { replica: r.id } },
        h("td", {}, r.job_id ? h("a", { href: `#/jobs/${enc(r.job_id)}`, title: r.id }, String(r.id).slice(0, 8)) : h("code", { title: r.id }, String(r.id).slice(0, 8))),
        h("td", {}, `r${r.revision_number}`),
        h("td", { class: "state" }, badge(r.state)),
        h("td", {}, r.node || "–"),
        h("td", {}, r.endpoint ? h("code", {}, r.endpoint) : "–"),
        h("td", { class: "nowrap" }, r.ready_at ? h("time", { datetime: r.ready_at, title: time(r.ready_at) }, `ready ${age(r.ready_at)}`) : r.started_at ? `started ${age(r.started_at)}` : "–"),
        h("td", { class: "muted small" }, r.message || ""),
      ),
    );
  }
  return tableWrap(tbl, "Replicas table");
}

export function mount(root, { params }) {
  const name = params[0];
  const error = h("p", { class: "banner error", role: "alert", hidden: true });
  const info = h("div", { id: "service-info" }, h("p", { class: "muted" }, "Loading…"));
  const revisions = h("div", { id: "service-revisions" });
  const replicas = h("div", { id: "service-replicas" });
  put(
    root,
    h("p", { class: "crumbs" }, h("a", { href: "#/services" }, "Services"), " / "),
    h("h1", {}, name),
    error,
    info,
    h("section", { "aria-labelledby": "rev-heading" }, h("h2", { id: "rev-heading" }, "Revisions"), revisions),
    h("section", { "aria-labelledby": "rep-heading" }, h("h2", { id: "rep-heading" }, "Replicas"), replicas),
  );

  const poller = poll(async () => {
    try {
      const svc = await get(`/services/${enc(name)}`);
      const spec = svc.spec;
      put(
        info,
        facts([
          ["URL", urlCell(svc.status.url)],
          ["Project", svc.project],
          ["Queue", svc.queue],
          ["Owner", svc.owner],
          ["Traffic", trafficText(svc.status.traffic)],
          ["Replicas", `${svc.status.ready_replicas} ready of ${svc.status.desired_replicas} desired (min ${spec.min_replicas}, max ${spec.max_replicas})`],
          ["Target concurrency", `${num(spec.target_concurrency, 1)} per replica`],
          ["Command", h("code", { class: "command" }, join(spec.command))],
          ["Resources", `${gpuRequest(spec.resources)} · ${num(spec.resources?.cpu, 2)} CPU · ${mib(spec.resources?.memory)}`],
          ["Access", spec.public ? "public" : "token required"],
          ["Scale to zero after", spec.min_replicas === 0 ? spec.scale_to_zero_grace : null],
          ["Status", svc.status.message || null],
          ["Created", `${age(svc.created_at)} ago`],
        ]),
      );
      put(revisions, revisionsTable(svc));
      put(replicas, replicasTable(svc));
      error.hidden = true;
    } catch (err) {
      if (!reportable(err)) return;
      error.textContent = err.status === 404 ? `No service named ${name}.` : `Could not refresh: ${err.message}`;
      error.hidden = false;
    }
  }, 2000);
  return () => poller.stop();
}
