// Suanli dashboard: swap the #live section for the one each server-sent event carries (the page is whole
// without this file). Same origin; the session cookie authenticates the stream. No library, no CDN.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live || !window.EventSource) { return; }
  const source = new EventSource("/api/events");
  source.addEventListener("snapshot", function (event) {
    const doc = JSON.parse(event.data);
    if (Number(live.dataset.version) >= doc.version) { return; }
    live.innerHTML = doc.html;
    live.dataset.version = String(doc.version);
  });
})();
