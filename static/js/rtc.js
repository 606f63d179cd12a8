// rtc.js: the WebRTC engine of a video visit, shared by the patient's room (visit.js)
// and the clinician's call view. It speaks the `/visit` Socket.IO protocol of
// docs/visit-protocol.md (events `signal`, `peer`, `media`, `quality`, `chat`) and
// shows nothing itself: the page is told through callbacks and draws what it likes.
// A classic script (no module, no build step): it defines `window.RtcCall`.
//
//   const call = RtcCall.create({
//     socket,          // a Socket.IO socket on namespace "/visit"
//     call,            // the `call` payload: {visit_id, role, polite, ice_servers, media, peer}
//     localStream,     // MediaStream from getUserMedia (audio, and video unless none)
//     audioOnly,       // start without sending video (default false)
//     lowBandwidth,    // start in the low-bandwidth profile (default false)
//     autoAdapt,       // drop to low bandwidth, then to audio only, when the link is poor
//                      // (default true)
//     // callbacks, all optional:
//     onRemoteStream(stream),      // the other side's media (attach it to a <video>)
//     onLocalStream(stream),       // our stream changed (camera turned back on)
//     onState(state),              // "waiting" | "connecting" | "connected" |
//                                  // "reconnecting" | "closed"
//     onQuality(sample),           // ours, every ~5 s: {rtt_ms, loss_pct, kbps_in,
//                                  // kbps_out, audio_only} (also sent as `quality`)
//     onRemoteQuality(sample),     // the other side's, as relayed
//     onRemoteMedia({audio_only}), // the other side switched video off or on
//     onAudioOnly(on, reason),     // ours switched; reason "user" | "bandwidth"
//     onLowBandwidth(on, reason),  // our profile switched; reason "user" | "bandwidth"
//     onChat({from, text, at, name, participant}), // a chat message from another
//                                  // participant of the call (a guest's too)
//     onError(error),              // something failed that the page may want to log
//   });
//   call.start()               start (or wait for) the peer connection
//   call.suspend()             our socket reconnected: drop the peer connection now...
//   call.rejoin(callPayload)   ...and go on with the payload `join_call`/`open` answered
//   call.setAudioOnly(bool)    stop or restart sending video, and tell the other side
//   call.setLowBandwidth(bool) cap the video at media.low_bandwidth_kbps and _height
//   call.setMicrophone(bool)   unmute or mute our microphone
//   call.sendChat(text)        a Promise of the server's acknowledgement
//   call.setConsent(bool)      agree to recording the call, or withdraw (patient, clinician)
//   call.restartIce()          a new ICE negotiation on the same connection
//   call.close()               stop everything (the local stream is the page's to stop)
//
// Negotiation is "perfect negotiation" (W3C WebRTC 1.0, §10.7): the impolite side (the
// clinician) makes the offers, the polite side (the patient) answers and rolls its own
// offer back on a collision. A new `sid` in a `peer` event means a new page on the other
// side: a new RTCPeerConnection, the impolite side offering. Each side always has one
// audio and one video transceiver, so audio only and back never renegotiates.
//
// Relay mode (`call.mode == "relay"`, or a `media_mode` event during the call): the page
// has one connection, to the server, and no negotiation with the others. Its offer holds
// what it sends (audio, video: sendonly) and RELAY_SLOTS receiving pairs (recvonly), and
// goes in `relay_offer`; the server answers every line at once and says, in `layout`,
// whose picture and sound each pair carries (by mid). Someone joining or leaving changes
// the layout, never the connection. A failed connection sends a new offer.
// This is the two-party call, patient <-> clinician: `peer`, `signal`, `media` and
// `quality` events about anyone else in the call (a guest) are not for this engine.
"use strict";

