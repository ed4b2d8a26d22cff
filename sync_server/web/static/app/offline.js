/* The offline page (/app/offline, what the service worker answers for a page it could not fetch):
   back online, the page the holder asked for opens by itself. */
"use strict";
(function () {
  window.addEventListener("online", () => location.reload());
  const retry = document.getElementById("offline-retry");
  if (retry) retry.addEventListener("click", (event) => { event.preventDefault(); location.reload(); });
})();
