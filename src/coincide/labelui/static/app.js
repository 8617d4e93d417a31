// The labeling page: asks the server for the next cluster, plays and shows its member, and sends
// each answer as soon as it is given. The server (through the label store) owns every label; this
// page keeps nothing but what it is showing. Text from the server is only ever written with
// textContent, never parsed as HTML.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const $ = (id) => document.getElementById(id);

// An id kept in `storage` under `key`: `prefix` and `size` random bytes in hex, made the first
// time it is asked for.
function storedId(storage, key, prefix, size) {
  let id = storage.getItem(key);
  if (!id) {
    const bytes = crypto.getRandomValues(new Uint8Array(size));
    id = prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    storage.setItem(key, id);
  }
  return id;
}

const state = {
  // One claimant per tab: a reload keeps it (the tab gets its cluster back), a new tab gets its
  // own.
  claimant: storedId(sessionStorage, "coincide-claimant", "tab-", 12),
  // One owner per browser: answers given with it can be undone only with it, from any of this
  // browser's tabs; another person typing the same name cannot take them back.
  owner: storedId(localStorage, "coincide-owner", "owner-", 16),
  request: null, // the cluster being answered: {cluster_id, window, cluster_size, member, ...}
  shown: null, // the member whose audio and pictures are shown (the request's, or another)
  labels: [], // labels of the answer being written
  suggestions: [], // the numbered suggestions shown: [{name, description, uses}]
  suggestedFor: "", // the typed text they were asked for
  highlighted: -1, // the suggestion chosen with the arrow keys for the current text, or -1
  waitingFor: null, // the answer kind refused for want of a name; Enter in the name field sends it
  busy: false,
  interacted: false, // browsers let a page play sound only after a user gesture
  leaseS: 300,
  polling: null, // the background refresh in flight, if any
};

// ---------------------------------------------------------------------------------------------
// Server calls

