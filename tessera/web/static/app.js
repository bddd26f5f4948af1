// The app shell: session, header, navigation and the page lifecycle.

import { onUnauthorized, reportable } from "./api.js";
import { h, put } from "./dom.js";
import { match, navigate, parseHash } from "./router.js";
import { forget, load, session, signOut } from "./session.js";
import { toast, toastError } from "./ui.js";
import * as datasets from "./pages/datasets.js";
import * as job from "./pages/job.js";
import * as jobs from "./pages/jobs.js";
import * as nodes from "./pages/nodes.js";
import * as overview from "./pages/overview.js";
import * as queues from "./pages/queues.js";
import * as service from "./pages/service.js";
import * as services from "./pages/services.js";
import * as signin from "./pages/signin.js";
import * as submit from "./pages/submit.js";

const ROUTES = [
  { pattern: /^\/overview$/, page: overview, nav: "overview" },
  { pattern: /^\/jobs$/, page: jobs, nav: "jobs" },
  { pattern: /^\/jobs\/([^/]+)$/, page: job, nav: "jobs" },
  { pattern: /^\/submit$/, page: submit, nav: "submit" },
  { pattern: /^\/queues$/, page: queues, nav: "queues" },
  { pattern: /^\/nodes$/, page: nodes, nav: "nodes" },
  { pattern: /^\/datasets$/, page: datasets, nav: "datasets" },
  { pattern: /^\/services$/, page: services, nav: "services" },
  { pattern: /^\/services\/([^/]+)$/, page: service, nav: "services" },
];

const root = document.getElementById("main");
const nav = document.getElementById("nav");
const userBox = document.getElementById("user-box");
const userName = document.getElementById("user");
let cleanup = null;
let rendered = false;

function unmount() {
  if (cleanup) {
    try {
      cleanup();
    } catch (err) {
      console.debug("cleanup", err);
    }
  }
  cleanup = null;
}

function renderHeader() {
  const info = session();
  nav.hidden = !info;
  userBox.hidden = !info;
  userName.textContent = info ? info.user : "";
  userName.title = info && info.is_admin ? "administrator" : "";
}

function markNav(name) {
  for (const link of nav.querySelectorAll("a[data-nav]")) {
    if (link.dataset.nav === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function showSignIn() {
  unmount();
  renderHeader();
  markNav(null);
  document.title = "Sign in · Tessera";
  const { path } = parseHash();
  const next = path === "/signin" ? "/overview" : path + (parseHash().query.toString() ? `?${parseHash().query}` : "");
  cleanup = signin.mount(root, {
    next,
    done: () => {
      renderHeader();
      navigate(next);
    },
  });
}

function route({ focus = false } = {}) {
  if (!session()) {
    showSignIn();
    return;
  }
  const { path, query } = parseHash();
  if (path === "/signin" || path === "/") {
    navigate("/overview");
    return;
  }
  unmount();
  const found = match(ROUTES, path);
  if (!found) {
    markNav(null);
    document.title = "Not found · Tessera";
    put(
      root,
      h("h1", { tabindex: "-1" }, "Page not found"),
      h("p", {}, "Nothing lives at this address. ", h("a", { href: "#/overview" }, "Go to the overview")),
    );
    return;
  }
  markNav(found.route.nav);
  document.title = `${found.route.page.title || "Tessera"} · Tessera`;
  put(root);
  cleanup = found.route.page.mount(root, { params: found.params, query, navigate }) || null;
  if (focus) {
    const heading = root.querySelector("h1");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: false });
    }
  }
}

onUnauthorized(() => {
  if (!session()) return;
  forget();
  toast("Your session ended; sign in again.", "info");
  showSignIn();
});

document.getElementById("sign-out").addEventListener("click", async () => {
  try {
    await signOut();
  } catch (err) {
    if (reportable(err)) toastError(err, "Sign-out");
  }
  forget();
  renderHeader();
  if (location.hash !== "#/signin") location.hash = "#/signin";
  else showSignIn();
  toast("Signed out.", "success");
});

window.addEventListener("hashchange", () => route({ focus: rendered }));

async function start() {
  put(root, h("p", { class: "muted" }, "Loading…"));
  try {
    await load();
  } catch (err) {
    put(root, h("p", { class: "error" }, `Cannot reach the control plane: ${err.message}`));
    return;
  }
  renderHeader();
  route();
  rendered = true;
}

start();
