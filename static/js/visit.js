// The patient's room (templates/visit.html): the pre-call check, the waiting room and
// the call, over the HTTP routes and the `/visit` Socket.IO namespace of
// docs/visit-protocol.md. The WebRTC engine is rtc.js. Every text the patient reads goes
// through `_()`: the page carries its translations as JSON (#visit-i18n), taken from the
// same gettext catalogue as the template (pybabel extracts the `_("...")` calls here).
// Text from the network is shown with textContent, never as HTML.
// A guest's link (an interpreter, family, a colleague) opens the same room in guest mode
// (#visit's data-guest-role): the pass is the `telemed_guest` cookie, there is no place in
// line, and in the call the page shows the people in it and the messages (no WebRTC here:
// media for three or more people goes through the clinic's relay).
"use strict";

(function () {
  const root = document.getElementById("visit");
  if (!root) return;

  const I18N = JSON.parse(document.getElementById("visit-i18n").textContent || "{}");
  const MESSAGES = I18N.messages || {};
  const LANG = I18N.lang || document.documentElement.lang || "en";

  function _(msgid, vars) {
    const text = MESSAGES[msgid] || msgid;
    if (!vars) return text;
    return text.replace(/%\((\w+)\)s/g, (all, name) => (name in vars ? String(vars[name]) : all));
  }

  const $ = (id) => document.getElementById(id);
  const GUEST = root.dataset.guestRole || ""; // "" for the patient
  const PINGS = 5; // the first warms the connection up and is not counted
  const UPLOAD_SIZES = [64 * 1024, 384 * 1024];
  const UPLOAD_ENOUGH_MS = 2500; // a slower sample is estimate enough: spare the data
  const REQUEST_TIMEOUT_MS = 20000;
  const ACK_TIMEOUT_MS = 15000;
  const MAX_REFUSALS = 3;
  const media = {
    low_bandwidth_kbps: Number(root.dataset.lowKbps) || 150,
    low_bandwidth_height: Number(root.dataset.lowHeight) || 240,
    audio_only_below_kbps: Number(root.dataset.audioBelowKbps) || 100,
  };

  const s = {
    claimed: false,
    claiming: null,
    visitId: null,
    joined: false,
    ended: false,
    socket: null,
    refusals: 0,
    stream: null,
    devices: null, // the promise of the camera and microphone
    camera: false,
    microphone: false,
    meter: null,
    net: null, // the promise of the network check
    rtt: null,
    upload: null,
    recommendation: null,
    precheckSent: false,
    inCall: false,
    callFor: null, // the socket id the `call` payload was received on
    call: null,
    lowBandwidth: false,
  };

  // --- what is shown --------------------------------------------------------------------
  function show(step) {
    for (const section of root.querySelectorAll("[data-step]")) section.hidden = section.id !== step;
  }

  function status(text) {
    const el = $("status");
    el.textContent = text || "";
    el.hidden = !text;
  }

  function result(id, ok, text) {
    const el = $(id);
    el.textContent = text;
    el.dataset.ok = String(ok);
  }

  function refuse(message) {
    finish();
    $("refused-message").textContent = message;
    show("refused");
  }

  function showWhen() {
    const at = new Date(root.dataset.scheduledAt);
    if (isNaN(at.getTime()) || typeof Intl === "undefined") return;
    let time;
    try {
      time = new Intl.DateTimeFormat(LANG, { dateStyle: "full", timeStyle: "short" }).format(at);
    } catch (err) {
      time = at.toLocaleString();
    }
    $("when").textContent = _("Your visit is booked for %(time)s.", { time: time });
    $("when").hidden = false;
  }

  // --- the link and the pass --------------------------------------------------------------
  function claim() {
    if (s.claimed) return Promise.resolve(true);
    if (!s.claiming) s.claiming = doClaim().finally(() => { s.claiming = null; });
    return s.claiming;
  }

  async function doClaim() {
    let response;
    try {
      response = await fetch(root.dataset.claim, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRF-Token": root.dataset.csrf, Accept: "application/json" },
      });
    } catch (err) {
      status(_("We could not reach the clinic. Check that you are connected to the internet, then try again."));
      return false;
    }
    const body = await readJson(response);
    if (!response.ok) {
      if (response.status === 410 && body && body.state === "ended") end(); // over: say so
      else if (body && body.error && [403, 404, 410].includes(response.status)) refuse(body.error);
      else if (response.status === 403) status(_("This page has expired. Reload the page and try again."));
      else status(_("Something went wrong at the clinic. Please try again in a minute."));
      return false;
    }
    s.claimed = true;
    s.visitId = body.visit_id;
    if (body.media) Object.assign(media, body.media);
    return true;
  }

  async function readJson(response) {
    const type = response.headers.get("Content-Type") || "";
    if (!type.includes("application/json")) return null;
    try {
      return await response.json();
    } catch (err) {
      return null;
    }
  }

  // --- camera and microphone ----------------------------------------------------------------
  function explain(err) {
    switch (err && err.name) {
      case "NotAllowedError":
      case "SecurityError":
      case "PermissionDeniedError":
        return _("Your browser is not letting this page use the camera and microphone. Tap the lock or camera sign next to the web address, allow the camera and the microphone, then reload the page.");
      case "NotFoundError":
      case "DevicesNotFoundError":
        return _("We could not find a camera or a microphone on this device. You can use a phone, or plug in a headset, then try again.");
      case "NotReadableError":
      case "TrackStartError":
        return _("Another app is using your camera or microphone. Close other apps that may use them (video calls, the camera), then try again.");
      case "OverconstrainedError":
        return _("Your camera could not start with the settings we asked for. Try again; if it still fails, join with voice only.");
      case "insecure":
        return _("This page cannot use your camera because the connection is not secure. Ask the clinic for a link that starts with https://");
      default:
        return _("The camera or microphone could not start. Reload the page and try again.");
    }
  }

  function startDevices() {
    if (!s.devices) s.devices = openDevices();
    return s.devices;
  }

  async function openDevices() {
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      deviceResults(null, { name: "insecure" });
      return null;
    }
    const gum = (c) => navigator.mediaDevices.getUserMedia(c);
    const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
    const video = RtcCall.videoConstraints(media, s.lowBandwidth);
    let stream = null;
    let error = null;
    try {
      stream = await gum({ audio: audio, video: video });
    } catch (err) {
      error = err;
    }
    if (!stream && error && error.name === "OverconstrainedError") {
      try {
        stream = await gum({ audio: audio, video: true });
        error = null;
      } catch (err) {
        error = err;
      }
    }
    const denied = error && ["NotAllowedError", "SecurityError", "PermissionDeniedError"].includes(error.name);
    if (!stream && !denied) {
      // one of the two may still work: a phone without a camera, a camera in use
      for (const only of [{ audio: audio }, { video: video }]) {
        try {
          stream = await gum(only);
          break;
        } catch (err) {
          continue;
        }
      }
    }
    deviceResults(stream, error);
    return stream;
  }

  function deviceResults(stream, error) {
    s.stream = stream;
    s.camera = Boolean(stream && stream.getVideoTracks().length);
    s.microphone = Boolean(stream && stream.getAudioTracks().length);
    result("camera-result", s.camera, s.camera ? _("working") : _("not available"));
    result("mic-result", s.microphone, s.microphone ? _("working") : _("not available"));
    const help = $("media-help");
    if (error && (!s.camera || !s.microphone)) {
      help.textContent = explain(error);
      help.hidden = false;
    } else {
      help.hidden = true;
    }
    if (s.camera) {
      $("preview").srcObject = stream;
      $("preview").closest(".preview").classList.add("live");
      playQuietly($("preview"));
    }
    if (s.microphone) startMeter(stream);
  }

  function startMeter(stream) {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (s.meter || !Context) return;
    const context = new Context();
    const analyser = context.createAnalyser();
    analyser.fftSize = 512;
    const source = context.createMediaStreamSource(stream);
    source.connect(analyser);
    const data = new Uint8Array(analyser.fftSize);
    const meter = $("mic-level");
    let peak = 0;
    const timer = setInterval(() => {
      analyser.getByteTimeDomainData(data);
      let sum = 0;
      for (let i = 0; i < data.length; i++) {
        const v = (data[i] - 128) / 128;
        sum += v * v;
      }
      const level = Math.min(1, Math.sqrt(sum / data.length) * 4);
      meter.value = level;
      if (level > peak) {
        peak = level;
        meter.dataset.peak = level.toFixed(3);
      }
    }, 100);
    if (context.state === "suspended") context.resume().catch(() => {});
    s.meter = { context: context, timer: timer };
  }

  function stopMeter() {
    if (!s.meter) return;
    clearInterval(s.meter.timer);
    s.meter.context.close().catch(() => {});
    s.meter = null;
  }

  function playQuietly(video) {
    const played = video.play();
    if (played && played.catch) played.catch(() => {});
  }

  // --- the network ----------------------------------------------------------------------------
  function timedFetch(url, options) {
    const controller = typeof AbortController === "function" ? new AbortController() : null;
    const timer = controller ? setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS) : null;
    const opts = Object.assign({ credentials: "same-origin", cache: "no-store" }, options || {});
    if (controller) opts.signal = controller.signal;
    return fetch(url, opts).finally(() => clearTimeout(timer));
  }

  function randomBytes(size) {
    const bytes = new Uint8Array(size);
    for (let i = 0; i < size; i += 65536) crypto.getRandomValues(bytes.subarray(i, Math.min(size, i + 65536)));
    return bytes; // random, so that nothing on the way can compress it
  }

  function median(values) {
    const sorted = values.slice().sort((a, b) => a - b);
    const mid = Math.floor(sorted.length / 2);
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  async function measureRtt() {
    const times = [];
    for (let i = 0; i < PINGS; i++) {
      const started = performance.now();
      const response = await timedFetch("/v/net/ping");
      await response.json();
      if (!response.ok) throw new Error("ping " + response.status);
      if (i > 0) times.push(performance.now() - started);
    }
    return median(times);
  }

  async function measureUpload(rtt) {
    let kbps = null;
    for (const size of UPLOAD_SIZES) {
      const body = randomBytes(size);
      const started = performance.now();
      const response = await timedFetch("/v/net/upload", {
        method: "POST",
        headers: { "Content-Type": "application/octet-stream", "X-CSRF-Token": root.dataset.csrf },
        body: body,
      });
      const answer = await readJson(response);
      if (!response.ok || !answer) throw new Error("upload " + response.status);
      const elapsed = performance.now() - started;
      const sending = Math.max(elapsed - rtt, elapsed / 2, 1); // less the round trip
      kbps = (answer.bytes * 8) / sending; // bits per millisecond = kbit/s
      if (elapsed > UPLOAD_ENOUGH_MS) break;
    }
    return kbps;
  }

  function runNetworkCheck() {
    s.net = (async () => {
      result("rtt", true, _("checking…"));
      result("upload", true, _("checking…"));
      try {
        s.rtt = await measureRtt();
        result("rtt", s.rtt < 600, _("%(ms)s ms", { ms: Math.round(s.rtt) }));
      } catch (err) {
        s.rtt = null;
        result("rtt", false, _("could not check"));
      }
      try {
        s.upload = await measureUpload(s.rtt || 0);
        result("upload", s.upload >= media.audio_only_below_kbps, speed(s.upload));
      } catch (err) {
        s.upload = null;
        result("upload", false, _("could not check"));
      }
      s.lowBandwidth = s.upload !== null && s.upload < media.low_bandwidth_kbps * 3;
    })();
    return s.net;
  }

  function speed(kbps) {
    if (kbps >= 1000) return _("%(mbps)s Mbit/s", { mbps: (kbps / 1000).toFixed(1) });
    return _("%(kbps)s kbit/s", { kbps: Math.round(kbps) });
  }

  // --- the pre-call check ---------------------------------------------------------------------
  async function precheck() {
    await Promise.all([startDevices(), s.net || runNetworkCheck()]);
    const slow = s.upload !== null && s.upload < media.audio_only_below_kbps;
    s.recommendation = !s.camera || slow ? "audio" : "video";
    const advice = $("advice");
    advice.dataset.recommendation = s.recommendation;
    if (!s.microphone) {
      advice.textContent = _("The doctor will not hear you without a microphone. You can still join and use the messages.");
    } else if (!s.camera) {
      advice.textContent = _("We suggest a voice-only call: the doctor will hear you but not see you.");
    } else if (slow) {
      advice.textContent = _("Your connection is slow. We suggest a voice-only call: the doctor will hear you clearly.");
    } else {
      advice.textContent = _("Everything works. Your connection is good enough for video.");
    }
    advice.hidden = false;
    $("voice-only-choice").checked = s.recommendation === "audio";
    s.precheckSent = false;
    sendPrecheck();
  }

  function sendPrecheck() {
    if (GUEST) return; // the doctor's queue shows the patient's check only
    if (!s.recommendation || s.precheckSent || !s.socket || !s.socket.connected) return;
    s.precheckSent = true;
    s.socket.emit(
      "precheck",
      {
        camera: s.camera,
        microphone: s.microphone,
        rtt_ms: s.rtt === null ? null : Math.round(s.rtt),
        upload_kbps: s.upload === null ? null : Math.round(s.upload),
        recommendation: s.recommendation,
      },
      () => {}
    );
  }

  async function onCheck() {
    const button = $("check-button");
    button.disabled = true;
    try {
      if (!(await claim())) return;
      connect();
      s.net = null; // pressing again checks the network again
      await precheck();
    } finally {
      button.disabled = false;
    }
  }

  async function onJoin() {
    const button = $("join");
    button.disabled = true;
    try {
      if (!(await claim())) return;
      s.joined = true;
      connect();
      arrive();
      if (s.visitState === "in_call") return; // the call view is already on its way
      show("waiting");
      if (!s.recommendation && !s.net) precheck(); // meanwhile, in the waiting room
    } finally {
      button.disabled = false;
    }
  }

  // --- the clinic (Socket.IO) -------------------------------------------------------------------
  function connect() {
    if (s.socket || s.ended) return;
    if (typeof io !== "function") {
      status(_("The page did not load completely. Reload the page."));
      return;
    }
    // WebSocket first; long-polling is the fallback where a network blocks WebSocket.
    const socket = io("/visit", {
      transports: ["websocket", "polling"],
      reconnectionDelayMax: 10000,
      // checking the camera is not yet arriving: the queue shows the patient from Join on
      auth: (send) => send(GUEST ? { arrive: s.joined, guest: true } : { arrive: s.joined }),
    });
    s.socket = socket;
    socket.on("connect", () => {
      s.refusals = 0;
      if (s.joined) arrive();
      status(null);
      if (s.call) s.call.suspend(); // a new sid: the doctor's side starts a new connection
      s.callFor = null;
      sendPrecheck();
    });
    socket.on("disconnect", (reason) => {
      if (s.ended) return;
      status(_("The connection to the clinic was lost. Reconnecting…"));
      if (reason === "io server disconnect") recover();
    });
    socket.on("connect_error", () => {
      if (s.ended) return;
      if (socket.active) status(_("Trying to reach the clinic…"));
      else recover(); // the server refused us: the pass may have changed
    });
    window.addEventListener("online", () => {
      // back on a network: reconnect now rather than at the end of the backoff
      if (s.ended || socket.connected) return;
      socket.disconnect();
      socket.connect();
    });
    socket.on("visit", onVisit);
    socket.on("call", onCallPayload);
    socket.on("call_over", (m) => {
      if (m && m.reason === "ended") end();
      else if (m && m.reason === "removed") removed();
      else leaveCall(true);
    });
    if (GUEST) {
      socket.on("peer", onGuestPeer);
      socket.on("chat", (m) => {
        if (m && m.visit_id === s.visitId && s.inCall) addChat(m.from, m.text, false, m.name);
      });
    }
  }

  function arrive() {
    // into the waiting room (the server changes nothing for a patient already there)
    if (s.socket && s.socket.connected) s.socket.emit("arrive", {}, () => {});
  }

  async function recover() {
    s.refusals += 1;
    if (s.refusals > MAX_REFUSALS) {
      refuse(_("We could not connect you to the clinic. Reload the page to try again."));
      return;
    }
    s.claimed = false;
    if (await claim()) setTimeout(() => s.socket && !s.ended && s.socket.connect(), 1000 * s.refusals);
  }

  function onVisit(v) {
    if (!v || s.ended) return;
    s.visitState = v.state;
    const place = Number(v.place) || 0;
    if ($("place")) $("place").textContent = place > 0 ? String(place) : "–";
    const message = $("clinic-message");
    message.textContent = v.message || "";
    message.hidden = !v.message;
    if (v.state === "in_call") {
      s.joined = true;
      enterCall();
    } else if (v.state === "waiting" || v.state === "scheduled" || v.state === "invited") {
      if (s.inCall) leaveCall(true);
      else if (s.joined) show("waiting");
    } else if (v.state === "removed") {
      removed();
    } else {
      end(); // ended, cancelled, no_show: the link is dead
    }
  }

  // --- the call -----------------------------------------------------------------------------------
  async function enterCall() {
    if (!s.socket || !s.socket.connected || s.callFor === s.socket.id || s.joining) return;
    s.joining = true;
    s.inCall = true;
    status(null);
    stopMeter();
    show("call");
    try {
      await startDevices();
      const answer = await new Promise((resolve, reject) => {
        s.socket.timeout(ACK_TIMEOUT_MS).emit("join_call", {}, (err, ack) => {
          if (err) reject(err);
          else if (!ack || ack.ok === false) reject(new Error((ack && ack.error) || "refused"));
          else resolve(ack);
        });
      });
      if (answer.ice_servers) onCallPayload(answer);
    } catch (err) {
      s.inCall = false;
      status(_("We could not join the call yet. Please wait: we will try again."));
    } finally {
      s.joining = false;
    }
  }

  function onCallPayload(payload) {
    if (!payload || !s.socket || s.callFor === s.socket.id || s.ended) return;
    s.callFor = s.socket.id;
    if (GUEST) guestCall(payload);
    if (s.call) {
      s.call.rejoin(payload);
      return;
    }
    const stream = s.stream || new MediaStream();
    const call = RtcCall.create({
      socket: s.socket,
      call: payload,
      localStream: stream,
      audioOnly: $("voice-only-choice").checked || !s.camera,
      lowBandwidth: s.lowBandwidth,
      onRemoteStream: showRemote,
      onLocalStream: showSelf,
      onState: callState,
      onQuality: showQuality,
      onRemoteMedia: (m) => {
        const note = $("remote-note");
        note.textContent = _("The doctor's camera is off. You can still talk.");
        note.hidden = !m.audio_only;
      },
      onAudioOnly: (on, reason) => {
        pressed("toggle-video", on);
        showSelf(stream);
        if (reason === "bandwidth") callNote(_("Your connection is weak, so we turned your video off. The doctor can still hear you."));
      },
      onLowBandwidth: (on, reason) => {
        pressed("toggle-data", on);
        if (reason === "bandwidth") callNote(_("Your connection is slow, so we lowered the picture quality."));
      },
      onChat: (m) => addChat(m.from, m.text, false, m.name),
      onParticipants: (list) => RtcCall.showParticipants($("remote"), $("remote").parentElement, list),
      onRecording: showRecording,
      onConsent: (m) => {
        if (m.from === "clinician" && m.consent && !GUEST && !s.consent) {
          callNote(_("The doctor asks to record this call. It is recorded only if you agree."));
        }
      },
      onError: (err) => console.warn("call:", err && err.message ? err.message : err),
    });
    s.call = call;
    if (!GUEST) {
      s.consent = Boolean(payload.consent);
      pressed("record-consent", s.consent);
      $("record-consent").textContent = s.consent ? _("Stop the recording") : _("Agree to recording");
    }
    pressed("toggle-video", call.audioOnly);
    pressed("toggle-data", call.lowBandwidth);
    pressed("toggle-mic", false);
    showSelf(stream);
    call.start();
  }

  // --- recording: only while the patient and the doctor both agree ----------------------------
  function showRecording(active) {
    $("recording").hidden = !active;
  }

  function onConsentButton() {
    if (!s.call) return;
    const agree = !s.consent;
    s.call.setConsent(agree).then(
      () => {
        s.consent = agree;
        pressed("record-consent", agree);
        $("record-consent").textContent = agree ? _("Stop the recording") : _("Agree to recording");
        callNote(agree ? _("Thank you. The call is recorded while you and the doctor agree.") : "");
      },
      () => callNote(_("Your answer was not sent. Try again."))
    );
  }

  // --- a guest in the call: who is there, and the messages ------------------------------------
  function guestCall(payload) {
    s.people = {};
    for (const p of payload.participants || []) s.people[p.participant] = p;
    $("quality").textContent = "";
    showPeople();
  }

  function onGuestPeer(m) {
    if (!m || m.visit_id !== s.visitId || !s.inCall || !s.people) return;
    if (m.present) s.people[m.participant] = m;
    else if (s.people[m.participant] && s.people[m.participant].sid === m.sid) delete s.people[m.participant];
    showPeople();
  }

  function showPeople() {
    const list = $("participants");
    if (!list) return;
    list.replaceChildren();
    const rank = (p) => (p.role === "clinician" ? 0 : p.role === "patient" ? 1 : 2);
    const people = Object.values(s.people || {}).sort((a, b) => rank(a) - rank(b));
    for (const p of people) {
      const item = document.createElement("li");
      item.dataset.participant = p.participant;
      item.textContent = p.name || "";
      const what = document.createElement("span");
      what.className = "what";
      what.textContent = describe(p.role, p.guest_role);
      item.appendChild(what);
      list.appendChild(item);
    }
  }

  function describe(role, guestRole) {
    if (role === "clinician") return _("Doctor");
    if (role === "patient") return _("Patient");
    return { interpreter: _("Interpreter"), family: _("Family member"), colleague: _("Colleague") }[guestRole] || "";
  }

  function removed() {
    refuse(_("The clinic removed you from this visit. The link no longer works."));
  }

  function showRemote(stream) {
    const video = $("remote");
    if (video.srcObject !== stream) video.srcObject = stream;
    const played = video.play();
    if (played && played.catch) {
      played.then(() => { $("play-remote").hidden = true; }).catch((err) => {
        if (err && err.name === "NotAllowedError") $("play-remote").hidden = false;
      });
    }
  }

  function showSelf(stream) {
    const self = $("self");
    const hasVideo = Boolean(stream && stream.getVideoTracks().length);
    self.hidden = !hasVideo;
    if (hasVideo && self.srcObject !== stream) {
      self.srcObject = stream;
      playQuietly(self);
    }
  }

  function callState(state) {
    const text = {
      waiting: _("Waiting for the doctor to join the call…"),
      connecting: _("Connecting to the doctor…"),
      connected: _("Connected to the doctor."),
      reconnecting: _("The connection was interrupted. Reconnecting…"),
      closed: "",
    }[state];
    if (text !== undefined) {
      $("quality").textContent = text;
      $("quality").dataset.level = "";
    }
  }

  function showQuality(q) {
    const loss = q.loss_pct === null ? 0 : q.loss_pct;
    const rtt = q.rtt_ms === null ? 0 : q.rtt_ms;
    const level = rtt < 300 && loss < 3 ? "good" : rtt < 700 && loss < 10 ? "fair" : "poor";
    const words = { good: _("good"), fair: _("fair"), poor: _("poor") }[level];
    const parts = [_("Connection: %(level)s", { level: words })];
    if (q.rtt_ms !== null) parts.push(_("delay %(ms)s ms", { ms: q.rtt_ms }));
    if (q.loss_pct !== null) parts.push(_("lost %(pct)s", { pct: q.loss_pct + "%" }));
    if (q.kbps_in !== null) parts.push(_("in %(kbps)s kbit/s", { kbps: q.kbps_in }));
    if (q.kbps_out !== null) parts.push(_("out %(kbps)s kbit/s", { kbps: q.kbps_out }));
    const el = $("quality");
    el.textContent = parts.join(" · ");
    el.dataset.level = level;
  }

  function callNote(text) {
    const note = $("call-note");
    note.textContent = text;
    note.hidden = !text;
  }

  function pressed(id, on) {
    $(id).setAttribute("aria-pressed", String(Boolean(on)));
  }

  function addChat(from, text, mine, name) {
    const item = document.createElement("li");
    item.className = mine ? "mine" : "theirs";
    const who = document.createElement("span");
    who.className = "who";
    if (mine) who.textContent = _("You");
    else if (from === "clinician") who.textContent = _("Doctor");
    else if (from === "guest" && name) who.textContent = name;
    else if (from === "patient") who.textContent = _("Patient");
    else who.textContent = _("Clinic");
    item.appendChild(who);
    item.appendChild(document.createTextNode(String(text)));
    const log = $("chat-log");
    log.appendChild(item);
    log.scrollTop = log.scrollHeight;
  }

  function leaveCall(sentBack) {
    if (s.call) s.call.close();
    s.call = null;
    s.consent = false;
    showRecording(false);
    if (!GUEST) {
      pressed("record-consent", false);
      $("record-consent").textContent = _("Agree to recording");
    }
    RtcCall.showParticipants($("remote"), $("remote").parentElement, []);
    s.people = null;
    s.inCall = false;
    s.callFor = null;
    $("remote").srcObject = null;
    callNote("");
    if (sentBack && !s.ended) {
      $("back-note").hidden = false;
      show("waiting");
    }
  }

  function finish() {
    s.ended = true;
    leaveCall(false);
    stopMeter();
    if (s.stream) s.stream.getTracks().forEach((t) => t.stop());
    if (s.socket) {
      s.socket.io.opts.reconnection = false;
      s.socket.disconnect();
    }
    status(null);
  }

  function end() {
    if (s.ended) return;
    finish();
    show("ended");
  }

  // --- the buttons -----------------------------------------------------------------------------------
  $("check-button").addEventListener("click", onCheck);
  $("join").addEventListener("click", onJoin);
  $("play-remote").addEventListener("click", () => showRemote($("remote").srcObject));
  $("toggle-mic").addEventListener("click", () => {
    if (!s.call) return;
    const muted = $("toggle-mic").getAttribute("aria-pressed") !== "true";
    s.call.setMicrophone(!muted);
    pressed("toggle-mic", muted);
  });
  $("toggle-video").addEventListener("click", () => {
    if (!s.call) return;
    s.call.setAudioOnly(!s.call.audioOnly, "user").then(
      () => callNote(""),
      (err) => callNote(explain(err))
    );
  });
  if (!GUEST) $("record-consent").addEventListener("click", onConsentButton);
  $("toggle-data").addEventListener("click", () => {
    if (s.call) s.call.setLowBandwidth(!s.call.lowBandwidth, "user");
  });
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("chat-text");
    const text = input.value.trim();
    if (!text || !(s.call || (GUEST && s.inCall))) return;
    (s.call ? s.call.sendChat(text) : guestChat(text)).then(
      () => {
        addChat("patient", text, true);
        input.value = "";
      },
      () => callNote(_("Your message was not sent. Try again."))
    );
  });

  function guestChat(text) {
    return new Promise((resolve, reject) => {
      if (!s.socket || !s.socket.connected) {
        reject(new Error("not connected"));
        return;
      }
      s.socket.timeout(ACK_TIMEOUT_MS).emit("chat", { text: text }, (err, ack) => {
        if (err || !ack || ack.ok === false) reject(err || new Error((ack && ack.error) || "refused"));
        else resolve(ack);
      });
    });
  }

  showWhen();
  if (root.dataset.returning === "true") {
    // This browser already holds the pass: a reload or the link opened again. Back to
    // where the visit stands (the call, or the same place in the queue).
    s.joined = true;
    show("waiting");
    status(_("Welcome back. Reconnecting you to your visit…"));
    claim().then((ok) => {
      if (!ok) return;
      connect();
      startDevices();
    });
  }
})();
