// Services: URL, traffic split, ready/desired replicas and requests per second.

import { enc, get, mapLimit, reportable } from "../api.js";
import { h, messageRow, put, safeUrl, table, tableWrap } from "../dom.js";
import { num } from "../format.js";
import { poll } from "../poll.js";

export const title = "Services";

export function trafficText(targets) {
  return (targets || []).map((t) => `r${t.revision} ${t.percent}%`).join(" · ") || "–";
}

export function urlCell(url) {
  const href = safeUrl(url);
  return href ? h("a", { href, target: "_blank", rel: "noopener noreferrer" }, url) : url || "–";
}

export function mount(root) {
  const error = h("p", { class: "banner error", role: "alert", hidden: true });
  const { table: tbl, tbody } = table(
    "services-table",
    ["Name", "Project", "URL", "Traffic", "Ready / desired", "RPS", "Status"],
    "Services",
  );
  tbody.append(messageRow(7, "Loading…"));
  put(root, h("h1", {}, "Services"), error, tableWrap(tbl, "Services table"));

  const poller = poll(async () => {
    try {
      const services = (await get("/services")).sort((a, b) => a.name.localeCompare(b.name));
      // the list leaves revisions out; their metrics come with each service
      const details = await mapLimit(services.slice(0, 50), 4, (s) => get(`/services/${enc(s.name)}`));
      const rps = new Map();
      for (const d of details) {
        if (d && d.ok) rps.set(d.value.id, (d.value.revisions || []).reduce((n, r) => n + (r.metrics?.rps || 0), 0));
      }
      const rows = services.map((svc) =>
        h(
          "tr",
          { dataset: { service: svc.name } },
          h("td", { class: "name" }, h("a", { href: `#/services/${enc(svc.name)}` }, svc.name)),
          h("td", {}, svc.project),
          h("td", { class: "url" }, urlCell(svc.status.url)),
          h("td", { class: "nowrap" }, trafficText(svc.status.traffic)),
          h("td", { class: "num replicas" }, `${svc.status.ready_replicas} / ${svc.status.desired_replicas}`),
          h("td", { class: "num rps" }, rps.has(svc.id) ? num(rps.get(svc.id), 2) : "–"),
          h("td", { class: "muted small" }, svc.status.message || ""),
        ),
      );
      put(tbody, ...(rows.length ? rows : [messageRow(7, "No services. Create one with `tessera serve create`.")]));
      error.hidden = true;
    } catch (err) {
      if (!reportable(err)) return;
      error.textContent = `Could not load services: ${err.message}`;
      error.hidden = false;
    }
  }, 5000);
  return () => poller.stop();
}
