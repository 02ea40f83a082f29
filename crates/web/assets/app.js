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
