// Hash routing: "#/jobs/<id>?x=1" -> {page, params: [id], query: URLSearchParams}.

export function parseHash(hash = location.hash) {
  const raw = hash.replace(/^#/, "") || "/overview";
  const [path, search = ""] = raw.split("?", 2);
  return { path: path.startsWith("/") ? path : `/${path}`, query: new URLSearchParams(search) };
}

export function match(routes, path) {
  for (const route of routes) {
    const m = route.pattern.exec(path);
    if (m) return { route, params: m.slice(1).map((p) => decodeURIComponent(p)) };
  }
  return null;
}

export function navigate(path) {
  const target = `#${path}`;
  if (location.hash === target) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = target;
}
