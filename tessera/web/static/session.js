// The signed-in web session (WebSession from /api/v1/session).

import { get, request, setCsrf } from "./api.js";

let current = null;

export function session() {
  return current;
}

function keep(info) {
  current = info;
  setCsrf(info ? info.csrf_token : null);
  return info;
}

/** The current session, or null when signed out (401). */
export async function load() {
  // the readable CSRF cookie lives exactly as long as the (HttpOnly) session cookie
  if (!document.cookie.split(";").some((c) => c.trim().startsWith("tessera_csrf="))) return keep(null);
  try {
    return keep(await get("/session"));
  } catch (err) {
    if (err.status === 401) return keep(null);
    throw err;
  }
}

export async function signIn(token) {
  return keep(await request("POST", "/session", { body: { token } }));
}

export async function signOut() {
  try {
    await request("DELETE", "/session");
  } finally {
    keep(null);
  }
}

export function forget() {
  keep(null);
}

/** Projects where this user may submit (member or admin); admins may use any project. */
export function canSubmit(project) {
  if (!current) return false;
  if (current.is_admin) return true;
  const role = current.projects && current.projects[project];
  return role === "member" || role === "admin";
}
