// Inline SVG sparklines: a few series over the same x axis, as percents of a limit.

import { s } from "./dom.js";

const W = 240;
const H = 48;
const PAD = 2;

function path(values, points, max) {
  const step = points > 1 ? (W - PAD * 2) / (points - 1) : 0;
  const offset = points - values.length; // right-align: the newest point is at the right edge
  let d = "";
  let pen = false;
  values.forEach((v, i) => {
    if (v === null || v === undefined || Number.isNaN(v)) {
      pen = false;
      return;
    }
    const x = PAD + (offset + i) * step;
    const y = H - PAD - (Math.min(v, max) / max) * (H - PAD * 2);
    d += `${pen ? "L" : "M"}${x.toFixed(1)} ${y.toFixed(1)} `;
    pen = true;
  });
  return d.trim();
}

/**
 * sparkline({series: [{values, cls, label}], points: 60, limit: 100, label})
 * Values are percents of the slice's allocation; a dashed line marks 100 % (the limit).
 */
export function sparkline({ series, points = 60, label }) {
  const all = series.flatMap((x) => x.values).filter((v) => v !== null && v !== undefined);
  const max = Math.max(100, ...all) * 1.05;
  const limitY = H - PAD - (100 / max) * (H - PAD * 2);
  return s(
    "svg",
    {
      class: "sparkline",
      viewBox: `0 0 ${W} ${H}`,
      preserveAspectRatio: "none",
      role: "img",
      "aria-label": label,
    },
    s("title", {}, label),
    s("line", { class: "spark-limit", x1: "0", x2: String(W), y1: limitY.toFixed(1), y2: limitY.toFixed(1) }),
    series.map((x) => s("path", { class: `spark-line ${x.cls}`, d: path(x.values, points, max) || "M0 0" })),
  );
}
