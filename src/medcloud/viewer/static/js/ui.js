// The page's messages: the error box, the status line, the busy spinner, and `guarded`, which runs
// an action and shows what it throws instead of letting it escape.

export const $ = (selector) => document.querySelector(selector);

export function showError(error) {
  const box = $("#error");
  box.textContent = error instanceof Error ? error.message : String(error);
  box.hidden = false;
  console.warn("medcloud viewer:", box.textContent);
}

export function clearError() {
  $("#error").hidden = true;
}

export function status(text) {
  $("#status").textContent = text;
}

export function setBusy(count) {
  $("#busy").hidden = count === 0;
  document.body.setAttribute("aria-busy", count > 0 ? "true" : "false");
}

export async function guarded(action) {
  clearError();
  try {
    return await action();
  } catch (error) {
    showError(error);
    return undefined;
  }
}
