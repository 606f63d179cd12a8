// The patient page's charts: one uPlot per vital, fed by /api/patients/{id}/series.
// No inline script (the CSP forbids it): everything hangs off data- attributes.
"use strict";

(function () {
  const section = document.getElementById("vitals");
  if (!section || typeof uPlot === "undefined") return;
  const patient = section.dataset.patient;
  const charts = new Map();

  function width(el) {
    return Math.max(260, Math.min(el.clientWidth || 600, 900));
  }

  function draw(figure, body) {
    const plotEl = figure.querySelector(".plot");
    const t = [], low = [], mean = [], high = [];
    for (const p of body.points) {
      t.push(p[0]); low.push(p[1]); mean.push(p[2]); high.push(p[3]);
    }
    const old = charts.get(figure);
    if (old) old.destroy();
    plotEl.textContent = "";
    if (t.length === 0) {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = "No readings in this range.";
      plotEl.appendChild(p);
      charts.delete(figure);
      return;
    }
    const unit = figure.dataset.unit;
    const chart = new uPlot({
      width: width(plotEl),
      height: 160,
      legend: { show: false },
      // the whole requested range, even when the readings cover only part of it
      scales: { x: { time: true, range: [Date.parse(body.start) / 1000, Date.parse(body.end) / 1000] } },
      series: [
        {},
        { label: "min", stroke: "#9db7d5", width: 1, points: { show: t.length < 60 } },
        { label: figure.dataset.label + " (" + unit + ")", stroke: "#0b5cad", width: 2,
          points: { show: t.length < 60, size: 6 } },
        { label: "max", stroke: "#9db7d5", width: 1, points: { show: t.length < 60 } },
      ],
      axes: [{}, { size: 50 }],
    }, [t, low, mean, high], plotEl);
    charts.set(figure, chart);
  }

  async function load(range) {
    for (const button of section.querySelectorAll("[data-range]")) {
      button.setAttribute("aria-pressed", String(button.dataset.range === range));
    }
    for (const figure of section.querySelectorAll("figure.chart")) {
      const url = "/api/patients/" + encodeURIComponent(patient) + "/series?code=" +
        encodeURIComponent(figure.dataset.code) + "&range=" + range;
      try {
        const response = await fetch(url, { credentials: "same-origin" });
        if (!response.ok) throw new Error(String(response.status));
        draw(figure, await response.json());
      } catch (err) {
        figure.querySelector(".plot").textContent = "Could not load the readings (" + err.message + ").";
      }
    }
  }

  section.addEventListener("click", function (event) {
    const button = event.target.closest("[data-range]");
    if (button) load(button.dataset.range);
  });
  load("24h");
})();

// The patient page's video visits: start one (the join link is shown once, with a copy
// button), list them, send a new link or cancel an open one. The CSRF token is the
// section's data-csrf, sent as the X-CSRF-Token header.
(function () {
  const section = document.getElementById("visits");
  if (!section) return;
  const patient = section.dataset.patient;
  const csrf = section.dataset.csrf;
  const tbody = section.querySelector("table tbody");
  const emptyNote = section.querySelector(".visits-empty");
  const errorEl = section.querySelector(".visits-error");
  const linkBox = section.querySelector(".join-link");
  const linkInput = section.querySelector("#join-link");
  const copyState = section.querySelector(".copy-state");
  const OPEN = new Set(["scheduled", "waiting", "in_call"]);
  const LABELS = {
    scheduled: "booked", waiting: "waiting", in_call: "in call",
    ended: "ended", cancelled: "cancelled", no_show: "no show",
  };

  function when(iso) {
    if (!iso) return "–";
    return new Date(iso).toUTCString().slice(5, 22) + " UTC";
  }

  async function call(method, url, body) {
    const options = {
      method: method,
      credentials: "same-origin",
      headers: { "Accept": "application/json" },
    };
    if (method !== "GET") {
      options.headers["X-CSRF-Token"] = csrf;
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body || {});
    }
    const response = await fetch(url, options);
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) throw new Error((data && data.error) || "the server answered " + response.status);
    return data;
  }

  function showError(err) {
    errorEl.textContent = err ? "Could not do that: " + err.message : "";
  }

  function showLink(url) {
    linkInput.value = url;
    linkBox.hidden = false;
    copyState.textContent = "";
    linkInput.focus();
    linkInput.select();
  }

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function actionButton(label, action, visitId, className) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = className || "secondary";
    b.textContent = label;
    b.dataset.action = action;
    b.dataset.visit = visitId;
    b.setAttribute("data-testid", action + "-" + visitId);
    return b;
  }

  function row(v) {
    const tr = document.createElement("tr");
    tr.dataset.visit = v.visit_id;
    tr.dataset.state = v.state;
    const state = cell(LABELS[v.state] || v.state);
    state.className = "visit-state";
    state.setAttribute("data-testid", "visit-state-" + v.visit_id);
    tr.append(state, cell(when(v.scheduled_at)), cell(when(v.waiting_since)),
      cell(when(v.admitted_at)), cell(when(v.ended_at)));
    const actions = document.createElement("td");
    actions.className = "visit-actions";
    if (OPEN.has(v.state)) {
      if (v.state !== "scheduled") {
        const open = document.createElement("a");
        open.href = "/visits/" + encodeURIComponent(v.visit_id);
        open.textContent = v.state === "in_call" ? "Open the call" : "Open";
        actions.append(open, " ");
      }
      actions.appendChild(actionButton("Send a new link", "new-link", v.visit_id));
      if (v.state !== "in_call") actions.appendChild(actionButton("Cancel", "cancel-visit", v.visit_id));
    }
    tr.appendChild(actions);
    return tr;
  }

  async function refresh() {
    try {
      const data = await call("GET", "/api/visits?patient=" + encodeURIComponent(patient));
      const visits = data.visits.slice().sort((a, b) => (a.scheduled_at < b.scheduled_at ? 1 : -1));
      tbody.replaceChildren(...visits.map(row));
      emptyNote.hidden = visits.length > 0;
    } catch (err) {
      showError(err);
    }
  }

  section.querySelector("[data-testid=start-visit]").addEventListener("click", async (event) => {
    const b = event.currentTarget;
    b.disabled = true;
    showError(null);
    try {
      const booking = await call("POST", "/api/visits", { patient_id: patient });
      showLink(booking.join_url);
      await refresh();
    } catch (err) {
      showError(err);
    } finally {
      b.disabled = false;
    }
  });

  section.querySelector("[data-testid=copy-link]").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(linkInput.value);
      copyState.textContent = "Copied.";
    } catch (err) {
      linkInput.select();
      copyState.textContent = "Press Ctrl+C (or ⌘C) to copy the selected link.";
    }
  });

  tbody.addEventListener("click", async (event) => {
    const b = event.target.closest("button[data-action]");
    if (!b) return;
    const visitId = b.dataset.visit;
    showError(null);
    if (b.dataset.action === "cancel-visit" && b.dataset.confirming !== "yes") {
      // a second press confirms: the link dies with the visit
      b.dataset.confirming = "yes";
      b.textContent = "Confirm cancel";
      b.classList.add("danger");
      return;
    }
    b.disabled = true;
    try {
      if (b.dataset.action === "new-link") {
        const booking = await call("POST", "/api/visits/" + encodeURIComponent(visitId) + "/link");
        showLink(booking.join_url);
      } else {
        await call("POST", "/api/visits/" + encodeURIComponent(visitId) + "/cancel");
        linkBox.hidden = true;
        linkInput.value = "";
      }
      await refresh();
    } catch (err) {
      showError(err);
      b.disabled = false;
    }
  });

  refresh();
})();
