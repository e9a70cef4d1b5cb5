// warden console: times in the viewer's zone, and the inbox's live list.
// Every decision works without this script; it only saves reloads.
"use strict";

function localTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) {
      t.textContent = d.toLocaleString();
    }
  }
}

function busy(list) {
  const active = document.activeElement;
  if (active && list.contains(active) && active.tagName !== "BODY") {
    return true;
  }
  for (const input of list.querySelectorAll("input[type=text]")) {
    if (input.value) {
      return true;
    }
  }
  return false;
}

async function refresh() {
  const list = document.getElementById("pending");
  const live = document.getElementById("live");
  if (!list) {
    return;
  }
  if (busy(list)) {
    live.textContent = "The requests changed. ";
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Show them";
    button.addEventListener("click", () => { live.textContent = ""; load(); });
    live.appendChild(button);
    return;
  }
  await load();
}

async function load() {
  const query = new URLSearchParams(location.search);
  query.delete("done");
  query.set("part", "list");
  const response = await fetch("/console/approvals?" + query, { credentials: "same-origin" });
  if (!response.ok) {
    return;
  }
  const html = await response.text();
  const list = document.getElementById("pending");
  const holder = document.createElement("div");
  holder.innerHTML = html;
  const fresh = holder.querySelector("#pending");
  if (list && fresh) {
    list.replaceWith(fresh);
    localTimes(fresh);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  if (document.getElementById("pending") && window.EventSource) {
    const events = new EventSource("/console/events");
    events.addEventListener("approvals", refresh);
  }
});
