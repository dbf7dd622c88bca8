/* django-qtasks admin: keep parts of a page fresh without reloading it.
 *
 * An element with data-qtasks-interval="ms" is re-read every so many milliseconds:
 * from data-qtasks-src (a URL returning just that part) or, without it, from the
 * page itself, taking the element with the same id. Nothing is fetched while the tab
 * is hidden. When the fresh copy says data-qtasks-final (a task that just finished),
 * the page reloads once so that its buttons match the new state.
 */
(function () {
  "use strict";

  function refresh(el, interval) {
    if (document.hidden) {
      return schedule(el, interval);
    }
    var src = el.dataset.qtasksSrc || window.location.href;
    fetch(src, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then(function (response) {
        if (!response.ok) { throw new Error(response.status); }
        return response.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = el.dataset.qtasksSrc ? doc.body : doc.getElementById(el.id);
        if (!fresh) { return; }
        if (fresh.dataset && fresh.dataset.qtasksFinal) {
          window.location.reload();
          return;
        }
        el.innerHTML = fresh.innerHTML;
        el.dispatchEvent(new CustomEvent("qtasks:refreshed", { bubbles: true }));
        var stamp = document.querySelector(".qtasks-updated");
        if (stamp) { stamp.textContent = "Updated " + new Date().toLocaleTimeString(); }
      })
      .catch(function () { /* keep the last good numbers; try again next time */ })
      .then(function () { schedule(el, interval); });
  }

  function schedule(el, interval) {
    window.setTimeout(function () { refresh(el, interval); }, interval);
  }

  // "Pause another queue": the queue name is part of the URL the form posts to.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute || !form.hasAttribute("data-qtasks-queue-form")) { return; }
    var name = form.elements.queue.value.trim();
    if (!name) { event.preventDefault(); return; }
    form.action = form.dataset.base.replace("__queue__", encodeURIComponent(name));
  });

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-qtasks-interval]").forEach(function (el) {
      var interval = parseInt(el.dataset.qtasksInterval, 10);
      if (interval > 0) { schedule(el, interval); }
    });
  });
})();
