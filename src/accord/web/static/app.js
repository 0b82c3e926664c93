// Accord's only script: progressive enhancement. Every page works without it.
// 1. Live regions ([data-live]) refresh when the server says the ledger changed (SSE).
// 2. The new-request form previews its workflow, narrows roles to the chosen resource, and
//    keeps each field's error beside it true as people type: shown once the field was
//    touched (or the form posted), gone as soon as the field is fixed.
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

  // One fetch at a time: a change heard while one is out is fetched after it. Two at once
  // could answer out of order, and the older page would stay until the next change.
  let pending = null, inflight = false, again = false;
  function refresh() {
    if (inflight) { again = true; return; }
    if (pending) return;
    pending = setTimeout(function () {
      pending = null;
      inflight = true;
      fetch(location.href, { headers: { "X-Accord-Live": "1" }, credentials: "same-origin" })
        .then(function (r) {
          if (r.status === 401) { location.reload(); return null; }
          if (!r.ok) { retry(); return null; }
          return r.text();
        })
        .then(function (html) { if (html) { failures = 0; swapLive(html); } })
        .catch(retry)
        .finally(function () {
          inflight = false;
          if (again) { again = false; refresh(); }
        });
    }, 200);
  }

  // A refresh that failed (a busy server's 503, a dropped connection) is tried again: the
  // change it was for may be the last one for a while (a checkpoint turning badges green).
  let failures = 0;
  function retry() {
    if (failures >= 5) return;
    failures += 1;
    setTimeout(refresh, 1000 * failures);
  }

  function startLive() {
    const main = document.getElementById("main");
    const source = main && main.dataset.liveSource;
    if (!source || !document.querySelector("[data-live]") || !window.EventSource) return;
    const events = new EventSource(source);
    events.addEventListener("change", refresh);
    events.addEventListener("logout", function () { location.reload(); });
    // The browser reconnects a dropped stream by itself, but a change made meanwhile was
    // never sent: look once the stream is back.
    let dropped = false;
    events.addEventListener("error", function () { dropped = true; });
    events.addEventListener("open", function () {
      if (dropped) { dropped = false; failures = 0; refresh(); }
    });
    document.documentElement.dataset.live = "on";
  }

  const FIELDS = ["resource", "role", "duration", "reason"];

  function describe(control, id, on) {
    const ids = (control.getAttribute("aria-describedby") || "").split(" ").filter(Boolean)
      .filter(function (x) { return x !== id; });
    if (on) ids.push(id);
    if (ids.length) control.setAttribute("aria-describedby", ids.join(" "));
    else control.removeAttribute("aria-describedby");
    if (on) control.setAttribute("aria-invalid", "true");
    else control.removeAttribute("aria-invalid");
  }

  function showFieldErrors(form, doc, touched) {
    const errors = {};
    doc.querySelectorAll(".field-errors li[data-field]").forEach(function (li) {
      errors[li.dataset.field] = li.textContent;
    });
    FIELDS.forEach(function (field) {
      const anchor = form.querySelector('[data-error-for="' + field + '"]');
      if (!anchor) return;
      const id = field + "-error";
      const text = touched.has(field) ? errors[field] : undefined;
      let p = document.getElementById(id);
      if (text) {
        if (!p) {
          p = document.createElement("p");
          p.className = "field-error";
          p.id = id;
          anchor.parentNode.insertBefore(p, anchor);
        }
        p.textContent = text;
      } else if (p) {
        p.remove();
      }
      const controls = anchor.matches("input, select, textarea") ? [anchor]
        : Array.from(anchor.querySelectorAll("input"));
      controls.forEach(function (c) { describe(c, id, Boolean(text)); });
    });
  }

  function startPreview() {
    const form = document.getElementById("new-request");
    if (!form) return;
    const role = form.querySelector("#role");
    const target = document.getElementById("preview");
    // After a post every field has been judged; before, only those someone has been in.
    const touched = new Set(form.dataset.submitted ? FIELDS : []);
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
            showFieldErrors(form, doc, touched);
            target.replaceChildren(...doc.body.childNodes);
            target.dataset.ready = "1";
          });
      }, 250);
    }
    // A field is judged once left (or chosen); typing then updates its error at once.
    function touch(event) {
      if (event.target && event.target.name) touched.add(event.target.name);
      update();
    }
    form.addEventListener("change", touch);
    form.addEventListener("focusout", touch);
    form.addEventListener("input", update);
    narrowRoles();
  }

  document.addEventListener("DOMContentLoaded", function () {
    startLive();
    startPreview();
  });
})();
