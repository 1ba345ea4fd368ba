// remediator console: refreshes the parts of a page marked data-live every data-refresh
// seconds (the overview, a run that is still going). Pages read fine without it.
"use strict";
(function () {
  const seconds = Number(document.body.dataset.refresh || 0);
  if (!seconds) {
    return;
  }
  // An operator typing a reason or a comment must not lose it to a refresh.
  function editing() {
    for (const field of document.querySelectorAll("[data-live] input, [data-live] textarea")) {
      if (field.type !== "hidden" && field.value !== field.defaultValue) {
        return true;
      }
    }
    const active = document.activeElement;
    return Boolean(active && active.closest("[data-live] form"));
  }
  async function refresh() {
    let again = true;
    if (!editing()) {
      try {
        const response = await fetch(window.location.href, {
          credentials: "same-origin",
          headers: { Accept: "text/html" },
        });
        if (response.redirected || response.status === 401) {
          window.location.reload(); // the session ended: show the login page
          return;
        }
        const html = response.ok ? await response.text() : null;
        // Checked again: the operator may have started typing while the fetch was in flight.
        if (html !== null && !editing()) {
          const fresh = new DOMParser().parseFromString(html, "text/html");
          for (const live of document.querySelectorAll("[data-live]")) {
            const replacement = fresh.getElementById(live.id);
            if (replacement) {
              live.replaceWith(document.importNode(replacement, true));
            }
          }
          again = Boolean(fresh.body.dataset.refresh);
        }
      } catch (error) {
        // The daemon restarting: try again at the next tick.
      }
    }
    if (again) {
      window.setTimeout(refresh, seconds * 1000);
    }
  }
  window.setTimeout(refresh, seconds * 1000);
})();
