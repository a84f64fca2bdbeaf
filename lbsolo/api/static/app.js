// lbsolo web UI: the live log tail with its filter, a quiet refresh of the apps list with its
// filters, the output of a first deploy started from the New app form, and a reload of the
// Add-ons page once the backup or restore it shows running has ended.
// Plain JavaScript, no build step. Text from the server only ever goes in through textContent.
"use strict";

const MAX_LINES = 2000;

function logTail(pre) {
  const filter = document.getElementById("log-filter");
  const state = document.getElementById("log-state");
  let needle = "";

  const setState = (name, text) => {
    state.dataset.state = name;
    state.textContent = text;
  };
  const show = (row) => {
    row.hidden = needle !== "" && !row.dataset.text.includes(needle);
  };

  filter.addEventListener("input", () => {
    needle = filter.value.toLowerCase();
    for (const row of pre.children) show(row);
  });

  const source = new EventSource(pre.dataset.stream);
  source.onopen = () => setState("live", "live");
  source.onerror = () => setState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting",
    source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…");
  source.onmessage = (event) => {
    const line = JSON.parse(event.data);
    const stuck = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    const row = document.createElement("div");
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `${new Date(line.ts * 1000).toLocaleTimeString()} ${line.process}.${line.release} `;
    row.append(meta, document.createTextNode(line.line));
    row.dataset.text = `${line.process}.${line.release} ${line.line}`.toLowerCase();
    show(row);
    pre.append(row);
    while (pre.childElementCount > MAX_LINES) pre.firstElementChild.remove();
    if (stuck) pre.scrollTop = pre.scrollHeight;
  };
}

function refresh(section) {
  const every = Number(section.dataset.refresh) * 1000;
  setInterval(async () => {
    if (document.hidden) return;
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (!response.ok || response.redirected) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const id of [section.id, "recent"]) {
        const fresh = page.getElementById(id);
        const old = document.getElementById(id);
        if (fresh && old) old.replaceWith(fresh);
      }
      section = document.getElementById(section.id);
      document.dispatchEvent(new Event("lbsolo:refreshed"));
    } catch (e) {
      // The daemon may be restarting; the next tick tries again.
    }
  }, every);
}

function appFilters(input, status) {
  const shown = document.getElementById("app-shown");
  const apply = () => {
    const needle = input.value.trim().toLowerCase();
    const wanted = status.value;
    const rows = document.querySelectorAll("#apps tr[data-app]");
    let visible = 0;
    for (const row of rows) {
      const hit = (needle === "" || row.dataset.app.includes(needle)) && (wanted === "" || row.dataset.status === wanted);
      row.hidden = !hit;
      if (hit) visible += 1;
    }
    shown.textContent = rows.length ? `${visible} of ${rows.length}` : "";
  };
  input.addEventListener("input", apply);
  status.addEventListener("change", apply);
  document.addEventListener("lbsolo:refreshed", apply);
  apply();
}

function deployOutput(pre) {
  const state = document.getElementById("deploy-state");
  const source = new EventSource(pre.dataset.stream);
  source.onmessage = (event) => {
    const data = JSON.parse(event.data);
    if ("line" in data) {
      const stuck = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      const row = document.createElement("div");
      row.textContent = data.line;
      pre.append(row);
      if (stuck) pre.scrollTop = pre.scrollHeight;
      return;
    }
    source.close(); // the deploy ended: no reconnect that would replay it
    const result = data.result || {};
    state.dataset.state = result.ok ? "ok" : "failed";
    state.className = result.ok ? "ok" : "bad";
    state.textContent = result.ok ? `${result.release} is live` : `failed: ${(result.error || {}).message || "see the output"}`;
  };
}

function reloadWhenJobsEnd() {
  // Ask for the page again every 2 s (its fields left alone); once it shows no job running, reload it.
  const timer = setInterval(async () => {
    if (document.hidden) return;
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (!response.ok || response.redirected) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      if (page.querySelector("[data-job-running]")) return;
      clearInterval(timer);
      location.reload();
    } catch (e) {
      // The daemon may be restarting; the next tick tries again.
    }
  }, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  const pre = document.getElementById("logs");
  if (pre && window.EventSource) logTail(pre);
  const live = document.querySelector("[data-refresh]");
  if (live) refresh(live);
  const filter = document.getElementById("app-filter");
  if (filter) appFilters(filter, document.getElementById("status-filter"));
  const build = document.getElementById("deploy-output");
  if (build && window.EventSource) deployOutput(build);
  if (document.querySelector("[data-job-running]")) reloadWhenJobsEnd();
});
