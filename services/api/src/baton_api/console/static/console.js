// The Baton console's own script: what the browser can check of a form is shown beside each
// field before anything is sent (the server checks everything again), and htmx requests
// carry the page's CSRF token. Without it the console still works: the browser's own checks.
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
  // A live region does not change under the keyboard focus: it waits until focus leaves.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var region = event.detail.elt, focused = document.activeElement;
    if (focused !== region && region.contains(focused)) event.preventDefault();
  });
  document.addEventListener("htmx:configRequest", function (event) {
    var token = document.querySelector("input[name=_csrf]");
    if (token) event.detail.headers["X-CSRF-Token"] = token.value;
  });
})();
