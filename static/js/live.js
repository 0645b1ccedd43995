// Pages that update themselves (paymentsite/live.py). Every second, while the tab is
// shown, ask this page's address again with the version it shows: 204 means nothing
// changed; a page means something did, and each region marked data-live-region is
// replaced by the new one. A region holding a form being filled in is left alone (and
// the version kept, so it is replaced once the form is left). No JavaScript: the
// plain page.
(function () {
  "use strict";
  var body = document.body;
  var version = body.getAttribute("data-live-version");
  if (!version || !window.fetch || !window.DOMParser) return;
  var every = Number(body.getAttribute("data-live-every")) || 1000;

  function busy(region) {
    var active = document.activeElement;
    if (active && active !== body && region.contains(active)) return true;
    var fields = region.querySelectorAll("input:not([type=hidden]), textarea, select");
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i];
      if (f.type === "checkbox" || f.type === "radio") {
        if (f.checked !== f.defaultChecked) return true;
      } else if (f.tagName === "SELECT") {
        for (var j = 0; j < f.options.length; j++) {
          if (f.options[j].selected !== f.options[j].defaultSelected) return true;
        }
      } else if (f.value !== f.defaultValue) {
        return true;
      }
    }
    return false;
  }

  function swap(html, next) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    var regions = document.querySelectorAll("[data-live-region]");
    var all = true;
    for (var i = 0; i < regions.length; i++) {
      var region = regions[i];
      var replacement = fresh.getElementById(region.id);
      if (!replacement) continue;
      if (busy(region)) { all = false; continue; }
      region.replaceWith(document.importNode(replacement, true));
    }
    if (all) {
      version = next;
      body.setAttribute("data-live-version", next);
      body.setAttribute("data-live-updated", String(Date.now()));
    }
  }

  function poll() {
    if (document.visibilityState === "hidden") return schedule();
    fetch(window.location.href, {
      headers: {"X-Live-Version": version}, credentials: "same-origin", cache: "no-store",
      redirect: "error"  // logged out: keep the page as it is
    }).then(function (response) {
      var next = response.headers.get("X-Live-Version");
      if (!next || response.status === 204 || !response.ok && response.status !== 400) {
        return null;
      }
      return response.text().then(function (html) { swap(html, next); });
    }).catch(function () { /* the server is away: try again later */ })
      .then(schedule);
  }

  function schedule() { window.setTimeout(poll, every); }
  schedule();
})();
