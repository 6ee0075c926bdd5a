// Postwall web UI: small progressive enhancements; every page works without them.
"use strict";

// Periodic refresh of a fragment: <div data-refresh="URL" data-interval="ms">.
function startRefresh(box) {
  const url = box.dataset.refresh;
  const interval = Math.max(1000, parseInt(box.dataset.interval || "2000", 10));
  let busy = false;
  async function tick() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const response = await fetch(url, {credentials: "same-origin", cache: "no-store"});
      if (response.redirected || !response.ok) {
        box.dataset.state = "stale";
        return;
      }
      box.innerHTML = await response.text();
      box.dataset.state = "fresh";
    } catch (error) {
      box.dataset.state = "stale";
    } finally {
      busy = false;
    }
  }
  setInterval(tick, interval);
}

// Buttons with data-confirm ask before their form is sent.
function guardConfirm(event) {
  const button = event.submitter;
  if (button && button.dataset.confirm && !window.confirm(button.dataset.confirm)) {
    event.preventDefault();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(startRefresh);
  document.querySelectorAll("form").forEach((form) => form.addEventListener("submit", guardConfirm));
});
