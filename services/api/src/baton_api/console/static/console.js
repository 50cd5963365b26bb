// The Baton console's own script: what the browser can check of a form is shown beside each
// field before anything is sent (the server checks everything again), htmx requests carry
// the page's CSRF token, and live regions follow their server-sent events feed. Without it
// the console still works: the browser's own checks, a reload to see what changed.
(function () {
  "use strict";
  function errorOf(input) {
    var ids = (input.getAttribute("aria-describedby") || "").split(" ");
    for (var i = 0; i < ids.length; i++) {
      var el = document.getElementById(ids[i]);
      if (el && el.classList.contains("field-error")) return el;
    }
    return null;
  }
  function check(input) {
    var error = errorOf(input);
    if (!error || !input.willValidate) return true;
    var ok = input.checkValidity();
    error.textContent = ok ? "" : input.validationMessage;
    if (ok) input.removeAttribute("aria-invalid"); else input.setAttribute("aria-invalid", "true");
    return ok;
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-validate]").forEach(function (form) {
      form.noValidate = true;
      form.addEventListener("submit", function (event) {
        var first = null;
        form.querySelectorAll("input, select, textarea").forEach(function (input) {
          if (!check(input) && !first) first = input;
        });
        if (first) { event.preventDefault(); first.focus(); }
      });
      // While typing, not on leaving a field: a message that (dis)appears on blur would move
      // the button from under the pointer that is clicking it.
      form.addEventListener("input", function (event) { check(event.target); });
    });
  });
  // Live regions (templates/_live.html): one EventSource per feed a region names in
  // `data-live`; an event re-reads the regions following it (htmx trigger "live"), at most
  // once per REFRESH_MS. The browser reconnects by itself, sending Last-Event-ID: no change
  // is missed. Only if the feed cannot be had (no EventSource, or the server refused the
  // stream) does a region re-read itself every `data-live-fallback` seconds instead (and
  // once at once: a signed-out browser is sent to sign in).
  var REFRESH_MS = 500, feeds = {};
  function regions(url) {
    return Array.prototype.filter.call(document.querySelectorAll("[data-live]"), function (el) {
      return el.getAttribute("data-live") === url;
    });
  }
  function refresh(url) {
    regions(url).forEach(function (el) { htmx.trigger(el, "live"); });
  }
  function soon(feed) {
    if (feed.timer) return;
    feed.timer = setTimeout(function () {
      feed.timer = null;
      feed.last = Date.now();
      refresh(feed.url);
    }, Math.max(0, feed.last + REFRESH_MS - Date.now()));
  }
  function fallBack(feed) {
    if (feed.source) feed.source.close();
    feed.source = null;
    refresh(feed.url);
    feed.poll = setInterval(function () { refresh(feed.url); }, feed.fallback * 1000);
  }
  function follow(region) {
    var url = region.getAttribute("data-live");
    var feed = { url: url, timer: null, last: 0,
      fallback: Number(region.getAttribute("data-live-fallback")) || 30 };
    feeds[url] = feed;
    if (typeof EventSource === "undefined") return fallBack(feed);
    var after = region.getAttribute("data-live-after");
    var source = new EventSource(url + (url.indexOf("?") < 0 ? "?" : "&") +
      "last_event_id=" + encodeURIComponent(after));  // after this, Last-Event-ID
    (region.getAttribute("data-live-kinds") || "").split(" ").forEach(function (kind) {
      if (kind) source.addEventListener(kind, function () { soon(feed); });
    });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) fallBack(feed);  // refused, not dropped
    });
    feed.source = source;
  }
  // Each feed a region names is followed; one no region names any more (an execution that
  // has ended) is let go.
  function sync() {
    var named = {};
    document.querySelectorAll("[data-live]").forEach(function (region) {
      var url = region.getAttribute("data-live");
      named[url] = true;
      if (!feeds[url]) follow(region);
    });
    Object.keys(feeds).forEach(function (url) {
      var feed = feeds[url];
      if (named[url]) return;
      if (feed.source) feed.source.close();
      clearTimeout(feed.timer);
      clearInterval(feed.poll);
      delete feeds[url];
    });
  }
  document.addEventListener("DOMContentLoaded", sync);
  document.addEventListener("htmx:afterSettle", sync);
  // A live region does not change under the keyboard focus: it waits until focus leaves.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var region = event.detail.elt, focused = document.activeElement;
    if (focused !== region && region.contains(focused)) {
      event.preventDefault();
      region.setAttribute("data-live-stale", "");
    }
  });
  document.addEventListener("focusout", function (event) {
    var region = event.target.closest && event.target.closest("[data-live-stale]");
    if (region && !region.contains(event.relatedTarget)) {
      region.removeAttribute("data-live-stale");
      setTimeout(function () { htmx.trigger(region, "live"); }, 0);  // once focus has left
    }
  });
  document.addEventListener("htmx:configRequest", function (event) {
    var token = document.querySelector("input[name=_csrf]");
    if (token) event.detail.headers["X-CSRF-Token"] = token.value;
  });
})();
