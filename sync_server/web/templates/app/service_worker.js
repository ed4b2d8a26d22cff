/* The phone app's service worker (served by sync_server/web/phone_app.py at /app/sw.js, scope /app/):
   it keeps every page and file of the app so the app opens with no network - the payment code works
   fully, the home page shows the last balance, the others say they need the network.

   Pages: from the network first (a fresh page, in the language asked for), kept under their path
   without the query; from the cache when the network fails or takes longer than PAGE_TIMEOUT_MS. A
   page under the scope that is not kept (a page newer than this worker, a mistyped address) gets the
   offline page (OFFLINE_PAGE) when the network fails.
   Files (scripts, style, the QR library): from the cache first; their URLs carry a hash of their
   contents, and the cache's name carries a hash of those URLs, so a changed file installs a new
   worker with a new cache and the old one is deleted. The API (/api/v1) is never touched here: what
   the page needs offline it keeps itself, in IndexedDB. */
"use strict";
const CACHE_PREFIX = "ykt-app-";
const CACHE_NAME = CACHE_PREFIX + {{ version|tojson }};
const PAGES = {{ pages|tojson }};
const ASSETS = {{ assets|tojson }};
const OFFLINE_PAGE = {{ offline_page|tojson }};
const SCOPE = {{ scope|tojson }};
const PAGE_TIMEOUT_MS = 4000;

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE_NAME);
    await cache.addAll(PAGES.concat(ASSETS).map((url) => new Request(url, {cache: "no-cache"})));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith(CACHE_PREFIX) && name !== CACHE_NAME) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (request.mode === "navigate" && url.pathname.startsWith(SCOPE)) {
    event.respondWith(page_from_network_first(request, PAGES.includes(url.pathname) ? url.pathname : null));
  } else if (ASSETS.includes(url.pathname + url.search)) {
    event.respondWith(file_from_cache_first(request));
  }
});

async function page_from_network_first(request, path) {
  const cache = await caches.open(CACHE_NAME);
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), PAGE_TIMEOUT_MS);
  try {
    const response = await fetch(request, {signal: controller.signal});
    if (response.ok && path) await cache.put(path, response.clone());
    return response;
  } catch (error) {
    const kept = (path && await cache.match(path, {ignoreVary: true})) ||
      await cache.match(OFFLINE_PAGE, {ignoreVary: true});
    if (kept) return kept;
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

async function file_from_cache_first(request) {
  const cache = await caches.open(CACHE_NAME);
  const kept = await cache.match(request, {ignoreVary: true});
  if (kept) return kept;
  const response = await fetch(request);
  if (response.ok) await cache.put(request, response.clone());
  return response;
}
