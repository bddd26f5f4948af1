// Toasts (the #toast aria-live region) and the confirm dialog (<dialog id="confirm">).

import { h } from "./dom.js";

/** Show a message in #toast; kind is "info", "success" or "error". */
export function toast(message, kind = "info", ms = kind === "error" ? 8000 : 4000) {
  const region = document.getElementById("toast");
  if (!region) return;
  const item = h(
    "div",
    { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : null },
    h("span", { class: "toast-text" }, message),
  );
  const close = h("button", { type: "button", class: "toast-close", "aria-label": "Dismiss", text: "×" });
  close.addEventListener("click", () => item.remove());
  item.append(close);
  region.append(item);
  while (region.children.length > 4) region.firstElementChild.remove();
  setTimeout(() => item.remove(), ms);
}

export function toastError(err, prefix = "") {
  const text = err && err.message ? err.message : String(err);
  toast(prefix ? `${prefix}: ${text}` : text, "error");
}

/** Ask in the #confirm dialog; resolves true for #confirm-yes, false for #confirm-no or Escape. */
export function confirmDialog(message, { yes = "OK", no = "Cancel", danger = false } = {}) {
  const dialog = document.getElementById("confirm");
  const text = document.getElementById("confirm-message");
  const yesButton = document.getElementById("confirm-yes");
  const noButton = document.getElementById("confirm-no");
  text.textContent = message;
  yesButton.textContent = yes;
  noButton.textContent = no;
  yesButton.classList.toggle("danger", danger);
  const opener = document.activeElement;
  return new Promise((resolve) => {
    const finish = (answer) => {
      yesButton.removeEventListener("click", onYes);
      noButton.removeEventListener("click", onNo);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      if (opener && typeof opener.focus === "function" && document.contains(opener)) opener.focus();
      resolve(answer);
    };
    const onYes = () => finish(true);
    const onNo = () => finish(false);
    const onCancel = (event) => {
      event.preventDefault();
      finish(false);
    };
    yesButton.addEventListener("click", onYes);
    noButton.addEventListener("click", onNo);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    noButton.focus();
  });
}