function withToken(url) {
  if (!token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function api(path, body) {
  const options = { headers: {} };
  if (token) options.headers["X-Coincide-Token"] = token;
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error("the labeling server cannot be reached; is it running?");
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch (err) {
    payload = null;
  }
  if (!response.ok) {
    throw new Error((payload && payload.error) || "request failed (" + response.status + ")");
  }
  return payload;
}

// ---------------------------------------------------------------------------------------------
// Showing things

function say(text, kind) {
  const message = $("message");
  message.textContent = text;
  message.className = kind || "";
}

function showProgress(progress) {
  const fraction = progress.budget ? progress.answered / progress.budget : 0;
  $("progress-bar").style.width = (100 * fraction).toFixed(1) + "%";
  $("progress-text").textContent =
    progress.answered + " / " + progress.budget + " clusters answered · " +
    progress.windows_labeled.toLocaleString("en") + " windows labeled";
}

function chip(text, onRemove) {
  const span = document.createElement("span");
  span.className = "chip";
  span.textContent = text;
  if (onRemove) {
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "chip-remove";
    remove.textContent = "×";
    remove.title = "remove this label";
    remove.addEventListener("click", onRemove);
    span.appendChild(remove);
  }
  return span;
}

function renderChips() {
  const chips = $("chips");
  chips.replaceChildren(
    ...state.labels.map((label, k) =>
      chip(label, () => {
        state.labels.splice(k, 1);
        renderChips();
        $("label-input").focus();
      }),
    ),
  );
  renderSuggestions(); // a suggestion shows whether it is among the labels
}

// A label is kept exactly as typed (spaces collapsed, as the server does): never replaced by a
// suggestion that resembles it. Only the arrow keys, Tab, a digit or a click take a suggestion.
function addLabel(text) {
  const label = text.trim().replace(/\s+/g, " ");
  if (label && !state.labels.includes(label)) state.labels.push(label);
  renderChips();
  $("label-input").value = "";
  suggest();
}

function toggleSuggestion(k) {
  const term = state.suggestions[k];
  if (!term) {
    say("No suggestion " + (k + 1) + " here.", "error");
    return;
  }
  const at = state.labels.indexOf(term.name);
  if (at >= 0) state.labels.splice(at, 1);
  else state.labels.push(term.name);
  renderChips();
}

function seconds(value) {
  return (Math.round(value * 100) / 100).toString() + " s";
}

function showMember(member, isRequestMember) {
  state.shown = member;
  const audio = $("audio");
  audio.pause();
  audio.src = withToken("/api/windows/" + member.window + "/audio.wav");
  audio.load();
  $("spectrogram").src = withToken("/api/windows/" + member.window + "/spectrogram.png");
  $("filmstrip").src = withToken("/api/windows/" + member.window + "/filmstrip.png");
  $("frame").hidden = !member.has_frame;
  $("no-frame").hidden = member.has_frame;
  if (member.has_frame) $("frame").src = withToken("/api/windows/" + member.window + "/frame.png");
  const where = member.media_name + " at " + seconds(member.time_s);
  $("member-info").textContent = isRequestMember ? where : "another member: " + where;
  $("audio-status").textContent = "";
  movePlayhead();
  if (state.interacted) play();
}

function showRequest(request, prefill) {
  state.request = request;
  $("done").hidden = true;
  $("card").hidden = false;
  $("cluster-title").textContent = "Cluster " + request.cluster_id;
  $("cluster-size").textContent = request.cluster_size.toLocaleString("en") + " windows";
  state.labels = prefill ? prefill.slice() : [];
  renderChips();
  $("label-input").value = "";
  suggest();
  showMember(request.member, true);
  // The keys (Space, 1-9, S, ...) work at once; "/" or a click starts typing a label.
  if (document.activeElement && document.activeElement !== $("annotator")) {
    document.activeElement.blur();
  }
}

function showDone(progress) {
  state.request = null;
  $("audio").pause();
  $("card").hidden = true;
  $("done").hidden = false;
  if (progress.answered >= progress.budget) {
    $("done-title").textContent = "All " + progress.budget + " clusters are answered. Thank you!";
    $("done-text").textContent =
      "The answers are saved. Export them with: coincide labels export RUN --format csv";
  } else {
    $("done-title").textContent = "Nothing left for this tab right now";
    $("done-text").textContent =
      "The clusters still unanswered are open in other tabs; this page asks again every 15 s.";
  }
}

async function refreshHistory() {
  const payload = await api("/api/answers?limit=12");
  const items = payload.answers.map((answer) => {
    const li = document.createElement("li");
    const head = document.createElement("div");
    head.className = "history-head";
    head.textContent =
      "cluster " + answer.cluster_id + " · " + answer.kind + " · " +
      answer.cluster_size.toLocaleString("en") + " windows";
    const labels = document.createElement("div");
    labels.className = "chips";
    labels.append(...answer.labels.map((label) => chip(label, null)));
    const who = document.createElement("div");
    who.className = "dim";
    who.textContent = "by " + answer.annotator;
    li.append(head, labels, who);
    return li;
  });
  $("history").replaceChildren(...items);
}

// The list of answers is refreshed on the side: the next cluster must not wait for it.
function updateHistory() {
  refreshHistory().catch((err) => say(err.message, "error"));
}

// ---------------------------------------------------------------------------------------------
// Audio

function play() {
  const audio = $("audio");
  if (audio.ended) audio.currentTime = 0;
  audio.play().catch((err) => {
    $("audio-status").textContent = "press Play to listen";
  });
}

function togglePlay() {
  state.interacted = true;
  const audio = $("audio");
  if (audio.paused) play();
  else audio.pause();
}

function movePlayhead() {
  const member = state.shown;
  const playhead = $("playhead");
  if (!member) return;
  const span = member.clip.end_s - member.clip.start_s;
  const at = Math.min(1, Math.max(0, $("audio").currentTime / span));
  playhead.style.left = (100 * at).toFixed(2) + "%";
  if (!$("audio").paused) requestAnimationFrame(movePlayhead);
}

// ---------------------------------------------------------------------------------------------
// Actions

function annotatorName(waitingFor) {
  const name = $("annotator").value.trim();
  if (!name) {
    state.waitingFor = waitingFor || null;
    say("Type your name in the annotator field, then press Enter.", "error");
    $("annotator").focus();
    return null;
  }
  state.waitingFor = null;
  localStorage.setItem("coincide-annotator", name);
  return name;
}

async function loadNext(prefill) {
  const payload = await api("/api/next", { claimant: state.claimant });
  showProgress(payload.progress);
  if (payload.request) {
    const same = state.request && state.request.cluster_id === payload.request.cluster_id;
    if (!same || prefill) showRequest(payload.request, prefill);
  } else {
    showDone(payload.progress);
  }
}

// One user action at a time: a key pressed again while its action runs is dropped (a double
// press must not skip two clusters); a background refresh in flight is waited for.
async function guarded(action) {
  if (state.busy) return;
  state.busy = true;
  try {
    if (state.polling) await state.polling;
    await action();
  } catch (err) {
    say(err.message, "error");
  } finally {
    state.busy = false;
  }
}

// Ask again now and then: renews this tab's lease, and finds clusters freed by other tabs.
function poll() {
  if (state.busy || state.polling) return;
  state.polling = loadNext()
    .catch((err) => say(err.message, "error"))
    .finally(() => {
      state.polling = null;
    });
}

function answer(kind) {
  return guarded(async () => {
    if (!state.request) return;
    const annotator = annotatorName(kind);
    if (!annotator) return;
    const typed = $("label-input").value.trim();
    if (typed) addLabel(typed);
    if (kind === "label" && state.labels.length === 0) {
      say("Type a label (/) or pick one (1-9); or skip (S), unsure (?), mixed (M).", "error");
      return;
    }
    const request = state.request;
    const payload = await api("/api/answer", {
      claimant: state.claimant,
      cluster_id: request.cluster_id,
      window: request.window,
      kind: kind,
      labels: kind === "skip" ? [] : state.labels,
      annotator: annotator,
      owner: state.owner,
    });
    const given = payload.answer;
    const what = given.labels.length ? given.kind + ": " + given.labels.join(", ") : given.kind;
    say("Saved cluster " + given.cluster_id + " (" + what + ").", "ok");
    showProgress(payload.progress);
    state.request = null;
    await loadNext();
    updateHistory();
  });
}

function undo() {
  return guarded(async () => {
    const annotator = annotatorName("undo");
    if (!annotator) return;
    const payload = await api("/api/undo", {
      claimant: state.claimant,
      annotator: annotator,
      owner: state.owner,
    });
    showProgress(payload.progress);
    if (!payload.undone) {
      say("Nothing of yours to undo.", "error");
      return;
    }
    const undone = payload.undone;
    state.request = null;
    await loadNext(undone.labels);
    say("Undid the answer to cluster " + undone.cluster_id + "; answer it again.", "ok");
    updateHistory();
  });
}

function anotherMember() {
  return guarded(async () => {
    if (!state.request || !state.shown) return;
    state.interacted = true;
    const path =
      "/api/clusters/" + state.request.cluster_id + "/random-member?exclude=" + state.shown.window;
    const payload = await api(path);
    const isRequestMember = payload.member.window === state.request.window;
    showMember(payload.member, isRequestMember);
    if (state.request.cluster_size === 1) say("This cluster has only one member.", "");
  });
}

// ---------------------------------------------------------------------------------------------
// Suggestions: labels already given in this session (most used first), then the vocabulary's
// terms, matching what is typed; always shown, numbered 1-9.

function renderSuggestions() {
  const items = state.suggestions.map((term, k) => {
    const li = document.createElement("li");
    const pick = document.createElement("button");
    pick.type = "button";
    pick.className = "suggestion" + (k === state.highlighted ? " highlighted" : "");
    pick.setAttribute("aria-pressed", state.labels.includes(term.name) ? "true" : "false");
    const key = document.createElement("kbd");
    key.textContent = String(k + 1);
    const name = document.createElement("span");
    name.className = "term";
    name.textContent = term.name;
    pick.append(key, name);
    if (term.uses) {
      const uses = document.createElement("span");
      uses.className = "uses";
      uses.textContent = "×" + term.uses;
      uses.title = "given in " + term.uses + (term.uses === 1 ? " answer" : " answers");
      pick.appendChild(uses);
    }
    if (term.description) {
      const description = document.createElement("span");
      description.className = "description";
      description.textContent = term.description;
      pick.appendChild(description);
    }
    // A click must not take the focus from the label field (mousedown would move it).
    pick.addEventListener("mousedown", (event) => event.preventDefault());
    pick.addEventListener("click", () => {
      state.interacted = true;
      if ($("label-input").value.trim()) addLabel(term.name);
      else toggleSuggestion(k);
    });
    li.appendChild(pick);
    return li;
  });
  $("suggestions").replaceChildren(...items);
  const typed = $("label-input").value.trim();
  $("suggest-title").textContent = typed
    ? "matching “" + typed + "”"
    : state.suggestions.length
      ? "suggestions"
      : "no suggestions yet: labels you give appear here";
  renderTypedHint();
}

// Says what Enter will add, so that nobody wonders whether a new label was changed into an old.
function renderTypedHint() {
  const typed = $("label-input").value.trim().replace(/\s+/g, " ");
  const hint = $("typed-hint");
  if (!typed) {
    hint.textContent = "";
    return;
  }
  if (state.highlighted >= 0) {
    hint.textContent = "Enter adds suggestion " + (state.highlighted + 1) + ": “" +
      state.suggestions[state.highlighted].name + "”";
    return;
  }
  const known = state.suggestions.some((term) => term.name === typed);
  hint.textContent = "Enter adds “" + typed + "”" + (known ? "" : " as a new label");
}

let suggestTimer = null;
let suggestSerial = 0;
function suggest() {
  clearTimeout(suggestTimer);
  const query = $("label-input").value.trim();
  // A suggestion chosen for other text must not be taken by the next Enter.
  if (query !== state.suggestedFor) state.highlighted = -1;
  renderTypedHint();
  suggestTimer = setTimeout(async () => {
    const serial = ++suggestSerial;
    try {
      const payload = await api("/api/vocab?q=" + encodeURIComponent(query) + "&limit=9");
      if (serial !== suggestSerial || $("label-input").value.trim() !== query) return;
      state.suggestions = payload.terms;
      state.suggestedFor = query;
      state.highlighted = -1;
      renderSuggestions();
    } catch (err) {
      say(err.message, "error");
    }
  }, query ? 120 : 0);
}

// ---------------------------------------------------------------------------------------------
// Keys

function onLabelKey(event) {
  const input = $("label-input");
  const fresh = state.suggestedFor === input.value.trim();
  if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    if (!state.suggestions.length || !fresh) return;
    event.preventDefault();
    const step = event.key === "ArrowDown" ? 1 : -1;
    const n = state.suggestions.length;
    state.highlighted = (state.highlighted + step + n) % n;
    renderSuggestions();
  } else if (event.key === "Tab" && input.value.trim() && state.suggestions.length && fresh) {
    event.preventDefault();
    addLabel(state.suggestions[Math.max(state.highlighted, 0)].name);
  } else if (event.key === "Enter") {
    event.preventDefault();
    state.interacted = true;
    if (event.ctrlKey || event.metaKey) {
      answer("label");
    } else if (state.highlighted >= 0 && fresh) {
      addLabel(state.suggestions[state.highlighted].name);
    } else if (input.value.trim()) {
      addLabel(input.value);
    } else {
      answer("label");
    }
  } else if (event.key === "Escape") {
    event.preventDefault();
    if (state.highlighted >= 0) {
      state.highlighted = -1;
      renderSuggestions();
    } else {
      input.blur();
    }
  } else if (event.key === "Backspace" && !input.value && state.labels.length) {
    state.labels.pop();
    renderChips();
  }
}

// Enter in the name field keeps the name and sends what was waiting for it: the answer refused
// for want of a name, else the labels chosen; with nothing chosen it hands the keys back.
function onNameKey(event) {
  if (event.key !== "Enter" && event.key !== "Escape") return;
  event.preventDefault();
  const name = $("annotator").value.trim();
  if (event.key === "Escape") {
    $("annotator").blur();
    return;
  }
  if (!name) {
    say("Type your name first.", "error");
    return;
  }
  localStorage.setItem("coincide-annotator", name);
  $("annotator").blur();
  state.interacted = true;
  const waiting = state.waitingFor;
  state.waitingFor = null;
  if (waiting === "undo") undo();
  else if (waiting) answer(waiting);
  else if (state.request && (state.labels.length || $("label-input").value.trim())) {
    answer("label");
  } else {
    say("Hello " + name + ". Listen (Space), then type (/) or pick (1-9) a label.", "ok");
  }
}

function onKey(event) {
  const target = event.target;
  const typing =
    target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement;
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  const actions = {
    " ": togglePlay,
    Enter: () => answer("label"),
    s: () => answer("skip"),
    "?": () => answer("unsure"),
    m: () => answer("mixed"),
    n: anotherMember,
    u: undo,
    "/": () => $("label-input").focus(),
  };
  let action = actions[event.key.length === 1 ? event.key.toLowerCase() : event.key];
  if (!action && /^[1-9]$/.test(event.key)) {
    const k = Number(event.key) - 1;
    action = () => state.request && toggleSuggestion(k);
  }
  if (!action) return;
  event.preventDefault();
  state.interacted = true;
  action();
}

// ---------------------------------------------------------------------------------------------
// Start

function bind() {
  document.addEventListener("keydown", onKey);
  const input = $("label-input");
  input.addEventListener("keydown", onLabelKey);
  input.addEventListener("input", suggest);
  $("annotator").addEventListener("keydown", onNameKey);
  const click = (id, action) =>
    $(id).addEventListener("click", (event) => {
      event.currentTarget.blur(); // so that Space afterwards plays instead of clicking again
      state.interacted = true;
      action();
    });
  click("play", togglePlay);
  click("another", anotherMember);
  click("submit", () => answer("label"));
  click("skip", () => answer("skip"));
  click("unsure", () => answer("unsure"));
  click("mixed", () => answer("mixed"));
  click("undo", undo);
  click("done-undo", undo);
  const audio = $("audio");
  audio.addEventListener("play", () => {
    $("audio-status").textContent = "playing";
    $("play").classList.add("active");
    requestAnimationFrame(movePlayhead);
  });
  audio.addEventListener("pause", () => {
    $("audio-status").textContent = "";
    $("play").classList.remove("active");
    movePlayhead();
  });
  audio.addEventListener("error", () => {
    $("audio-status").textContent = "the audio of this window cannot be played";
  });
  $("annotator").addEventListener("change", () => {
    const name = $("annotator").value.trim();
    if (name) localStorage.setItem("coincide-annotator", name);
  });
}

async function start() {
  bind();
  try {
    const info = await api("/api/state");
    $("session-name").textContent = info.session;
    $("annotator").value = localStorage.getItem("coincide-annotator") || info.annotator || "";
    state.leaseS = info.lease_s;
    showProgress(info.progress);
    await loadNext();
    await refreshHistory();
    if (!$("annotator").value) {
      $("annotator").focus();
      say("Type your name in the annotator field, then press Enter.", "");
    }
  } catch (err) {
    say(err.message, "error");
    $("card").hidden = false;
  }
  setInterval(poll, Math.max(5, Math.min(state.leaseS / 3, 15)) * 1000);
}

start();
