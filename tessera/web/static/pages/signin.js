// Sign-in: a user token is exchanged for a session cookie (the token itself is not kept).

import { h, put } from "../dom.js";
import { signIn } from "../session.js";
import { toast } from "../ui.js";

export const title = "Sign in";

export function mount(root, { done }) {
  const error = h("p", { id: "sign-in-error", class: "form-error" });
  const token = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "current-password",
    required: true,
    spellcheck: "false",
    "aria-describedby": "token-help sign-in-error",
  });
  const button = h("button", { id: "sign-in", type: "submit" }, "Sign in");
  const form = h(
    "form",
    { class: "card signin-card", novalidate: true },
    h("h1", {}, "Sign in to Tessera"),
    h("div", { class: "field" }, h("label", { for: "token" }, "Access token"), token),
    h(
      "p",
      { id: "token-help", class: "help" },
      "Paste a user token (",
      h("code", {}, "tessera token create"),
      " prints one). It is exchanged for a session and not stored by the browser.",
    ),
    error,
    h("div", { class: "actions" }, button),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = token.value.trim();
    error.textContent = "";
    token.removeAttribute("aria-invalid");
    if (!value) {
      error.textContent = "Enter a token.";
      token.setAttribute("aria-invalid", "true");
      token.focus();
      return;
    }
    button.disabled = true;
    button.textContent = "Signing in…";
    try {
      await signIn(value);
      token.value = "";
      done();
    } catch (err) {
      // the server says why: not recognised, revoked, expired, or a user that is disabled
      error.textContent = err.status === 401 || err.status === 403 ? `Not signed in: ${err.message}` : err.message;
      toast(error.textContent, "error");
      token.setAttribute("aria-invalid", "true");
      token.focus();
      token.select();
    } finally {
      button.disabled = false;
      button.textContent = "Sign in";
    }
  });
  put(root, h("div", { class: "signin" }, form));
  token.focus();
  return null;
}
