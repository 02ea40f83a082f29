// fieldlink web UI: keeps the dashboard live. The server sends the dashboard's panels, already
// rendered and escaped, as server-sent events; this swaps them in. Nothing else runs here.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  const state = document.getElementById("live-state");
  const source = new EventSource("/events");
  source.addEventListener("panels", function (event) {
    live.innerHTML = event.data;
    if (state) state.textContent = "live";
  });
  source.onerror = function () {
    if (state) state.textContent = "reconnecting…";
  };
  window.addEventListener("pagehide", function () { source.close(); });
})();

// Live data: rows for the messages on the page's topic filter, newest first, at most 100.
// Topics and payloads go in as text (textContent), never as markup.
(function () {
  const table = document.getElementById("live-data");
  if (!table || !window.EventSource) return;
  const body = table.querySelector("tbody");
  const state = document.getElementById("live-data-state");
  const source = new EventSource("/live/events?filter=" + encodeURIComponent(table.dataset.filter));
  function row(cells, className) {
    const tr = document.createElement("tr");
    if (className) tr.className = className;
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > 100) body.deleteRow(body.rows.length - 1);
  }
  source.addEventListener("open", function () { if (state) state.textContent = "live"; });
  source.addEventListener("message", function (event) {
    const m = JSON.parse(event.data);
    const when = new Date().toLocaleTimeString();
    if (m.skipped_before > 0) row([when, "", m.skipped_before + " messages not shown (rate limit)"], "muted");
    const cut = m.bytes > m.payload.length ? " … (" + m.bytes + " bytes)" : "";
    row([when, m.topic, m.payload + cut]);
  });
  source.onerror = function () {
    if (state) state.textContent = "not allowed, or reconnecting…";
  };
  window.addEventListener("pagehide", function () { source.close(); });
})();

// Configuration page: the line numbers beside the text follow it as it is edited (the text area
// grows with it, so numbers and lines stay side by side); while an apply is being checked, the
// page reloads itself until it has ended.
(function () {
  const text = document.getElementById("config-text");
  const gutter = document.getElementById("gutter");
  if (text && gutter) {
    text.addEventListener("input", function () {
      const lines = text.value.split("\n").length;
      let numbers = "";
      for (let n = 1; n <= lines; n++) numbers += n + "\n";
      gutter.textContent = numbers;
      text.rows = lines + 1;
    });
  }
  if (document.querySelector("[data-applying]")) {
    // The page's own GET path (an answer to a form post has the form's path).
    const page = window.location.pathname.startsWith("/certificates") ? "/certificates" : "/config";
    setTimeout(function () { window.location.assign(page); }, 2000);
  }
})();
