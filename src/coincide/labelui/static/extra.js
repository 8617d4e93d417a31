// Extras of the labeling page, kept apart from app.js: a search session's question ("is this a
// <class>?", with Yes and No buttons that answer through the page's own Submit and Skip), and a
// cluster session's stopping signal (estimated label precision and coverage). Both come from
// GET /api/extra; text is only written with textContent.
"use strict";

(function () {
  const token = new URLSearchParams(location.search).get("token");
  const byId = (id) => document.getElementById(id);

  async function extraInfo() {
    const headers = token ? { "X-Coincide-Token": token } : {};
    const response = await fetch("/api/extra", { headers: headers });
    if (!response.ok) return null;
    return response.json();
  }

  function box() {
    let element = byId("extra-info");
    if (!element) {
      element = document.createElement("div");
      element.id = "extra-info";
      element.className = "dim";
      const header = document.querySelector("header");
      if (header) header.appendChild(element);
    }
    return element;
  }

  function searchButtons(question) {
    if (byId("search-yes") || !byId("submit") || !byId("skip")) return;
    const yes = document.createElement("button");
    yes.id = "search-yes";
    yes.type = "button";
    yes.className = "primary";
    yes.textContent = "Yes, " + question;
    // A yes is the class as the answer's label; a no is a skip (see coincide.labeling.search_label).
    yes.addEventListener("click", () => {
      byId("label-input").value = question;
      byId("submit").click();
    });
    const no = document.createElement("button");
    no.id = "search-no";
    no.type = "button";
    no.textContent = "No, not " + question;
    no.addEventListener("click", () => byId("skip").click());
    byId("submit").parentNode.prepend(yes, no);
  }

  async function refresh() {
    let info;
    try {
      info = await extraInfo();
    } catch (err) {
      return; // the page itself says when the server cannot be reached
    }
    if (!info) return;
    if (info.strategy === "search" && info.question) {
      box().textContent = "Is this " + info.question + "? (hits of the search " + info.query + ")";
      searchButtons(info.question);
    } else if (info.signal) {
      box().textContent = info.signal.text;
    }
  }

  refresh();
  setInterval(refresh, 5000);
})();
