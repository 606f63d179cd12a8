// The dashboard's live feed: new vitals, alerts and device presence over Socket.IO.
// The server only sends this clinician's patients; we only update cells that exist.
"use strict";

(function () {
  const panel = document.getElementById("monitoring-panel");
  if (!panel || typeof io === "undefined") return;
  const state = panel.querySelector(".live-state");

  function setState(text) {
    if (state) state.textContent = text;
  }

  function formatTime(iso) {
    const d = new Date(iso);
    return d.toUTCString().slice(5, 25) + " UTC";
  }

  const socket = io({ transports: ["websocket", "polling"] });
  socket.on("connect", () => setState("live"));
  socket.on("disconnect", () => setState("reconnecting…"));
  socket.on("connect_error", () => setState("offline: retrying"));

  socket.on("observations", (event) => {
    const row = panel.querySelector('tr[data-patient="' + CSS.escape(event.patient_id) + '"]');
    if (!row) return;
    let newest = null;
    for (const o of event.observations) {
      const cell = row.querySelector('td.vital[data-code="' + CSS.escape(o.code) + '"]');
      if (cell) {
        const decimals = Number(cell.dataset.decimals || 0);
        cell.textContent = Number(o.value).toFixed(decimals);
        cell.title = formatTime(o.taken_at);
        cell.classList.add("fresh");
        setTimeout(() => cell.classList.remove("fresh"), 1500);
      }
      if (!newest || o.taken_at > newest) newest = o.taken_at;
    }
    const last = row.querySelector("td.last");
    if (last && newest) {
      const time = document.createElement("time");
      time.dateTime = newest;
      time.textContent = formatTime(newest);
      last.replaceChildren(time);
    }
  });

  socket.on("alert", (alert) => {
    const row = panel.querySelector('tr[data-patient="' + CSS.escape(alert.patient_id) + '"]');
    const cell = row && row.querySelector("td.alerts");
    if (!cell) return;
    let item = cell.querySelector('[data-alert="' + CSS.escape(alert.id) + '"]');
    if (alert.state === "resolved") {
      if (item) item.remove();
      return;
    }
    if (!item) {
      item = document.createElement("span");
      item.dataset.alert = alert.id;
      cell.appendChild(item);
    }
    item.className = "alert " + alert.severity + (alert.state === "acknowledged" ? " acked" : "");
    item.textContent = alert.detail;
  });

  socket.on("news2", (score) => {
    const row = panel.querySelector('tr[data-patient="' + CSS.escape(score.patient_id) + '"]');
    const cell = row && row.querySelector("td.news2");
    if (!cell) return;
    const band = score.risk || score.risk_at_least;
    cell.dataset.risk = band;
    cell.dataset.complete = score.complete ? "yes" : "no";
    cell.title = score.label;
    cell.textContent = String(score.score);
    if (!score.complete) {
      const star = document.createElement("span");
      star.className = "incomplete";
      star.setAttribute("aria-label", "incomplete");
      star.textContent = "*";
      cell.appendChild(star);
    }
    const bandEl = document.createElement("span");
    bandEl.className = "band";
    bandEl.textContent = score.risk ? score.risk : "≥ " + score.risk_at_least;
    cell.append(" ", bandEl);
  });

  socket.on("presence", (event) => {
    const row = panel.querySelector('tr[data-patient="' + CSS.escape(event.patient_id) + '"]');
    const cell = row && row.querySelector("td.devices");
    if (!cell) return;
    // the server tells only changes, so the count moves by one each time
    const total = Number(cell.dataset.total || 0);
    if (!total) return;
    let online = Number(cell.dataset.online || 0) + (event.online ? 1 : -1);
    online = Math.max(0, Math.min(total, online));
    cell.dataset.online = String(online);
    cell.textContent = online + "/" + total + " online";
  });
})();
