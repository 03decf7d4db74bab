// The review console's only script (no third-party code). Pages work without it except for the
// live updates, drag and drop, and relabelling from the gallery.
"use strict";

function liveRows() {
  const body = document.getElementById("sample-rows");
  if (!body) return;
  setInterval(async () => {
    const response = await fetch(body.dataset.live, { headers: { "X-Requested-With": "console" } });
    if (response.ok) body.innerHTML = await response.text();  // server-rendered, escaped HTML
  }, 3000);
}

function waitForReport() {
  const sample = document.getElementById("sample");
  if (!sample || !["queued", "running"].includes(sample.dataset.status)) return;
  const poll = async () => {
    const response = await fetch(sample.dataset.state, { headers: { "X-Requested-With": "console" } });
    if (response.ok) {
      const state = await response.json();
      if (state.status !== sample.dataset.status) { window.location.reload(); return; }
    }
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 1000);
}

function dropZone() {
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("files");
  if (!zone || !input) return;
  const show = () => {
    document.getElementById("chosen").textContent = input.files.length ? `${input.files.length} file(s) chosen` : "";
  };
  input.addEventListener("change", show);
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    input.files = event.dataTransfer.files;
    show();
  });
}

function gallery() {
  const form = document.getElementById("relabel-form");
  const cells = Array.from(document.querySelectorAll("button.cell"));
  if (!form || !cells.length) return;
  const select = document.getElementById("relabel-label");
  const reason = document.getElementById("relabel-reason");
  const open = (cell, label) => {
    form.action = form.dataset.action + cell.dataset.sha + "/label";
    document.getElementById("relabel-name").textContent = cell.dataset.name;
    select.value = label || cell.dataset.label;
    form.hidden = false;
    form.dataset.cell = cell.id;
    reason.focus();
  };
  const close = () => {
    form.hidden = true;
    const cell = document.getElementById(form.dataset.cell || "");
    if (cell) cell.focus();
  };
  cells.forEach((cell, index) => {
    cell.addEventListener("click", () => open(cell));
    cell.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[event.key];
      if (step) {
        event.preventDefault();
        cells[Math.min(cells.length - 1, Math.max(0, index + step))].focus();
      } else if (/^[1-9]$/.test(event.key) && select.options[Number(event.key) - 1]) {
        event.preventDefault();
        open(cell, select.options[Number(event.key) - 1].value);
      }
    });
  });
  document.getElementById("relabel-cancel").addEventListener("click", close);
  form.addEventListener("keydown", (event) => { if (event.key === "Escape") close(); });
  const target = window.location.hash && document.getElementById(window.location.hash.slice(1));
  (target && target.classList.contains("cell") ? target : cells[0]).focus();
}

document.addEventListener("DOMContentLoaded", () => {
  liveRows();
  waitForReport();
  dropZone();
  gallery();
});
