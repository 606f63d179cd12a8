// The clinician's call view: the patient's video beside their details and live vitals.
// Signaling is the Socket.IO `/visit` namespace (docs/visit-protocol.md); the WebRTC
// side (perfect negotiation, ICE restart, audio only, low bandwidth, getStats) is the
// shared engine in rtc.js. The clinician is the impolite peer: it makes the offer.
// The vitals come from the live dashboard feed (default namespace). Each chat line is
// also dispatched on #call as a `chatline` event, for the record editor (record.js).
// Guests (an interpreter, family, a colleague): the Guests card invites one (POST
// /api/visits/{id}/guests, the link shown once), lists them from the `queue` events, and
// admits, sends back or removes them (`admit_guest`, `send_back_guest`, `remove_guest`).
"use strict";

(function () {
  const root = document.getElementById("call");
  if (!root || typeof io === "undefined") return;
  const visitId = root.dataset.visit;
  const patientId = root.dataset.patient;
  const $ = (selector) => root.querySelector(selector);
  const remoteVideo = $("[data-testid=remote-video]");
  const selfView = $("[data-testid=self-view]");
  const statusEl = $("[data-testid=call-status]");
  const stateEl = $("[data-testid=call-state]");
  const errorEl = $("[data-testid=call-error]");
  const confirmBox = $("[data-testid=end-confirm-box]");
  const afterCall = $("[data-testid=after-call]");
  const afterText = $("[data-testid=after-call-text]");
  const admitButton = $("[data-control=admit]");
  const unmuteButton = $("[data-testid=unmute]");
  const controls = $(".controls");
  const chatLog = $("[data-testid=chat-log]");
  const chatForm = $("[data-testid=chat-form]");
  const chatText = $("[data-testid=chat-text]");

  let phase = root.dataset.state; // the visit's state as this page last knew it
  let call = null; // the call in progress (rtc.js `RtcCall`), or null
  let local = null; // the promise of our camera and microphone while in a call
  let opening = false;
  let connectedOnce = false;
  let lastPeer = null; // the latest `peer` event about the patient's side of this call
  const options = { audioOnly: false, lowBandwidth: false, muted: false };

  // For tests and debugging: the call's current RTCPeerConnection (it changes when
  // either page reconnects).
  Object.defineProperty(window, "__rtc", {
    configurable: true,
    get: () => (call ? call.pc : null),
  });

  function setStatus(text) {
    statusEl.textContent = text;
  }

  function setError(text) {
    errorEl.textContent = text || "";
  }

  function setPhase(next) {
    phase = next;
    root.dataset.state = next;
    const inCall = next === "in_call";
    controls.hidden = !inCall;
    $("dl.quality").hidden = !inCall;
    if (!inCall) confirmBox.hidden = true;
    afterCall.hidden = inCall;
    admitButton.hidden = next !== "waiting";
    chatText.disabled = !inCall;
    if (next === "waiting") afterText.textContent = "The patient is in the waiting room.";
    else if (next === "ended") afterText.textContent = "This visit has ended. The patient's link no longer works.";
    else if (next === "cancelled" || next === "no_show") afterText.textContent = "This visit is closed (" + next.replace("_", " ") + ").";
    else if (next === "scheduled") afterText.textContent = "The patient has not arrived yet.";
    else afterText.textContent = "";
    if (!inCall) setStatus(next === "waiting" ? "Waiting room" : "");
    renderGuests();
  }

  // the engine --------------------------------------------------------------------------
  function emit(event, payload) {
    return new Promise((resolve) => {
      socket.timeout(10000).emit(event, payload, (err, answer) => {
        if (err) resolve({ ok: false, error: "no answer from the server" });
        else resolve(answer || { ok: false, error: "empty answer" });
      });
    });
  }

  function releaseLocal() {
    if (local) {
      const stopping = local;
      local = null;
      stopping.then((stream) => stream.getTracks().forEach((t) => t.stop()));
    }
  }

  function stopCall() {
    if (call) {
      call.close();
      call = null;
    }
    lastPeer = null;
    RtcCall.showParticipants(remoteVideo, remoteVideo.parentElement, []);
    remoteVideo.srcObject = null;
    showRecording(false);
    const record = $("[data-control=record]");
    pressed(record, false);
    record.textContent = "Record (with the patient's consent)";
    selfView.srcObject = null;
    selfView.hidden = true;
    unmuteButton.hidden = true;
    for (const dd of root.querySelectorAll("dl.quality dd")) dd.textContent = "–";
    releaseLocal();
  }

  // Our camera and microphone; without a camera, the microphone alone; without either,
  // an empty stream (the clinician still sees and hears the patient).
  function localMedia(media) {
    if (!local) {
      const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
      const gum = (c) => navigator.mediaDevices.getUserMedia(c);
      local = gum({ audio: audio, video: RtcCall.videoConstraints(media, options.lowBandwidth) })
        .catch(() => gum({ audio: audio }))
        .catch((err) => {
          setError("Your camera and microphone could not start (" + (err.name || err) + "). The patient cannot see or hear you.");
          return new MediaStream();
        });
    }
    return local;
  }

  function showSelf(stream) {
    const hasVideo = stream.getVideoTracks().length > 0;
    selfView.hidden = !hasVideo;
    if (hasVideo && selfView.srcObject !== stream) {
      selfView.srcObject = stream;
      selfView.play().catch(() => {});
    }
  }

  function showRemote(stream) {
    if (remoteVideo.srcObject !== stream) remoteVideo.srcObject = stream;
    playRemote();
  }

  function callState(state) {
    const text = {
      waiting: "Waiting for the patient to join the call…",
      connecting: "Connecting to the patient…",
      reconnecting: "The connection was interrupted. Reconnecting…",
      connected: "",
      closed: "",
    }[state];
    if (text !== undefined) setStatus(text);
    root.dataset.call = state;
  }

  async function playRemote() {
    try {
      await remoteVideo.play();
      unmuteButton.hidden = true;
    } catch (err) {
      // autoplay with sound refused until the page is touched: play muted, offer sound
      remoteVideo.muted = true;
      unmuteButton.hidden = false;
      try {
        await remoteVideo.play();
      } catch (ignored) {
        // the video element retries on the next track
      }
    }
  }

  async function startCall(answer) {
    const stream = await localMedia(answer.media);
    if (phase !== "in_call") return; // sent back or ended meanwhile
    // The patient may have entered the room between the server's answer and now (their
    // `peer` event came first): go on as if the answer had named them.
    let payload = answer;
    if (!payload.peer && lastPeer && lastPeer.present) {
      payload = Object.assign({}, answer, { peer: { role: lastPeer.role, sid: lastPeer.sid } });
    }
    if (call) {
      call.rejoin(payload); // our socket reconnected: go on with the new payload
      return;
    }
    showSelf(stream);
    call = RtcCall.create({
      socket: socket,
      call: payload,
      localStream: stream,
      audioOnly: options.audioOnly,
      lowBandwidth: options.lowBandwidth,
      onRemoteStream: showRemote,
      onLocalStream: showSelf,
      onState: callState,
      onQuality: showQuality,
      onRemoteQuality: showRemoteQuality,
      onRemoteMedia: (m) => {
        $("[data-testid=remote-note]").hidden = !m.audio_only;
      },
      onAudioOnly: (on, reason) => {
        options.audioOnly = on;
        const button = $("[data-control=audio-only]");
        pressed(button, on);
        button.textContent = on ? "Camera on" : "Camera off (audio only)";
        if (on) selfView.hidden = true;
        if (reason === "bandwidth") setStatusNote("The connection is weak: your video was turned off.");
      },
      onLowBandwidth: (on, reason) => {
        options.lowBandwidth = on;
        pressed($("[data-control=low-bandwidth]"), on);
        if (reason === "bandwidth") setStatusNote("The connection is slow: switched to low bandwidth.");
      },
      onChat: (m) => addChat(m.from, m.text, m.at, m.name),
      onParticipants: (list) => RtcCall.showParticipants(remoteVideo, remoteVideo.parentElement, list),
      onMode: (mode) => {
        root.dataset.mode = mode;
      },
      onRecording: showRecording,
      onConsent: (m) => {
        if (m.from === "patient") {
          setStatusNote(m.consent ? "The patient agrees to recording." : "The patient does not agree to recording.");
        }
      },
      onError: (err) => console.warn("call:", err && err.message ? err.message : err),
    });
    call.setMicrophone(!options.muted);
    const record = $("[data-control=record]");
    pressed(record, Boolean(payload.consent));
    record.textContent = payload.consent ? "Stop recording" : "Record (with the patient's consent)";
    // without a camera the call starts audio only, whatever was asked
    options.audioOnly = call.audioOnly;
    const cameraButton = $("[data-control=audio-only]");
    pressed(cameraButton, call.audioOnly);
    cameraButton.textContent = call.audioOnly ? "Camera on" : "Camera off (audio only)";
    pressed($("[data-control=low-bandwidth]"), call.lowBandwidth);
    call.start();
  }

  // Recording: while both the patient and the clinician agree (stored with the visit);
  // everyone in the call sees the indicator while it runs.
  function showRecording(active) {
    $("[data-testid=recording-indicator]").hidden = !active;
    root.dataset.recording = String(active);
  }

  function setStatusNote(text) {
    $("[data-testid=call-note]").textContent = text;
  }

  // Enter the call room: "open" the call in progress, or "admit" the waiting patient.
  async function enterCall(action) {
    if (opening) return;
    opening = true;
    try {
      setStatus(action === "admit" ? "Admitting the patient…" : "Joining the call…");
      // The camera first, so that the call exists as soon as the server answers.
      await localMedia(null);
      const answer = await emit(action, { visit_id: visitId });
      if (!answer.ok) {
        setError(answer.error);
        if (!call) releaseLocal();
        setPhase(phase);
        return;
      }
      setError("");
      setPhase("in_call");
      await startCall(answer);
    } finally {
      opening = false;
    }
  }

  // The visit left the queue (ended or cancelled elsewhere): ask how it stands.
  async function refreshState() {
    try {
      const response = await fetch("/api/visits/" + encodeURIComponent(visitId), { credentials: "same-origin" });
      if (!response.ok) return;
      const visit = await response.json();
      if (visit.state !== phase) {
        if (visit.state !== "in_call") stopCall();
        setPhase(visit.state);
      }
    } catch (err) {
      // the next queue event tells again
    }
  }

  // signaling ---------------------------------------------------------------------------
  const socket = io("/visit", { transports: ["websocket", "polling"] });

  socket.on("connect", () => {
    stateEl.textContent = "live";
    // After a reconnect our socket id is new: the patient's side starts a new connection.
    if (connectedOnce && call) call.suspend();
    connectedOnce = true;
    if (phase === "in_call") enterCall("open");
  });
  socket.on("disconnect", () => {
    stateEl.textContent = "reconnecting…";
  });
  socket.on("connect_error", (err) => {
    stateEl.textContent = "offline: " + (err && err.message ? err.message : "retrying");
  });

  socket.on("queue", (event) => {
    const mine = (event.visits || []).find((v) => v.visit_id === visitId);
    if (!mine) {
      if (phase === "waiting" || phase === "in_call") refreshState();
      return;
    }
    showQueueEntry(mine);
    guests = mine.guests || [];
    renderGuests();
    if (opening || mine.state === phase) return;
    if (mine.state === "in_call") {
      // admitted from another page of ours (the dashboard): join the call here
      if (!call) enterCall("open");
    } else if (mine.state === "waiting") {
      stopCall();
      setPhase("waiting");
    }
  });

  socket.on("peer", (event) => {
    if (event.visit_id === visitId && event.role === "patient") lastPeer = event;
  });

  socket.on("call_over", (event) => {
    if (event.visit_id !== visitId) return;
    stopCall();
    setPhase(event.reason === "ended" ? "ended" : "waiting");
  });

  function showRemoteQuality(q) {
    const parts = [];
    if (q.audio_only) parts.push("audio only");
    if (q.rtt_ms != null) parts.push(Math.round(q.rtt_ms) + " ms");
    if (q.loss_pct != null) parts.push(Number(q.loss_pct).toFixed(1) + " % loss");
    if (q.kbps_in != null) parts.push(Math.round(q.kbps_in) + " kbps in");
    $("[data-q=peer]").textContent = parts.join(", ") || "–";
  }

  // controls ----------------------------------------------------------------------------
  function pressed(button, on) {
    button.setAttribute("aria-pressed", String(on));
  }

  root.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-control]");
    if (!button) return;
    const control = button.dataset.control;
    setError("");
    if (control === "mute") {
      options.muted = !options.muted;
      if (call) call.setMicrophone(!options.muted);
      pressed(button, options.muted);
      button.textContent = options.muted ? "Unmute" : "Mute";
    } else if (control === "audio-only") {
      if (!call) return;
      try {
        await call.setAudioOnly(!call.audioOnly, "user");
      } catch (err) {
        setError("The camera could not start again (" + (err.name || err) + ").");
      }
    } else if (control === "low-bandwidth") {
      if (call) await call.setLowBandwidth(!call.lowBandwidth, "user");
      else {
        options.lowBandwidth = !options.lowBandwidth;
        pressed(button, options.lowBandwidth);
      }
    } else if (control === "record") {
      if (!call) return;
      const agree = button.getAttribute("aria-pressed") !== "true";
      try {
        await call.setConsent(agree);
        pressed(button, agree);
        button.textContent = agree ? "Stop recording" : "Record (with the patient's consent)";
        if (agree) setStatusNote("Recording starts when the patient agrees too.");
      } catch (err) {
        setError(err.message || String(err));
      }
    } else if (control === "end") {
      confirmBox.hidden = false;
      $("[data-control=end-confirm]").focus();
    } else if (control === "end-cancel") {
      confirmBox.hidden = true;
    } else if (control === "admit") {
      button.disabled = true;
      await enterCall("admit");
      button.disabled = false;
    } else if (control === "end-confirm" || control === "send-back") {
      const action = control === "send-back" ? "send_back" : "end";
      button.disabled = true;
      const answer = await emit(action, { visit_id: visitId });
      button.disabled = false;
      if (!answer.ok) {
        setError(answer.error);
        return;
      }
      stopCall();
      setPhase(action === "end" ? "ended" : "waiting");
    }
  });

  unmuteButton.addEventListener("click", () => {
    remoteVideo.muted = false;
    unmuteButton.hidden = true;
    remoteVideo.play().catch(() => {});
  });

  // chat --------------------------------------------------------------------------------
  function addChat(from, text, at, name) {
    const li = document.createElement("li");
    li.className = from === "clinician" ? "mine" : "theirs";
    const who = document.createElement("span");
    who.className = "from";
    who.textContent = from === "clinician" ? "You" : from === "guest" ? (name || "Guest") : "Patient";
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    li.append(who, body);
    if (at) {
      const time = document.createElement("time");
      time.dateTime = at;
      time.textContent = new Date(at).toISOString().slice(11, 16);
      li.appendChild(time);
    }
    chatLog.appendChild(li);
    chatLog.scrollTop = chatLog.scrollHeight;
    // The chat is kept nowhere else (the server relays it, never stores it): the
    // record editor (record.js) listens for these lines and saves the transcript.
    root.dispatchEvent(new CustomEvent("chatline", {
      detail: {
        sender: from === "clinician" ? "doctor" : from === "guest" ? "guest" : "patient",
        at: at || new Date().toISOString(),
        text: text,
      },
    }));
  }

  chatForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = chatText.value.trim();
    if (!text) return;
    if (!call) return;
    let answer;
    try {
      answer = await call.sendChat(text);
    } catch (err) {
      setError("Your message was not sent (" + err.message + "). Try again.");
      return;
    }
    chatText.value = "";
    // the server relays to the others in the room; our own line is shown here
    addChat("clinician", text, (answer && answer.at) || new Date().toISOString());
  });

  // vitals ------------------------------------------------------------------------------
  const vitalsState = document.querySelector("[data-testid=vitals-state]");
  const news2El = document.querySelector("[data-testid=call-news2]");

  function showVital(o) {
    const dd = document.querySelector('.call-vitals dd[data-code="' + CSS.escape(o.code) + '"]');
    if (!dd || (dd.dataset.at && Date.parse(dd.dataset.at) > Date.parse(o.taken_at))) return;
    dd.dataset.at = o.taken_at;
    const text = Number(o.value).toFixed(Number(dd.dataset.decimals || 0)) + " " + dd.dataset.unit;
    if (dd.textContent !== text) {
      dd.textContent = text;
      dd.classList.add("fresh");
      setTimeout(() => dd.classList.remove("fresh"), 1500);
    }
    dd.title = new Date(o.taken_at).toUTCString();
  }

  function showNews2(score, band, fromLive) {
    if (fromLive) news2El.dataset.live = "yes";
    news2El.replaceChildren();
    const strong = document.createElement("strong");
    strong.textContent = "NEWS2 " + score.score + (score.complete ? "" : "*");
    const chip = document.createElement("span");
    chip.className = "news2-chip";
    chip.dataset.risk = band;
    chip.textContent = score.complete ? band : "≥ " + band;
    news2El.append(strong, " ", chip);
    if (score.label) news2El.title = score.label;
  }

  function showQueueEntry(entry) {
    for (const o of entry.latest || []) showVital(o);
    if (entry.news2 && !news2El.dataset.live) showNews2(entry.news2, entry.news2.band);
    const pre = entry.precheck;
    if (pre) {
      const parts = [
        "camera " + (pre.camera ? "ok" : "not working"),
        "mic " + (pre.microphone ? "ok" : "not working"),
      ];
      if (pre.rtt_ms != null) parts.push("RTT " + Math.round(pre.rtt_ms) + " ms");
      if (pre.upload_kbps != null) parts.push("upload " + Math.round(pre.upload_kbps) + " kbps");
      parts.push(pre.recommendation === "audio" ? "audio only advised" : "video ok");
      $("[data-testid=call-precheck]").textContent = parts.join(", ");
    }
  }

  // the score now; the live feed sends the next one
  fetch("/api/patients/" + encodeURIComponent(patientId) + "/news2", { credentials: "same-origin" })
    .then((response) => (response.ok ? response.json() : null))
    .then((score) => {
      if (score && !news2El.dataset.live) showNews2(score, score.risk || score.risk_at_least);
    })
    .catch(() => {});

  const live = io({ transports: ["websocket", "polling"] });
  live.on("connect", () => { vitalsState.textContent = "live"; });
  live.on("disconnect", () => { vitalsState.textContent = "reconnecting…"; });
  live.on("observations", (event) => {
    if (event.patient_id !== patientId) return;
    for (const o of event.observations) showVital(o);
  });
  live.on("news2", (score) => {
    if (score.patient_id !== patientId) return;
    showNews2(score, score.risk || score.risk_at_least, true);
  });

  // quality -----------------------------------------------------------------------------
  function showQuality(q) {
    const fmt = {
      rtt_ms: (v) => Math.round(v) + " ms",
      loss_pct: (v) => v.toFixed(1) + " %",
      kbps_in: (v) => Math.round(v) + " kbps",
      kbps_out: (v) => Math.round(v) + " kbps",
    };
    for (const key of Object.keys(fmt)) {
      const dd = $('[data-q="' + key + '"]');
      dd.textContent = q[key] == null ? "–" : fmt[key](q[key]);
    }
  }

  // guests ------------------------------------------------------------------------------
  const guestsCard = document.querySelector("[data-testid=guests-card]");
  const guestList = guestsCard.querySelector("[data-testid=guest-list]");
  const guestError = guestsCard.querySelector("[data-testid=guest-error]");
  const inviteForm = guestsCard.querySelector("[data-testid=invite-form]");
  const linkBox = guestsCard.querySelector("[data-testid=guest-link-box]");
  const linkInput = guestsCard.querySelector("[data-testid=guest-link]");
  const maxGuests = Number(guestsCard.dataset.maxGuests) || 0;
  const ROLE_NAMES = { interpreter: "Interpreter", family: "Family member", colleague: "Colleague" };
  const GUEST_STATES = {
    invited: "invited (has not joined yet)",
    waiting: "in the waiting room",
    in_call: "in the call",
  };
  let guests = JSON.parse(guestsCard.dataset.guests || "[]");

  function guestButton(action, guest, text, testid) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = action === "admit" ? "" : "secondary";
    button.dataset.guestAction = action;
    button.dataset.guest = guest.guest_id;
    button.dataset.testid = testid + "-" + guest.guest_id;
    button.textContent = text;
    return button;
  }

  function renderGuests() {
    guestList.replaceChildren();
    const open = !["ended", "cancelled", "no_show"].includes(phase);
    for (const g of guests) {
      const li = document.createElement("li");
      li.dataset.testid = "guest-" + g.guest_id;
      li.dataset.state = g.state;
      const who = document.createElement("strong");
      who.textContent = g.name;
      const what = document.createElement("span");
      what.className = "muted";
      what.textContent = " " + (ROLE_NAMES[g.role] || g.role) + ", ";
      const state = document.createElement("span");
      state.dataset.testid = "guest-state-" + g.guest_id;
      state.textContent = (GUEST_STATES[g.state] || g.state) + (g.online ? "" : g.state === "invited" ? "" : " (offline)");
      li.append(who, what, state);
      const actions = document.createElement("div");
      actions.className = "guest-actions";
      if (g.state === "waiting") {
        const admit = guestButton("admit", g, "Admit", "admit-guest");
        admit.disabled = phase !== "in_call";
        if (admit.disabled) admit.title = "Admit the patient first: a guest joins a call in progress.";
        actions.appendChild(admit);
      }
      if (g.state === "in_call") actions.appendChild(guestButton("send-back", g, "Send back", "send-back-guest"));
      if (open) actions.appendChild(guestButton("remove", g, "Remove", "remove-guest"));
      li.appendChild(actions);
      guestList.appendChild(li);
    }
    guestsCard.querySelector("[data-testid=guests-empty]").hidden = guests.length > 0;
    inviteForm.hidden = !open || maxGuests <= 0;
    inviteForm.querySelector("button").disabled = guests.length >= maxGuests;
  }

  guestList.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-guest-action]");
    if (!button) return;
    const events = { admit: "admit_guest", "send-back": "send_back_guest", remove: "remove_guest" };
    guestError.textContent = "";
    button.disabled = true;
    const answer = await emit(events[button.dataset.guestAction], { visit_id: visitId, guest_id: button.dataset.guest });
    button.disabled = false;
    if (!answer.ok) {
      guestError.textContent = answer.error;
      return;
    }
    const guest = guests.find((g) => g.guest_id === answer.guest_id);
    if (answer.state === "removed") guests = guests.filter((g) => g.guest_id !== answer.guest_id);
    else if (guest) guest.state = answer.state;
    renderGuests();
  });

  inviteForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    guestError.textContent = "";
    const role = inviteForm.elements.role.value;
    const name = inviteForm.elements.name.value.trim();
    if (!name) {
      guestError.textContent = "Write the guest's name: the others in the call see it.";
      inviteForm.elements.name.focus();
      return;
    }
    const button = inviteForm.querySelector("button");
    button.disabled = true;
    let response;
    let body = null;
    try {
      response = await fetch("/api/visits/" + encodeURIComponent(visitId) + "/guests", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": guestsCard.dataset.csrf },
        body: JSON.stringify({ role: role, name: name }),
      });
      body = await response.json().catch(() => null);
    } catch (err) {
      guestError.textContent = "The clinic's server could not be reached. Try again.";
      renderGuests();
      return;
    }
    if (!response.ok || !body) {
      guestError.textContent = (body && body.error) || "The guest could not be invited (" + response.status + ").";
      renderGuests();
      return;
    }
    inviteForm.elements.name.value = "";
    if (!guests.some((g) => g.guest_id === body.guest_id)) {
      guests.push({ guest_id: body.guest_id, name: body.name, role: body.role, state: body.state || "invited", waiting_since: null, online: false });
    }
    linkInput.value = body.join_url;
    guestsCard.querySelector("[data-testid=guest-link-for]").textContent = body.name;
    guestsCard.querySelector("[data-testid=guest-link-copied]").textContent = "";
    linkBox.hidden = false;
    renderGuests();
    linkInput.focus();
    linkInput.select();
  });

  guestsCard.querySelector("[data-testid=copy-guest-link]").addEventListener("click", async () => {
    const said = guestsCard.querySelector("[data-testid=guest-link-copied]");
    try {
      await navigator.clipboard.writeText(linkInput.value);
      said.textContent = "Copied.";
    } catch (err) {
      linkInput.focus();
      linkInput.select();
      said.textContent = "Press Ctrl+C (⌘C) to copy.";
    }
  });

  setPhase(phase);
})();
