// The console's only script: live refresh of the incidents list, the trajectory opening at the
// last tool calls before the off-rails step, and a confirmation before a contain button.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const rows = document.getElementById("rows");
  if (rows) {
    const every = 1000 * Number(rows.dataset.refreshS || 5);
    const url = new URL(window.location.href);
    url.searchParams.set("fragment", "rows");
    const refresh = async () => {
      try {
        const answer = await fetch(url, { credentials: "same-origin", cache: "no-store" });
        if (answer.redirected || !answer.ok) return; // logged out or store down: keep what we show
        rows.innerHTML = await answer.text(); // our own server's escaped HTML
        const updated = document.getElementById("updated");
        if (updated) updated.textContent = new Date().toISOString().slice(0, 19).replace("T", " ");
      } catch (e) {
        /* offline for a moment: try again at the next tick */
      }
    };
    setInterval(refresh, every);
  }

  const here = document.querySelector("[data-scroll-here]");
  if (here && !window.location.hash) here.scrollIntoView({ block: "start" });

  for (const button of document.querySelectorAll("button[data-confirm]")) {
    button.form.addEventListener("submit", (event) => {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  }
});
