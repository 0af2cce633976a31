// TokenBill console: small behaviours on top of htmx. No framework, no CDN.
(function () {
  "use strict";
  function copyText(text, button) {
    var done = function () {
      if (!button) return;
      var old = button.textContent;
      button.textContent = "Copied";
      button.classList.add("copied");
      setTimeout(function () { button.textContent = old; button.classList.remove("copied"); }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallback(text); done(); });
    } else { fallback(text); done(); }
  }
  function fallback(text) {
    var ta = document.createElement("textarea");
    ta.value = text; ta.setAttribute("readonly", ""); ta.style.position = "fixed"; ta.style.opacity = "0";
    document.body.appendChild(ta); ta.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing else to try */ }
    document.body.removeChild(ta);
  }
  // Escape, a backdrop click or a close button empties the modal and the drawer. A modal
  // showing a secret once (key created) first warns, and closes on the second try; then the
  // page reloads so its list shows the new key.
  function closeOverlays() {
    var host = document.getElementById("modal");
    var secretModal = host && host.querySelector("[data-secret]") && host.querySelector(".modal");
    if (secretModal) {
      if (!secretModal.hasAttribute("data-close-armed")) {
        secretModal.setAttribute("data-close-armed", "");
        var warning = secretModal.querySelector("[data-close-warning]");
        if (warning) { warning.hidden = false; warning.focus(); }
        return;
      }
      var doneLink = secretModal.querySelector("[data-done]");
      host.innerHTML = "";
      if (doneLink) window.location.href = doneLink.href; else window.location.reload();
      return;
    }
    if (host) host.innerHTML = "";
    var drawer = document.getElementById("drawer"); if (drawer) drawer.innerHTML = "";
  }
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest("[data-copy],[data-copy-from]");
    if (btn) {
      ev.preventDefault();
      var text = btn.getAttribute("data-copy");
      if (text === null) {
        var src = document.querySelector(btn.getAttribute("data-copy-from"));
        text = src ? (src.value !== undefined && src.tagName !== "PRE" && src.tagName !== "CODE" ? src.value : src.textContent) : "";
      }
      window.__lastCopied = text;
      copyText(text, btn);
      return;
    }
    var close = ev.target.closest("[data-close-modal]");
    if (close || ev.target.classList.contains("modal-backdrop")) closeOverlays();
    var tab = ev.target.closest("[data-tab]");
    if (tab) {
      var group = tab.closest("[data-tabs]");
      group.querySelectorAll("[data-tab]").forEach(function (t) { t.classList.toggle("active", t === tab); });
      group.querySelectorAll("[data-panel]").forEach(function (p) {
        p.hidden = p.getAttribute("data-panel") !== tab.getAttribute("data-tab");
      });
    }
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape") closeOverlays();
  });
  // A 403/404 from an htmx request shows a toast instead of silently doing nothing.
  document.addEventListener("htmx:responseError", function (ev) {
    var main = document.querySelector(".main");
    if (!main) return;
    var t = document.createElement("div");
    t.className = "toast toast-error";
    t.textContent = ev.detail.xhr.status === 403 ? "Your role does not allow this." : "Something went wrong (" + ev.detail.xhr.status + ").";
    main.prepend(t);
    setTimeout(function () { t.remove(); }, 4000);
  });
  // On a narrow screen the chart scrolls sideways: start at its right end, the newest bars.
  function showNewestBars() {
    document.querySelectorAll(".chart").forEach(function (el) { el.scrollLeft = el.scrollWidth; });
  }
  document.addEventListener("DOMContentLoaded", showNewestBars);
  document.addEventListener("htmx:afterSettle", showNewestBars);
  window.TokenBill = { copyText: copyText };
})();
