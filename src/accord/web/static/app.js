// Accord's only script: progressive enhancement. Every page works without it.
// 1. Live regions ([data-live]) refresh when the server says the ledger changed (SSE).
// 2. The new-request form previews its workflow and narrows roles to the chosen resource.
"use strict";

(function () {
  function swapLive(html) {
    const doc = new DOMParser().parseFromString(html, "text/html");
    document.querySelectorAll("[data-live]").forEach(function (old) {
      const fresh = doc.getElementById(old.id);
      if (!fresh) return;
      const active = document.activeElement;
      // Do not pull a half-typed comment out from under someone.
      if (active && old.contains(active) && (active.value || "").length > 0) return;
      old.replaceWith(fresh);
    });
    document.dispatchEvent(new CustomEvent("accord:refreshed"));
  }

  let pending = null;
  function refresh() {
    if (pending) return;
    pending = setTimeout(function () {
      pending = null;
      fetch(location.href, { headers: { "X-Accord-Live": "1" }, credentials: "same-origin" })
        .then(function (r) {
          if (r.status === 401) { location.reload(); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) { if (html) swapLive(html); })
        .catch(function () { /* the next change event retries */ });
    }, 200);
  }

  function startLive() {
    const main = document.getElementById("main");
    const source = main && main.dataset.liveSource;
    if (!source || !document.querySelector("[data-live]") || !window.EventSource) return;
    const events = new EventSource(source);
    events.addEventListener("change", refresh);
    events.addEventListener("logout", function () { location.reload(); });
    document.documentElement.dataset.live = "on";
  }

  function startPreview() {
    const form = document.getElementById("new-request");
    if (!form) return;
    const role = form.querySelector("#role");
    const target = document.getElementById("preview");
    function narrowRoles() {
      const chosen = form.querySelector("input[name=resource]:checked");
      const name = chosen ? chosen.value : "";
      role.querySelectorAll("option[data-resource]").forEach(function (o) {
        const match = !name || o.dataset.resource === name;
        o.hidden = !match;
        o.disabled = !match;
        if (!match && o.selected) role.value = "";
      });
    }
    let timer = null;
    function update() {
      narrowRoles();
      clearTimeout(timer);
      timer = setTimeout(function () {
        const params = new URLSearchParams(new FormData(form));
        params.delete("csrf");
        fetch(form.dataset.preview + "?" + params.toString(), { credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.text() : null; })
          .then(function (html) {
            if (html === null) return;
            const doc = new DOMParser().parseFromString(html, "text/html");
            target.replaceChildren(...doc.body.childNodes);
            target.dataset.ready = "1";
          });
      }, 250);
    }
    form.addEventListener("change", update);
    form.addEventListener("input", update);
    narrowRoles();
  }

  document.addEventListener("DOMContentLoaded", function () {
    startLive();
    startPreview();
  });
})();