(function (global) {
  const STATS_EVERY_MS = 5000;
  const DISCONNECTED_GRACE_MS = 2000;
  const ACK_TIMEOUT_MS = 10000;
  const ADAPT_AFTER_SAMPLES = 2; // the bandwidth estimate ramps up in the first seconds
  const WEAK_LOSS_PCT = 8; // our video, as the other side reports losing it
  const HOPELESS_LOSS_PCT = 20;
  const RELAY_SLOTS = 3; // a call has at most 4 participants
  const GATHER_WAIT_MS = 3000; // the relay takes one offer with its candidates
  const P2P_FAILURES_BEFORE_RELAY = 2; // ICE restarts that failed before asking for the relay
  const RELAY_RETRY_MAX_MS = 30000; // a refused relay offer is made again after 2, 4... 30 s

  function videoConstraints(media, low) {
    const height = low && media && media.low_bandwidth_height ? media.low_bandwidth_height : 360;
    return {
      height: { ideal: height },
      width: { ideal: Math.round((height * 4) / 3) },
      frameRate: { ideal: low ? 15 : 24, max: 30 },
      facingMode: "user",
    };
  }

  function plainCandidate(c) {
    if (!c) return null;
    return {
      candidate: c.candidate,
      sdpMid: c.sdpMid === undefined ? null : c.sdpMid,
      sdpMLineIndex: c.sdpMLineIndex === undefined ? null : c.sdpMLineIndex,
      usernameFragment: c.usernameFragment === undefined ? null : c.usernameFragment,
    };
  }

  // Resolves when ICE gathering is over, or after `ms` (the candidates found by then go).
  function gathered(pc, ms) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      };
      const check = () => {
        if (pc.iceGatheringState === "complete") done();
      };
      const timer = setTimeout(done, ms);
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  function round(value, digits) {
    if (value === null || value === undefined || !isFinite(value)) return null;
    const f = Math.pow(10, digits);
    return Math.round(value * f) / f;
  }

  class Call {
    constructor(options) {
      const payload = options.call;
      this.socket = options.socket;
      this.visitId = payload.visit_id;
      this.role = payload.role;
      this.polite = Boolean(payload.polite);
      this.iceServers = payload.ice_servers || [];
      this.media = payload.media || {};
      this.peerSid = payload.peer ? payload.peer.sid : null;
      this.counterpart = { patient: "clinician", clinician: "patient" }[payload.role] || null;
      this.mode = payload.mode === "relay" ? "relay" : "p2p";
      this.recordingAtStart = Boolean(payload.recording);
      this.layoutSlots = [];
      this.layoutSeq = 0;
      this.p2pFailures = 0;
      this.local = options.localStream || new MediaStream();
      this.audioOnly = Boolean(options.audioOnly) || this.local.getVideoTracks().length === 0;
      this.lowBandwidth = Boolean(options.lowBandwidth);
      this.autoAdapt = options.autoAdapt !== false;
      this.micOn = true;
      this.cb = options;
      this.pc = null;
      this.closed = false;
      this.queue = Promise.resolve();
      this.makingOffer = false;
      this.ignoreOffer = false;
      this.audioTx = null;
      this.videoTx = null;
      this.disconnectTimer = null;
      this.samples = 0;
      this.weak = 0;
      this.hopeless = 0;
      this.previous = null;
      this.handlers = {
        signal: (m) => this.theirs(m, m && m.from) && this.enqueue(() => this.onSignal(m)),
        peer: (m) => this.theirs(m, m && m.role) && this.onPeer(m),
        media: (m) => this.theirs(m, m && m.from) && this.notify("onRemoteMedia", { audio_only: Boolean(m.audio_only) }),
        quality: (m) => this.theirs(m, m && m.from) && this.notify("onRemoteQuality", m),
        chat: (m) => this.mine(m) && this.notify("onChat", { from: m.from, text: String(m.text), at: m.at, name: m.name, participant: m.participant }),
        media_mode: (m) => this.mine(m) && this.setMode(m.mode),
        layout: (m) => this.mine(m) && this.mode === "relay" && this.applyLayout(m.slots, m.seq),
        recording: (m) => this.mine(m) && this.notify("onRecording", Boolean(m.active)),
        recording_consent: (m) => this.mine(m) && this.notify("onConsent", { from: m.from, consent: Boolean(m.consent) }),
        refused: (m) => m && this.notify("onError", new Error(String(m.event) + ": " + String(m.error))),
      };
      for (const name of Object.keys(this.handlers)) this.socket.on(name, this.handlers[name]);
      this.statsTimer = setInterval(() => this.sampleStats(), STATS_EVERY_MS);
    }

    // --- public -----------------------------------------------------------------------
    start() {
      if (this.closed) return;
      this.notify("onMode", this.mode);
      this.notify("onRecording", Boolean(this.recordingAtStart));
      if (this.mode === "relay") this.connectRelay();
      else if (this.peerSid) this.connect();
      else this.state("waiting");
      // tell the other side at once how we start
      if (this.audioOnly) this.emit("media", { visit_id: this.visitId, audio_only: true });
    }

    suspend() {
      this.dropConnection();
      this.state("reconnecting");
    }

    rejoin(payload) {
      if (this.closed) return;
      this.iceServers = payload.ice_servers || this.iceServers;
      this.media = payload.media || this.media;
      this.polite = Boolean(payload.polite);
      this.peerSid = payload.peer ? payload.peer.sid : null;
      if (this.audioOnly) this.emit("media", { visit_id: this.visitId, audio_only: true });
      const mode = payload.mode === "relay" ? "relay" : "p2p";
      if (mode !== this.mode) {
        // the server's word: a restarted server has the visit peer to peer again
        this.setMode(mode);
        return;
      }
      if (this.mode === "relay") {
        this.connectRelay();
        return;
      }
      if (this.pc) return; // an offer came first and built the new connection already
      if (this.peerSid) this.connect();
      else this.state("waiting");
    }

    // The server moved the call to its relay (a third participant, or peer-to-peer
    // failed): drop the direct connection and connect through the server.
    setMode(mode) {
      mode = mode === "relay" ? "relay" : "p2p";
      if (mode === this.mode || this.closed) return;
      this.mode = mode;
      this.notify("onMode", mode);
      if (mode === "relay") this.connectRelay();
      else if (this.peerSid) this.connect();
      else {
        this.dropConnection();
        this.state("waiting");
      }
    }

    async setAudioOnly(on, reason) {
      on = Boolean(on);
      reason = reason || "user";
      if (on === this.audioOnly || this.closed) return;
      if (on) {
        this.audioOnly = true;
        for (const track of this.local.getVideoTracks()) {
          track.stop();
          this.local.removeTrack(track);
        }
        if (this.videoTx) await this.safely(this.videoTx.sender.replaceTrack(null));
      } else {
        let stream;
        try {
          stream = await navigator.mediaDevices.getUserMedia({ video: videoConstraints(this.media, this.lowBandwidth) });
        } catch (err) {
          this.notify("onError", err);
          throw err;
        }
        if (this.closed) {
          stream.getTracks().forEach((t) => t.stop());
          return;
        }
        const track = stream.getVideoTracks()[0];
        this.local.addTrack(track);
        this.audioOnly = false;
        if (this.videoTx) {
          await this.safely(this.videoTx.sender.replaceTrack(track));
          await this.applyProfile();
        }
        this.notify("onLocalStream", this.local);
      }
      this.emit("media", { visit_id: this.visitId, audio_only: this.audioOnly });
      this.notify("onAudioOnly", this.audioOnly, reason);
    }

    async setLowBandwidth(on, reason) {
      on = Boolean(on);
      if (on === this.lowBandwidth || this.closed) return;
      this.lowBandwidth = on;
      const track = this.local.getVideoTracks()[0];
      if (track && track.applyConstraints) {
        const c = videoConstraints(this.media, on);
        await this.safely(track.applyConstraints({ height: c.height, width: c.width, frameRate: c.frameRate }));
      }
      await this.applyProfile();
      this.notify("onLowBandwidth", on, reason || "user");
    }

    setMicrophone(on) {
      this.micOn = Boolean(on);
      for (const track of this.local.getAudioTracks()) track.enabled = this.micOn;
    }

    sendChat(text) {
      return this.request("chat", { visit_id: this.visitId, text: String(text) });
    }

    setConsent(on) {
      return this.request("recording_consent", { visit_id: this.visitId, consent: Boolean(on) });
    }

    restartIce() {
      const pc = this.pc;
      if (!pc || this.closed || pc.signalingState === "closed") return;
      this.state("reconnecting");
      if (this.mode === "relay") {
        this.connectRelay(); // a new offer: the server replaces our connection
        return;
      }
      if (typeof pc.restartIce === "function") {
        pc.restartIce(); // fires negotiationneeded: an offer with new ICE credentials
      } else {
        this.enqueue(async () => {
          this.makingOffer = true;
          try {
            await pc.setLocalDescription(await pc.createOffer({ iceRestart: true }));
            this.sendDescription(pc.localDescription);
          } finally {
            this.makingOffer = false;
          }
        });
      }
    }

    close() {
      if (this.closed) return;
      this.closed = true;
      clearTimeout(this.relayRetry);
      clearInterval(this.statsTimer);
      for (const name of Object.keys(this.handlers)) this.socket.off(name, this.handlers[name]);
      this.dropConnection();
      this.state("closed");
    }

    // --- the peer connection ---------------------------------------------------------------
    connect() {
      this.dropConnection();
      const pc = new RTCPeerConnection({ iceServers: this.iceServers });
      this.pc = pc;
      this.makingOffer = false;
      this.ignoreOffer = false;
      this.previous = null;
      this.samples = 0;
      this.weak = 0;
      this.hopeless = 0;
      const remote = new MediaStream();
      this.notify("onRemoteStream", remote);
      this.state("connecting");

      pc.ontrack = (event) => {
        if (pc !== this.pc) return;
        if (!remote.getTracks().includes(event.track)) remote.addTrack(event.track);
        this.notify("onRemoteStream", remote);
      };
      pc.onicecandidate = (event) => {
        if (pc === this.pc) this.emit("signal", { visit_id: this.visitId, candidate: plainCandidate(event.candidate) });
      };
      pc.onnegotiationneeded = async () => {
        if (pc !== this.pc) return;
        try {
          this.makingOffer = true;
          await pc.setLocalDescription();
          this.sendDescription(pc.localDescription);
        } catch (err) {
          this.notify("onError", err);
        } finally {
          this.makingOffer = false;
        }
      };
      pc.oniceconnectionstatechange = () => this.onIceState(pc);
      pc.onconnectionstatechange = () => {
        if (pc === this.pc && pc.connectionState === "connected") this.state("connected");
      };
      if (!this.polite) this.addTransceivers(pc); // the impolite side offers
      return pc;
    }

    addTransceivers(pc) {
      const audio = this.local.getAudioTracks()[0];
      const video = this.audioOnly ? null : this.local.getVideoTracks()[0];
      this.audioTx = pc.addTransceiver(audio || "audio", { direction: "sendrecv", streams: [this.local] });
      const init = { direction: "sendrecv", streams: [this.local] };
      if (this.lowBandwidth) init.sendEncodings = [this.encoding(video)];
      this.videoTx = pc.addTransceiver(video || "video", init);
    }

    // The polite side takes the transceivers the offer made and sends on them.
    async adoptTransceivers(pc) {
      for (const tx of pc.getTransceivers()) {
        const kind = tx.receiver && tx.receiver.track ? tx.receiver.track.kind : null;
        if (kind === "audio" && !this.audioTx) {
          this.audioTx = tx;
          tx.direction = "sendrecv";
          await this.safely(tx.sender.replaceTrack(this.local.getAudioTracks()[0] || null));
        } else if (kind === "video" && !this.videoTx) {
          this.videoTx = tx;
          tx.direction = "sendrecv";
          const track = this.audioOnly ? null : this.local.getVideoTracks()[0];
          await this.safely(tx.sender.replaceTrack(track || null));
        }
      }
    }

    dropConnection() {
      clearTimeout(this.disconnectTimer);
      const pc = this.pc;
      this.pc = null;
      this.audioTx = null;
      this.videoTx = null;
      if (pc) {
        pc.ontrack = pc.onicecandidate = pc.onnegotiationneeded = null;
        pc.oniceconnectionstatechange = pc.onconnectionstatechange = null;
        pc.close();
      }
    }

    onPeer(message) {
      if (this.mode === "relay") return; // the layout says who is there
      if (!message.present) {
        // The other page left the call room; if it comes back it has a new sid.
        if (message.sid === this.peerSid) this.state("waiting");
        return;
      }
      if (message.sid === this.peerSid && this.pc) return;
      this.peerSid = message.sid;
      this.enqueue(async () => this.connect());
    }

    async onSignal(message) {
      if (this.closed || this.mode === "relay") return;
      if (!this.pc) this.connect(); // the offer came before our own `call` answer
      const pc = this.pc;
      if (message.description) {
        const description = message.description;
        const collision = description.type === "offer" && (this.makingOffer || pc.signalingState !== "stable");
        this.ignoreOffer = !this.polite && collision;
        if (this.ignoreOffer) return;
        await pc.setRemoteDescription(description); // the polite side rolls back here
        if (description.type === "offer") {
          await this.adoptTransceivers(pc);
          await pc.setLocalDescription();
          this.sendDescription(pc.localDescription);
          await this.applyProfile();
        } else if (description.type === "answer") {
          await this.applyProfile();
        }
      } else if ("candidate" in message) {
        try {
          if (message.candidate) await pc.addIceCandidate(message.candidate);
          else await pc.addIceCandidate();
        } catch (err) {
          if (!this.ignoreOffer) throw err;
        }
      }
    }

    onIceState(pc) {
      if (pc !== this.pc) return;
      const state = pc.iceConnectionState;
      clearTimeout(this.disconnectTimer);
      if (state === "failed") {
        if (this.mode === "p2p") {
          this.p2pFailures += 1;
          if (this.p2pFailures >= P2P_FAILURES_BEFORE_RELAY) {
            // Direct connection keeps failing (carrier NAT, strict firewall): the server
            // moves the call to its relay when media.mode allows it.
            this.emit("media_mode", { visit_id: this.visitId, want: "relay", reason: "ice_failed" });
          }
        }
        this.restartIce();
      } else if (state === "disconnected") {
        this.state("reconnecting");
        this.disconnectTimer = setTimeout(() => {
          if (pc === this.pc && pc.iceConnectionState === "disconnected") this.restartIce();
        }, DISCONNECTED_GRACE_MS);
      } else if (state === "connected" || state === "completed") {
        if (this.mode === "p2p") this.p2pFailures = 0;
        this.state(this.mode === "relay" && !this.layoutSlots.some((s) => s.participant) ? "waiting" : "connected");
      }
    }

    // --- relay mode ---------------------------------------------------------------------------
    connectRelay() {
      this.dropConnection();
      clearTimeout(this.relayRetry);
      this.layoutSeq = 0; // a new connection: the server's numbering may have restarted
      this.layoutSlots = [];
      const pc = new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: "max-bundle" });
      this.pc = pc;
      this.previous = null;
      this.samples = 0;
      this.weak = 0;
      this.hopeless = 0;
      this.relayStreams = new Map();
      this.state("connecting");
      const audio = this.local.getAudioTracks()[0];
      const video = this.audioOnly ? null : this.local.getVideoTracks()[0];
      this.audioTx = pc.addTransceiver(audio || "audio", { direction: "sendonly", streams: [this.local] });
      const init = { direction: "sendonly", streams: [this.local] };
      if (this.lowBandwidth) init.sendEncodings = [this.encoding(video)];
      this.videoTx = pc.addTransceiver(video || "video", init);
      for (let i = 0; i < RELAY_SLOTS; i++) {
        pc.addTransceiver("audio", { direction: "recvonly" });
        pc.addTransceiver("video", { direction: "recvonly" });
      }
      pc.oniceconnectionstatechange = () => this.onIceState(pc);
      pc.onconnectionstatechange = () => {
        if (pc === this.pc && pc.connectionState === "failed") this.restartIce();
      };
      this.enqueue(async () => {
        if (pc !== this.pc) return;
        await pc.setLocalDescription(await pc.createOffer());
        await gathered(pc, GATHER_WAIT_MS);
        if (pc !== this.pc) return;
        let ack;
        try {
          ack = await this.request("relay_offer", { visit_id: this.visitId, sdp: pc.localDescription.sdp });
          this.relayFailures = 0;
        } catch (err) {
          // refused or unanswered (a busy server, a socket gone): offer again, later
          if (pc === this.pc && !this.closed) {
            this.relayFailures = (this.relayFailures || 0) + 1;
            const wait = Math.min(RELAY_RETRY_MAX_MS, 1000 * 2 ** Math.min(this.relayFailures, 5));
            this.relayRetry = setTimeout(() => {
              if (pc === this.pc && !this.closed && this.mode === "relay") this.connectRelay();
            }, wait);
          }
          throw err;
        }
        if (pc !== this.pc) return;
        await pc.setRemoteDescription({ type: "answer", sdp: ack.sdp });
        this.applyLayout(ack.slots || [], ack.seq);
        await this.applyProfile();
      });
      return pc;
    }

    // `seq` numbers the server's layouts for this page: an offer's answer and a `layout`
    // event may arrive in either order, and the newer one wins.
    applyLayout(slots, seq) {
      if (typeof seq === "number") {
        if (seq < this.layoutSeq) return;
        this.layoutSeq = seq;
      }
      const pc = this.pc;
      this.layoutSlots = Array.isArray(slots) ? slots : [];
      if (!pc) return;
      const byMid = new Map();
      for (const tx of pc.getTransceivers()) if (tx.mid !== null) byMid.set(tx.mid, tx);
      const seen = [];
      for (const slot of this.layoutSlots) {
        if (!slot || !slot.participant) continue;
        const key = slot.participant + "/" + (slot.mids ? slot.mids.video + "," + slot.mids.audio : "");
        let stream = this.relayStreams.get(key);
        if (!stream) {
          stream = new MediaStream();
          for (const kind of ["audio", "video"]) {
            const tx = slot.mids ? byMid.get(slot.mids[kind]) : null;
            if (tx && tx.receiver && tx.receiver.track) stream.addTrack(tx.receiver.track);
          }
          this.relayStreams.set(key, stream);
        }
        seen.push({ participant: slot.participant, role: slot.role || null, name: slot.name || "", stream });
      }
      if (pc.iceConnectionState === "connected" || pc.iceConnectionState === "completed") {
        this.state(seen.length ? "connected" : "waiting");
      }
      this.notify("onParticipants", seen);
      if (seen.length) this.notify("onRemoteStream", seen[0].stream);
    }

    // --- the low-bandwidth profile -------------------------------------------------------
    encoding(track) {
      const encoding = {};
      if (this.lowBandwidth) {
        encoding.maxBitrate = (this.media.low_bandwidth_kbps || 150) * 1000;
        encoding.scaleResolutionDownBy = this.scaleFor(track);
        encoding.maxFramerate = 15;
      }
      return encoding;
    }

    scaleFor(track) {
      const height = track && track.getSettings ? track.getSettings().height : null;
      const wanted = this.media.low_bandwidth_height || 240;
      return height && height > wanted ? height / wanted : 1;
    }

    async applyProfile() {
      const sender = this.videoTx ? this.videoTx.sender : null;
      if (!sender || !sender.getParameters) return;
      const params = sender.getParameters();
      if (!params.encodings || params.encodings.length === 0) return; // not negotiated yet
      const low = this.encoding(sender.track);
      for (const encoding of params.encodings) {
        if (this.lowBandwidth) {
          encoding.maxBitrate = low.maxBitrate;
          encoding.scaleResolutionDownBy = low.scaleResolutionDownBy;
          encoding.maxFramerate = low.maxFramerate;
        } else {
          delete encoding.maxBitrate;
          delete encoding.maxFramerate;
          encoding.scaleResolutionDownBy = 1;
        }
      }
      await this.safely(sender.setParameters(params));
    }

    // --- call quality ---------------------------------------------------------------------
    async sampleStats() {
      const pc = this.pc;
      if (!pc || this.closed || pc.connectionState !== "connected") return;
      let report;
      try {
        report = await pc.getStats();
      } catch (err) {
        this.notify("onError", err);
        return;
      }
      if (pc !== this.pc) return;
      const now = { at: performance.now(), bytesIn: 0, bytesOut: 0, lost: 0, received: 0 };
      let rtt = null;
      let available = null;
      let videoLoss = null;
      let pair = null;
      report.forEach((s) => {
        if (s.type === "inbound-rtp") {
          now.bytesIn += s.bytesReceived || 0;
          now.lost += Math.max(0, s.packetsLost || 0);
          now.received += s.packetsReceived || 0;
        } else if (s.type === "outbound-rtp") {
          now.bytesOut += s.bytesSent || 0;
        } else if (s.type === "remote-inbound-rtp" && s.kind === "video" && typeof s.fractionLost === "number") {
          videoLoss = s.fractionLost * 100;
        } else if (s.type === "transport" && s.selectedCandidatePairId) {
          pair = report.get(s.selectedCandidatePairId) || pair;
        } else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && !pair) {
          pair = s;
        }
      });
      if (pair) {
        if (typeof pair.currentRoundTripTime === "number") rtt = pair.currentRoundTripTime * 1000;
        if (typeof pair.availableOutgoingBitrate === "number") available = pair.availableOutgoingBitrate / 1000;
      }
      const before = this.previous;
      this.previous = now;
      if (!before) return;
      const seconds = (now.at - before.at) / 1000;
      if (seconds <= 0) return;
      const lost = now.lost - before.lost;
      const received = now.received - before.received;
      const sample = {
        visit_id: this.visitId,
        rtt_ms: round(rtt, 0),
        loss_pct: lost + received > 0 ? round((100 * lost) / (lost + received), 1) : null,
        kbps_in: round(Math.max(0, now.bytesIn - before.bytesIn) * 8 / seconds / 1000, 0),
        kbps_out: round(Math.max(0, now.bytesOut - before.bytesOut) * 8 / seconds / 1000, 0),
        audio_only: this.audioOnly,
      };
      this.emit("quality", sample);
      this.notify("onQuality", sample);
      this.samples += 1;
      if (this.autoAdapt && this.samples > ADAPT_AFTER_SAMPLES) await this.adapt(available, videoLoss);
    }

    // Poor link: first the low-bandwidth profile, then audio only. Never back up by
    // itself (that would flap); the person can press the button.
    async adapt(availableKbps, videoLossPct) {
      if (this.audioOnly) return;
      const floor = this.media.audio_only_below_kbps || 100;
      const low = this.media.low_bandwidth_kbps || 150;
      const hopeless = (availableKbps !== null && availableKbps < floor) || (videoLossPct !== null && videoLossPct > HOPELESS_LOSS_PCT);
      const weak = hopeless || (availableKbps !== null && availableKbps < low * 2) || (videoLossPct !== null && videoLossPct > WEAK_LOSS_PCT);
      this.hopeless = hopeless ? this.hopeless + 1 : 0;
      this.weak = weak ? this.weak + 1 : 0;
      if (this.lowBandwidth && this.hopeless >= 2) {
        this.hopeless = this.weak = 0;
        await this.setAudioOnly(true, "bandwidth").catch((err) => this.notify("onError", err));
      } else if (!this.lowBandwidth && this.weak >= 2) {
        this.weak = 0;
        await this.setLowBandwidth(true, "bandwidth");
      }
    }

    // --- plumbing ---------------------------------------------------------------------------
    mine(message) {
      return !this.closed && message && message.visit_id === this.visitId;
    }

    // About the other side of this two-party call (not a guest's).
    theirs(message, role) {
      return this.mine(message) && (!this.counterpart || role === this.counterpart);
    }

    enqueue(work) {
      // Signals are handled one at a time, in the order they came (an offer before its
      // candidates); one failure does not stop the ones after it.
      this.queue = this.queue.then(work).catch((err) => this.notify("onError", err));
      return this.queue;
    }

    sendDescription(description) {
      if (!description) return;
      this.emit("signal", { visit_id: this.visitId, description: { type: description.type, sdp: description.sdp } });
    }

    emit(event, payload) {
      // Not queued while the socket is down: after a reconnect the call starts afresh.
      // Sent without an acknowledgement: the server answers only a refusal, as a
      // `refused` event (half the frames for the stream of ICE candidates).
      if (this.closed || !this.socket.connected) return;
      this.socket.emit(event, payload);
    }

    request(event, payload) {
      return new Promise((resolve, reject) => {
        if (!this.socket.connected) {
          reject(new Error("not connected"));
          return;
        }
        this.socket.timeout(ACK_TIMEOUT_MS).emit(event, payload, (err, ack) => {
          if (err) reject(err);
          else if (ack && ack.ok === false) reject(new Error(ack.error || "refused"));
          else resolve(ack);
        });
      });
    }

    async safely(promise) {
      try {
        return await promise;
      } catch (err) {
        this.notify("onError", err);
        return undefined;
      }
    }

    state(value) {
      if (this.lastState === value) return;
      this.lastState = value;
      this.notify("onState", value);
    }

    notify(name, ...args) {
      const fn = this.cb[name];
      if (typeof fn === "function") {
        try {
          fn(...args);
        } catch (err) {
          if (name !== "onError") this.notify("onError", err);
        }
      }
    }
  }

  // Relay mode's pictures: the first participant in `first` (the page's remote <video>),
  // the others in <video> tiles added to `stage` (data-testid remote-video-2, -3); the
  // stage becomes a grid of up to 4 (with the page's own camera) when there are several.
  function showParticipants(first, stage, list) {
    const people = Array.isArray(list) ? list : [];
    const videos = [first];
    stage.querySelectorAll("video.tile").forEach((v, i) => {
      if (i + 1 < people.length) videos.push(v);
      else v.remove();
    });
    while (videos.length < Math.max(1, people.length)) {
      const tile = document.createElement("video");
      tile.className = "tile";
      tile.autoplay = true;
      tile.playsInline = true;
      tile.dataset.testid = "remote-video-" + (videos.length + 1);
      stage.appendChild(tile);
      videos.push(tile);
    }
    people.forEach((p, i) => {
      const video = videos[i];
      video.dataset.participant = p.participant;
      video.title = p.name || "";
      video.setAttribute("aria-label", p.name || p.role || "");
      if (video.srcObject !== p.stream) video.srcObject = p.stream;
      const played = video.play();
      if (played && played.catch) played.catch(() => {});
    });
    if (!people.length) delete first.dataset.participant;
    stage.classList.toggle("grid", people.length > 1);
  }

  global.RtcCall = {
    create: (options) => new Call(options),
    videoConstraints,
    showParticipants,
  };
})(window);
