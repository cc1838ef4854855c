// The incident page's "against the golden run" section: its diff loaded from our own server
// (escaped HTML), so the incident page itself stays as fast as before.
"use strict";

document.addEventListener("DOMContentLoaded", async () => {
  const section = document.querySelector("[data-golden-src]");
  if (!section) return;
  try {
    const answer = await fetch(section.dataset.goldenSrc, { credentials: "same-origin", cache: "no-store" });
    if (answer.redirected || !answer.ok) return; // logged out or store down: the link stays
    section.innerHTML = await answer.text();
  } catch (e) {
    /* offline: the link to the diff page stays */
  }
});
