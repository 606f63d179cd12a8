// The dashboard's waiting room: the clinician's waiting and in-call video visits, live
// from the Socket.IO `/visit` namespace (docs/visit-protocol.md, event `queue`).
// Admit moves the patient into the call and opens the call view; send back returns an
// in-call patient to the waiting room (they keep their place).
"use strict";

(function () {
  const panel = document.getElementById("queue-panel");
  if (!panel || typeof io === "undefined") return;
  const list = panel.querySelector("ul.queue");
  const empty = panel.querySelector(".queue-empty");
  const state = panel.querySelector(".live-state");
  const announce = panel.querySelector(".queue-announce");
  let waitingBefore = null; // visit ids waiting at the last update (null: none seen yet)
  const vitals = new Map();
  for (const li of panel.querySelectorAll(".vital-names li")) {
    vitals.set(li.dataset.code, {
      label: li.dataset.label,
      name: li.dataset.name,
      unit: li.dataset.unit,
      decimals: Number(li.dataset.decimals || 0),
    });
  }

  function setState(text) {
    if (state) state.textContent = text;
  }

  // "4 min", "1 h 5 min": how long ago, refreshed every few seconds
  function since(iso) {
    const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (seconds < 60) return seconds + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function relativeTime(iso, prefix) {
    const time = el("time", "relative");
    time.dateTime = iso;
    time.dataset.prefix = prefix;
    time.title = new Date(iso).toUTCString();
    time.textContent = prefix + since(iso);
    return time;
  }

  function refreshTimes() {
    for (const time of list.querySelectorAll("time.relative")) {
      time.textContent = time.dataset.prefix + since(time.dateTime);
    }
  }

  function precheckLine(pre) {
    const line = el("p", "precheck");
    if (!pre) {
      line.classList.add("muted");
      line.textContent = "No pre-call check yet";
      return line;
    }
    const parts = [
      "camera " + (pre.camera ? "ok" : "not working"),
      "mic " + (pre.microphone ? "ok" : "not working"),
    ];
    if (pre.rtt_ms !== null && pre.rtt_ms !== undefined) parts.push("RTT " + Math.round(pre.rtt_ms) + " ms");
    if (pre.upload_kbps !== null && pre.upload_kbps !== undefined) {
      parts.push("upload " + Math.round(pre.upload_kbps) + " kbps");
    }
    line.textContent = "Pre-call check: " + parts.join(", ") + ". ";
    const advice = el("strong", "recommendation", pre.recommendation === "audio" ? "Audio only advised" : "Video ok");
    advice.dataset.recommendation = pre.recommendation;
    line.appendChild(advice);
    if (!pre.camera || !pre.microphone) line.classList.add("warn");
    return line;
  }

  function vitalsLine(visit) {
    const latest = visit.latest || [];
    if (!visit.news2 && latest.length === 0) return null;
    const line = el("p", "queue-vitals");
    if (visit.news2) {
      const n = visit.news2;
      const news = el("span", "news2-chip", "NEWS2 " + n.score + (n.complete ? "" : "*"));
      news.dataset.risk = n.band || "";
      news.title = n.complete ? "NEWS2 (" + n.band + ")" : "NEWS2, incomplete (at least " + n.band + ")";
      line.appendChild(news);
    }
    for (const o of latest) {
      const known = vitals.get(o.code);
      const value = known ? Number(o.value).toFixed(known.decimals) : String(o.value);
      const chip = el("span", "vital-chip", (known ? known.label : o.code) + " " + value);
      chip.title = (known ? known.name + " (" + known.unit + ")" : o.unit) + ", " + new Date(o.taken_at).toUTCString();
      line.append(" ", chip);
    }
    return line;
  }

  function button(label, testid, className) {
    const b = el("button", className || "", label);
    b.type = "button";
    b.setAttribute("data-testid", testid);
    return b;
  }

  // Tell screen readers who arrived, rather than reading the whole list at each change.
  function announceArrivals(visits) {
    const waiting = new Set(visits.filter((v) => v.state === "waiting").map((v) => v.visit_id));
    if (waitingBefore !== null && announce) {
      const arrived = visits.filter((v) => v.state === "waiting" && !waitingBefore.has(v.visit_id));
      if (arrived.length) {
        announce.textContent = arrived.map((v) => v.patient_name).join(", ") +
          (arrived.length > 1 ? " are" : " is") + " in the waiting room.";
      }
    }
    waitingBefore = waiting;
  }

  function render(visits) {
    // keep the keyboard focus on the same button across a re-render
    const focused = document.activeElement && list.contains(document.activeElement)
      ? document.activeElement.getAttribute("data-testid") : null;
    announceArrivals(visits);
    const items = [];
    for (const v of visits) {
      const li = el("li", "queue-item");
      li.dataset.visit = v.visit_id;
      li.dataset.state = v.state;
      li.setAttribute("data-testid", "queue-" + v.visit_id);

      const head = el("div", "queue-head");
      const online = el("span", "presence " + (v.patient_online ? "online" : "offline"));
      online.setAttribute("role", "img");
      online.setAttribute("aria-label", v.patient_online ? "online" : "offline");
      online.title = v.patient_online ? "The patient's page is open" : "The patient's page is closed";
      const name = el("a", "queue-name", v.patient_name);
      name.href = "/patients/" + encodeURIComponent(v.patient_id);
      const badge = el("span", "state-badge", v.state === "in_call" ? "in call" : "waiting");
      badge.dataset.state = v.state;
      head.append(online, " ", name, " ", badge);
      if (v.waiting_since) head.append(" ", relativeTime(v.waiting_since, "waiting "));
      li.appendChild(head);
      li.appendChild(precheckLine(v.precheck));
      const vitalsP = vitalsLine(v);
      if (vitalsP) li.appendChild(vitalsP);

      const actions = el("div", "queue-actions");
      if (v.state === "waiting") {
        const admit = button("Admit", "admit-" + v.visit_id);
        admit.dataset.action = "admit";
        admit.setAttribute("aria-label", "Admit " + v.patient_name);
        actions.appendChild(admit);
      } else if (v.state === "in_call") {
        const open = el("a", "button-link", "Open the call");
        open.href = "/visits/" + encodeURIComponent(v.visit_id);
        const back = button("Send back", "send-back-" + v.visit_id, "secondary");
        back.dataset.action = "send_back";
        back.setAttribute("aria-label", "Send " + v.patient_name + " back to the waiting room");
        actions.append(open, back);
      }
      li.appendChild(actions);
      const error = el("p", "error queue-error");
      error.setAttribute("role", "alert");
      li.appendChild(error);
      items.push(li);
    }
    list.replaceChildren(...items);
    if (empty) empty.hidden = items.length > 0;
    if (focused) {
      const again = list.querySelector('[data-testid="' + CSS.escape(focused) + '"]');
      if (again) again.focus();
    }
  }

  const socket = io("/visit", { transports: ["websocket", "polling"] });
  socket.on("connect", () => setState("live"));
  socket.on("disconnect", () => setState("reconnecting…"));
  socket.on("connect_error", (err) => setState("offline: " + (err && err.message ? err.message : "retrying")));
  socket.on("queue", (event) => render(event.visits || []));

  list.addEventListener("click", (event) => {
    const b = event.target.closest("button[data-action]");
    if (!b) return;
    const item = b.closest(".queue-item");
    const visitId = item.dataset.visit;
    const error = item.querySelector(".queue-error");
    error.textContent = "";
    b.disabled = true;
    socket.timeout(10000).emit(b.dataset.action, { visit_id: visitId }, (err, answer) => {
      b.disabled = false;
      if (err || !answer || !answer.ok) {
        error.textContent = err ? "No answer from the server: try again." : (answer && answer.error) || "Refused.";
        return;
      }
      if (b.dataset.action === "admit") window.location.assign("/visits/" + encodeURIComponent(visitId));
    });
  });

  setInterval(refreshTimes, 5000);
})();
