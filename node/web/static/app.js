"use strict";
// Fills the page from /api/status and refreshes it every few seconds.

function formatDuration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  return `${m} min ${s % 60} s`;
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const res = await fetch("/api/status", { cache: "no-store" });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const st = await res.json();
    document.getElementById("node-id").textContent = st.node_id;
    document.getElementById("version").textContent = st.version;
    document.getElementById("uptime").textContent = formatDuration(st.uptime_s);
    document.getElementById("name").textContent = st.name;
    error.hidden = true;
  } catch (e) {
    error.textContent = `Cannot reach the agent: ${e.message}`;
    error.hidden = false;
  }
}

refresh();
setInterval(refresh, 5000);
