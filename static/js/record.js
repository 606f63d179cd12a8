// The consultation record's editor in the clinician's call view: the SOAP note, the
// diagnoses and prescriptions, the attachments; Save (each save is a new version), Sign
// (doctors), then addenda only; the history of every version. Over the records API
// (/api/visits/{id}/record...), the page's CSRF token (the section's data-csrf) sent as
// the X-CSRF-Token header. The chat transcript comes from call.js's `chatline` events and
// goes with each save.
//
// Keyboard: Ctrl+S (⌘S) saves (after signing: adds the addendum being written),
// Ctrl+Enter in the diagnoses or prescriptions adds a row, Alt+Shift+S signs after a
// confirmation, Escape closes the history. Enter in a one-line field does not save.
//
// Nothing of the note is ever written to the console: it is clinical content.
"use strict";

(function () {
  const root = document.getElementById("record");
  if (!root) return;
  const visitId = root.dataset.visit;
  const csrf = root.dataset.csrf;
  const me = root.dataset.me;
  const canSign = root.dataset.canSign === "yes";
  const maxBytes = Number(root.dataset.maxBytes || 0);
  let people = {};
  try {
    people = JSON.parse(root.dataset.people || "{}");
  } catch (err) {
    people = {};
  }
  const base = "/api/visits/" + encodeURIComponent(visitId) + "/record";
  const $ = (selector) => root.querySelector(selector);

  const form = $("#record-form");
  const versionEl = $("[data-testid=record-version]");
  const signedEl = $("[data-testid=record-signed]");
  const savedEl = $("[data-testid=record-saved]");
  const errorEl = $("[data-testid=record-error]");
  const conflictBox = $("[data-testid=record-conflict]");
  const conflictText = $("#record-conflict-text");
  const signedView = $("[data-testid=record-signed-view]");
  const signedNote = $("[data-testid=signed-note]");
  const addendaEl = $("[data-testid=addenda]");
  const addendumForm = $("[data-testid=addendum-form]");
  const addendumText = $("#addendum-text");
  const attachmentList = $("[data-testid=attachments]");
  const attachBox = $("[data-testid=attach]");
  const fileInput = $("#attach-file");
  const saveButton = $("[data-record=save]");
  const signButton = $("[data-record=sign]");
  const historyButton = $("[data-record=history]");
  const dialog = $("[data-testid=record-history]");
  const historyList = $("[data-testid=history-list]");
  const historyView = $("[data-testid=history-view]");

  const SOAP = [
    ["subjective", "Subjective"],
    ["objective", "Objective"],
    ["assessment", "Assessment"],
    ["plan", "Plan"],
  ];
  const PARTS = {
    diagnoses: [
      { key: "code", label: "ICD-10 code", max: 16, code: true },
      { key: "display", label: "Description", max: 500 },
    ],
    prescriptions: [
      { key: "medication", label: "Medication", max: 500 },
      { key: "dose", label: "Dose", max: 500 },
      { key: "route", label: "Route", max: 500, list: "routes" },
      { key: "frequency", label: "Frequency", max: 500 },
      { key: "duration", label: "Duration", max: 500, optional: true },
      { key: "instructions", label: "Instructions", max: 500, optional: true },
    ],
  };
  const NOUN = { diagnoses: "Diagnosis", prescriptions: "Prescription" };
  const CHAT_TEXT_MAX = 2000;
  const CHAT_LINES_MAX = 2000;

  let record = null; // the record as last loaded or saved (null until loaded)
  let baseVersion = 0; // the version the editor's content started from
  let savedText = ""; // the note as last loaded or saved, to tell unsaved changes
  let busy = false;
  let rowSeq = 0;
  const chat = []; // this page's chat lines: [{sender, at, text}]

  // helpers -----------------------------------------------------------------------------
  function when(iso) {
    if (!iso) return "–";
    return new Date(iso).toUTCString().slice(5, 22) + " UTC";
  }

  function who(id) {
    if (!id) return "someone";
    if (id === me) return "you";
    return people[id] || "another user";
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function request(method, url, body) {
    const options = { method: method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET") {
      options.headers["X-CSRF-Token"] = csrf;
      if (body instanceof FormData) {
        options.body = body;
      } else {
        options.headers["Content-Type"] = "application/json";
        options.body = JSON.stringify(body || {});
      }
    }
    let response;
    try {
      response = await fetch(url, options);
    } catch (err) {
      return { ok: false, status: 0, error: "the server could not be reached; check the connection and try again" };
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      return { ok: false, status: response.status, error: (data && data.error) || "the server answered " + response.status };
    }
    return { ok: true, status: response.status, data: data };
  }

  function say(text) {
    // a live region: rewritten only when it changes, or it is read out at each keystroke
    if (savedEl.textContent !== text) savedEl.textContent = text;
  }

  // errors ------------------------------------------------------------------------------
  function clearError() {
    errorEl.textContent = "";
    for (const field of root.querySelectorAll("[aria-invalid=true]")) {
      field.removeAttribute("aria-invalid");
      field.removeAttribute("aria-errormessage");
    }
  }

  // The API names the field at fault ("diagnoses[0].code: 'X' is not an ICD-10 code such
  // as J06.9"): say it as the form does ("Diagnosis 1, ICD-10 code") and go to the field.
  function fieldOf(path, rows) {
    const match = /^([a-z_]+)(?:\[(\d+)\])?(?:\.([a-z_]+))?$/.exec(path);
    if (!match) return null;
    const [, name, index, part] = match;
    const soap = SOAP.find(([key]) => key === name);
    if (soap) return { label: soap[1], field: form.elements[name] };
    if (name === "text") return { label: "Addendum", field: addendumText };
    if (name === "record" && part === undefined) return { label: "The record", joined: true };
    if (name === "file" || name === "content_type") return { label: "Attachment", field: fileInput };
    if (name === "chat") {
      return { label: "Chat transcript" + (index !== undefined ? ", line " + (Number(index) + 1) : "") };
    }
    if (PARTS[name]) {
      if (index === undefined) return { label: NOUN[name] === "Diagnosis" ? "Diagnoses" : "Prescriptions" };
      const li = rows && rows[name] ? rows[name][Number(index)] : null;
      const number = li ? Array.from(li.parentNode.children).indexOf(li) + 1 : Number(index) + 1;
      const spec = PARTS[name].find((p) => p.key === part);
      const label = NOUN[name] + " " + number + (spec ? ", " + spec.label : "");
      return { label: label, field: li && part ? li.querySelector('[data-part="' + part + '"]') : null };
    }
    return null;
  }

  function showError(prefix, message, rows) {
    clearError();
    const split = /^([A-Za-z_][\w.[\]]*): (.*)$/s.exec(message || "");
    let text = message;
    let field = null;
    if (split) {
      const named = fieldOf(split[1], rows);
      if (named) {
        text = named.label + (named.joined ? " " : ": ") + split[2];
        field = named.field || null;
      }
    }
    errorEl.textContent = prefix + " " + text.charAt(0).toUpperCase() + text.slice(1) + (/[.!?]$/.test(text) ? "" : ".");
    if (field) {
      field.setAttribute("aria-invalid", "true");
      field.setAttribute("aria-errormessage", "record-error");
      field.focus();
    }
  }

  function showConflict(message) {
    const newer = /at version (\d+)/.exec(message || "");
    conflictText.textContent =
      "Someone saved a newer version of this note" + (newer ? " (version " + newer[1] + ")" : "") +
      " while you were working on it, so your change was not saved. Your text is still in the form. " +
      "Load the newer version to continue from it (what you typed since your last save is then " +
      "replaced: copy anything you need first), or keep your text for now.";
    conflictBox.hidden = false;
    $("[data-record=reload]").focus();
  }

  // the form ----------------------------------------------------------------------------
  function rowsOf(kind) {
    return Array.from(form.querySelectorAll('[data-list="' + kind + '"] > li'));
  }

  function renumber(kind) {
    const rows = rowsOf(kind);
    rows.forEach((li, i) => {
      for (const name of li.querySelectorAll(".entry-name")) name.textContent = NOUN[kind] + " " + (i + 1) + ": ";
      const remove = li.querySelector("[data-record=remove-row]");
      remove.setAttribute("aria-label", "Remove " + NOUN[kind].toLowerCase() + " " + (i + 1));
      li.setAttribute("data-testid", kind + "-row-" + i);
    });
    form.querySelector('[data-rows="' + kind + '"] .entries-empty').hidden = rows.length > 0;
  }

  function addRow(kind, values, focus) {
    const li = el("li", "entry entry-" + kind);
    const n = ++rowSeq;
    for (const part of PARTS[kind]) {
      const id = kind + "-" + n + "-" + part.key;
      const wrap = el("div", "entry-field entry-" + part.key);
      const label = el("label");
      label.htmlFor = id;
      label.append(el("span", "visually-hidden entry-name"), part.label);
      if (part.optional) label.append(el("span", "muted", " (optional)"));
      const input = el("input");
      input.id = id;
      input.dataset.part = part.key;
      input.maxLength = part.max;
      input.autocomplete = "off";
      if (part.code) {
        input.spellcheck = false;
        input.autocapitalize = "characters";
        input.placeholder = "J06.9";
      }
      if (part.list) input.setAttribute("list", part.list);
      input.value = (values && values[part.key]) || "";
      wrap.append(label, input);
      li.appendChild(wrap);
    }
    const remove = el("button", "secondary entry-remove", "Remove");
    remove.type = "button";
    remove.dataset.record = "remove-row";
    li.appendChild(remove);
    form.querySelector('[data-list="' + kind + '"]').appendChild(li);
    renumber(kind);
    if (focus) li.querySelector("input").focus();
    return li;
  }

  function removeRow(li) {
    const kind = li.parentNode.dataset.list;
    const next = li.nextElementSibling || li.previousElementSibling;
    li.remove();
    renumber(kind);
    if (next) next.querySelector("input").focus();
    else form.querySelector('[data-record=add-row][data-kind="' + kind + '"]').focus();
    changed();
  }

  // The note as the form holds it; blank rows are left out. `rows` maps the index of each
  // entry sent to its row, so that an error about "diagnoses[1]" finds the right one.
  function collect() {
    const note = {};
    for (const [key] of SOAP) note[key] = form.elements[key].value;
    const rows = {};
    for (const kind of Object.keys(PARTS)) {
      note[kind] = [];
      rows[kind] = [];
      for (const li of rowsOf(kind)) {
        const item = {};
        let any = false;
        for (const part of PARTS[kind]) {
          const value = li.querySelector('[data-part="' + part.key + '"]').value.trim();
          item[part.key] = part.code ? value.toUpperCase() : value;
          if (value) any = true;
        }
        if (!any) continue;
        note[kind].push(item);
        rows[kind].push(li);
      }
    }
    return { note: note, rows: rows };
  }

  function dirty() {
    return record !== null && !record.signed && JSON.stringify(collect().note) !== savedText;
  }

  function changed() {
    if (record && !record.signed && !busy) say(dirty() ? "Unsaved changes." : "");
  }

  function fill(note) {
    for (const [key] of SOAP) form.elements[key].value = note ? note[key] || "" : "";
    for (const kind of Object.keys(PARTS)) {
      form.querySelector('[data-list="' + kind + '"]').replaceChildren();
      for (const item of (note && note[kind]) || []) addRow(kind, item, false);
      renumber(kind);
    }
    savedText = JSON.stringify(collect().note);
  }

  // the chat transcript: what the note held, and what this page saw since ---------------
  function transcript() {
    const lines = [];
    const seen = new Set();
    const prior = (record && record.note && record.note.chat) || [];
    for (const line of prior.concat(chat)) {
      const text = String(line.text || "").trim().slice(0, CHAT_TEXT_MAX);
      const at = Date.parse(line.at);
      if (!text || Number.isNaN(at)) continue;
      const key = line.sender + "\u0000" + at + "\u0000" + text;
      if (seen.has(key)) continue;
      seen.add(key);
      lines.push({ sender: line.sender, at: new Date(at).toISOString(), text: text });
    }
    lines.sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
    return lines.slice(-CHAT_LINES_MAX);
  }

  const call = document.getElementById("call");
  if (call) {
    call.addEventListener("chatline", (event) => {
      const line = event.detail || {};
      if (line.sender === "doctor" || line.sender === "patient") chat.push(line);
    });
  }

  // showing the record ------------------------------------------------------------------
  function noteView(container, note) {
    container.replaceChildren();
    if (!note) {
      container.appendChild(el("p", "muted", "Empty note."));
      return;
    }
    for (const [key, label] of SOAP) {
      container.appendChild(el("h4", "", label));
      container.appendChild(el("p", note[key] ? "note-text" : "muted", note[key] || "—"));
    }
    container.appendChild(el("h4", "", "Diagnoses"));
    if ((note.diagnoses || []).length) {
      const ul = el("ul");
      for (const d of note.diagnoses) ul.appendChild(el("li", "", d.code + " — " + d.display));
      container.appendChild(ul);
    } else container.appendChild(el("p", "muted", "None."));
    container.appendChild(el("h4", "", "Prescriptions"));
    if ((note.prescriptions || []).length) {
      const ul = el("ul");
      for (const p of note.prescriptions) {
        let text = [p.medication, p.dose, p.route, p.frequency].join(", ");
        if (p.duration) text += ", for " + p.duration;
        if (p.instructions) text += ". " + p.instructions;
        ul.appendChild(el("li", "", text));
      }
      container.appendChild(ul);
    } else container.appendChild(el("p", "muted", "None."));
    if ((note.chat || []).length) {
      const details = el("details", "chat-transcript");
      details.appendChild(el("summary", "", "Chat transcript (" + note.chat.length + " lines)"));
      const ol = el("ol", "chat-log");
      for (const c of note.chat) {
        const li = el("li", c.sender === "doctor" ? "mine" : "theirs");
        li.append(el("span", "from", c.sender === "doctor" ? "Clinician" : "Patient"), el("span", "text", c.text));
        const time = el("time", "", new Date(c.at).toISOString().slice(11, 16));
        time.dateTime = c.at;
        li.appendChild(time);
        ol.appendChild(li);
      }
      details.appendChild(ol);
      container.appendChild(details);
    }
  }

  function showAttachments(list) {
    attachmentList.replaceChildren();
    for (const a of list || []) {
      const li = el("li");
      const link = el("a", "", a.name);
      link.href = "/api/attachments/" + encodeURIComponent(a.id);
      link.setAttribute("download", a.name);
      li.append(link, el("span", "muted", " " + a.content_type + ", " + Math.max(1, Math.round(a.size / 1024)) +
        " KiB, added " + when(a.created_at) + " by " + who(a.author_id)));
      attachmentList.appendChild(li);
    }
    $(".attachments-empty").hidden = (list || []).length > 0;
  }

  function showState(data) {
    versionEl.textContent = data.version ? "Version " + data.version : "Nothing saved yet";
    versionEl.dataset.version = String(data.version || 0);
    root.dataset.version = String(data.version || 0);
    root.dataset.signed = data.signed ? "yes" : "no";
    signedEl.textContent = data.signed
      ? "· signed (version " + data.signed_version + ") by " + who(data.signed_by) + " on " + when(data.signed_at)
      : "· draft, not signed";
  }

  // `refill`: put the record's note in the form (on load and reload only: a save keeps
  // the form as it is, so that nothing typed during the round trip is lost).
  function show(data, refill) {
    record = data;
    baseVersion = data.version || 0;
    showState(data);
    form.hidden = data.signed;
    signedView.hidden = !data.signed;
    attachBox.hidden = data.signed;
    saveButton.hidden = data.signed;
    if (signButton) signButton.hidden = data.signed;
    showAttachments(data.attachments);
    if (data.signed) {
      noteView(signedNote, data.note);
      addendaEl.replaceChildren();
      for (const a of data.addenda || []) {
        const li = el("li");
        li.append(el("p", "muted", "Version " + a.version + ", " + when(a.at) + ", by " + who(a.author_id)), el("p", "note-text", a.text));
        addendaEl.appendChild(li);
      }
      if (!(data.addenda || []).length) addendaEl.appendChild(el("li", "muted", "None."));
      savedText = "";
    } else if (refill) {
      fill(data.note);
    }
  }

  async function load() {
    const answer = await request("GET", base);
    if (!answer.ok) {
      versionEl.textContent = "The record could not be loaded";
      showError("The record could not be loaded:", answer.error.replace(/\.$/, "") + ". Reload the page to try again");
      return;
    }
    conflictBox.hidden = true;
    show(answer.data, true);
    say("");
  }

  // actions -----------------------------------------------------------------------------
  async function save() {
    if (busy || record === null || record.signed) return false;
    const { note, rows } = collect();
    const sent = JSON.stringify(note);
    busy = true;
    clearError();
    say("Saving…");
    const body = Object.assign({}, note, { chat: transcript(), base_version: baseVersion });
    const answer = await request("POST", base, body);
    busy = false;
    if (answer.ok) {
      savedText = sent;
      conflictBox.hidden = true;
      show(answer.data, false);
      say("Saved as version " + answer.data.version + " at " + new Date().toISOString().slice(11, 16) + " UTC." +
        (dirty() ? " Changes since then are not saved yet." : ""));
      return true;
    }
    say(dirty() ? "Unsaved changes." : "");
    if (answer.status === 409) showConflict(answer.error);
    else showError("Not saved.", answer.error, rows);
    return false;
  }

  async function sign() {
    if (busy || record === null || record.signed) return;
    if (!canSign) {
      showError("Not signed.", "only a doctor signs a record");
      return;
    }
    const unsaved = dirty();
    if (!unsaved && baseVersion === 0) {
      showError("Not signed.", "there is nothing to sign yet: write the note and save it first");
      return;
    }
    const question = unsaved
      ? "Save your changes and sign the note? After signing, the note cannot be changed: only addenda can be added."
      : "Sign version " + baseVersion + " of the note? After signing, the note cannot be changed: only addenda can be added.";
    if (!window.confirm(question)) return;
    if (unsaved && !(await save())) return;
    busy = true;
    clearError();
    say("Signing…");
    const answer = await request("POST", base + "/sign", { version: baseVersion });
    busy = false;
    if (answer.ok) {
      show(answer.data, false);
      say("Signed version " + answer.data.signed_version + ".");
      addendumText.focus();
      return;
    }
    say("");
    if (answer.status === 409) showConflict(answer.error);
    else showError("Not signed.", answer.error);
  }

  async function addAddendum() {
    if (busy || record === null || !record.signed) return;
    const text = addendumText.value.trim();
    if (!text) {
      showError("Not added.", "text: write the addendum first");
      return;
    }
    busy = true;
    clearError();
    say("Adding the addendum…");
    const answer = await request("POST", base + "/addenda", { text: text });
    busy = false;
    if (answer.ok) {
      addendumText.value = "";
      show(answer.data, false);
      say("Addendum added as version " + answer.data.version + ".");
      return;
    }
    say("");
    showError("Not added.", answer.error);
  }

  async function upload() {
    if (busy || record === null || record.signed) return;
    const file = fileInput.files && fileInput.files[0];
    if (!file) {
      showError("Not attached.", "file: choose a file first");
      return;
    }
    if (maxBytes && file.size > maxBytes) {
      showError("Not attached.", "file: it is larger than " + Math.round(maxBytes / 1024) + " KiB");
      return;
    }
    // the upload adds a version made of the saved note: save what is typed first
    if (dirty() && !(await save())) return;
    busy = true;
    clearError();
    say("Uploading " + file.name + "…");
    const body = new FormData();
    body.append("file", file, file.name);
    const answer = await request("POST", base + "/attachments", body);
    busy = false;
    if (!answer.ok) {
      say("");
      if (answer.status === 409) showConflict(answer.error);
      else showError("Not attached.", answer.error);
      return;
    }
    fileInput.value = "";
    const before = baseVersion;
    const fresh = await request("GET", base);
    if (fresh.ok) {
      const text = savedText;
      show(fresh.data, false);
      savedText = text;
      // the upload made version before+1; anything newer is someone else's
      baseVersion = Math.min(fresh.data.version, before + 1);
      if (fresh.data.version > before + 1) showConflict("at version " + fresh.data.version);
    }
    say("Attached " + answer.data.name + ".");
  }

  // history -----------------------------------------------------------------------------
  function historyOpen() {
    return dialog.open;
  }

  function closeHistory() {
    if (!dialog.open) return;
    if (typeof dialog.close === "function") dialog.close();
    else dialog.removeAttribute("open");
    historyButton.focus();
  }

  function showVersion(entry, button) {
    for (const b of historyList.querySelectorAll("button")) b.removeAttribute("aria-current");
    button.setAttribute("aria-current", "true");
    historyView.replaceChildren();
    historyView.appendChild(el("h4", "", "Version " + entry.version + " (" + entry.kind + "), " + when(entry.created_at) + ", by " + who(entry.author_id)));
    if (entry.kind === "addendum") {
      historyView.appendChild(el("p", "note-text", entry.text || ""));
    } else {
      const body = el("div");
      noteView(body, entry.note);
      historyView.appendChild(body);
    }
  }

  async function openHistory() {
    historyList.replaceChildren();
    historyView.replaceChildren(el("p", "muted", "Loading…"));
    if (typeof dialog.showModal === "function") dialog.showModal();
    else dialog.setAttribute("open", "");
    const answer = await request("GET", base + "/history");
    if (!dialog.open) return;
    if (!answer.ok) {
      historyView.replaceChildren(el("p", "error", "The history could not be loaded: " + answer.error + "."));
      return;
    }
    const entries = (answer.data.history || []).slice().reverse();
    historyView.replaceChildren();
    if (!entries.length) {
      historyView.appendChild(el("p", "muted", "Nothing saved yet."));
      return;
    }
    for (const entry of entries) {
      const li = el("li");
      const button = el("button", "secondary history-entry",
        "Version " + entry.version + " · " + (entry.kind === "addendum" ? "addendum" : "note") +
        (answer.data.signed_version === entry.version ? " (signed)" : "") +
        " · " + when(entry.created_at) + " · " + who(entry.author_id));
      button.type = "button";
      button.setAttribute("data-testid", "history-version-" + entry.version);
      button.addEventListener("click", () => showVersion(entry, button));
      li.appendChild(button);
      historyList.appendChild(li);
    }
    const first = historyList.querySelector("button");
    showVersion(entries[0], first);
    first.focus();
  }

  // events ------------------------------------------------------------------------------
  root.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-record]");
    if (!button) return;
    const action = button.dataset.record;
    if (action === "save") save();
    else if (action === "sign") sign();
    else if (action === "add-row") {
      addRow(button.dataset.kind, null, true);
      changed();
    } else if (action === "remove-row") removeRow(button.closest("li"));
    else if (action === "upload") upload();
    else if (action === "history") openHistory();
    else if (action === "history-close") closeHistory();
    else if (action === "reload") {
      clearError();
      load().then(() => form.elements.subjective.focus());
    } else if (action === "keep") {
      conflictBox.hidden = true;
      saveButton.focus();
    }
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
  });
  form.addEventListener("input", changed);
  form.addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    const entries = event.target.closest("[data-rows]");
    if ((event.ctrlKey || event.metaKey) && entries) {
      event.preventDefault();
      addRow(entries.dataset.rows, null, true);
      changed();
    } else if (event.target.tagName === "INPUT") {
      event.preventDefault(); // Enter in a one-line field would submit: saving is Ctrl+S
    }
  });

  addendumForm.addEventListener("submit", (event) => {
    event.preventDefault();
    addAddendum();
  });

  dialog.addEventListener("cancel", (event) => {
    event.preventDefault();
    closeHistory();
  });

  document.addEventListener("keydown", (event) => {
    const mod = event.ctrlKey || event.metaKey;
    // Ctrl+S by the letter typed; Alt+Shift+S by the key too (macOS types "Í" there)
    const s = event.key === "s" || event.key === "S";
    if (mod && !event.altKey && !event.shiftKey && s) {
      event.preventDefault(); // the browser's "save page as"
      if (historyOpen() || record === null) return;
      if (record.signed) {
        if (addendumText.value.trim()) addAddendum();
      } else save();
    } else if (event.altKey && event.shiftKey && !mod && (s || event.code === "KeyS")) {
      event.preventDefault();
      if (!historyOpen()) sign();
    } else if (event.key === "Escape" && historyOpen()) {
      event.preventDefault();
      closeHistory();
    }
  });

  window.addEventListener("beforeunload", (event) => {
    if (dirty()) {
      event.preventDefault();
      event.returnValue = "";
    }
  });

  load();
})();
