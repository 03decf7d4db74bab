// The review console's only script (no third-party code). Pages work without it except for the
// live updates, drag and drop, and relabelling from the gallery.
"use strict";

// Times arrive as ISO (UTC); people read them in their own time zone, to the minute.
function localTimes(root) {
  root.querySelectorAll("time[datetime]").forEach((element) => {
    const moment = new Date(element.getAttribute("datetime"));
    if (!Number.isNaN(moment.getTime())) {
      element.textContent = moment.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
      element.title = element.getAttribute("datetime");
    }
  });
}

// A poll that meets 401 stops for good and says so: polling on would only fail every few seconds, silently.
function sessionEnded() {
  if (document.getElementById("session-ended")) return;
  const notice = document.createElement("p");
  notice.id = "session-ended";
  notice.className = "session-ended";
  notice.setAttribute("role", "alert");
  notice.append("Session ended — ");
  const link = document.createElement("a");
  link.href = "/ui/login?next=" + encodeURIComponent(window.location.pathname + window.location.search);
  link.textContent = "log in again";
  notice.append(link);
  document.querySelector("main").prepend(notice);
}

function liveRows() {
  const body = document.getElementById("sample-rows");
  if (!body) return;
  const timer = setInterval(async () => {
    const response = await fetch(body.dataset.live, { headers: { "X-Requested-With": "console" } });
    if (response.status === 401) {
      clearInterval(timer);
      sessionEnded();
    } else if (response.ok) {
      body.innerHTML = await response.text();  // server-rendered, escaped HTML
      localTimes(body);
    }
  }, 3000);
}

function waitForReport() {
  const sample = document.getElementById("sample");
  if (!sample || !["queued", "running"].includes(sample.dataset.status)) return;
  const poll = async () => {
    const response = await fetch(sample.dataset.state, { headers: { "X-Requested-With": "console" } });
    if (response.status === 401) { sessionEnded(); return; }
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
  // Up and down go to the cell above or below as the gallery is laid out (the nearest one in the next row,
  // which may be the next group's); left and right to the previous or next cell.
  const vertical = (cell, down) => {
    const from = cell.getBoundingClientRect();
    const rows = cells.map((other) => [other, other.getBoundingClientRect()])
      .filter(([, box]) => (down ? box.top >= from.bottom - 1 : box.bottom <= from.top + 1));
    if (!rows.length) return cell;
    const nextTop = down ? Math.min(...rows.map(([, box]) => box.top)) : Math.max(...rows.map(([, box]) => box.top));
    const centre = (box) => box.left + box.width / 2;
    return rows.filter(([, box]) => box.top === nextTop)
      .reduce((best, entry) => (Math.abs(centre(entry[1]) - centre(from)) < Math.abs(centre(best[1]) - centre(from)) ? entry : best))[0];
  };
  cells.forEach((cell, index) => {
    cell.addEventListener("click", () => open(cell));
    cell.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (step) {
        event.preventDefault();
        cells[Math.min(cells.length - 1, Math.max(0, index + step))].focus();
      } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        vertical(cell, event.key === "ArrowDown").focus();
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

// What was typed in a form survives an error page: it is kept (never passwords or files) when the form is
// sent, the error page marks it as not saved, and the form's page fills it in again on the way back.
const DRAFTS = "bloodcell-drafts";

function drafts() {
  const kept = JSON.parse(sessionStorage.getItem(DRAFTS) || "{}");
  const here = window.location.pathname;
  if (document.getElementById("go-back")) {
    kept.failed = true;
    sessionStorage.setItem(DRAFTS, JSON.stringify(kept));
    document.getElementById("go-back").addEventListener("click", () => window.history.back());
    return;
  }
  if (kept.failed && kept.page === here) {
    Object.entries(kept.forms || {}).forEach(([formId, values]) => {
      const form = document.getElementById(formId);
      if (!form) return;
      Object.entries(values).forEach(([name, value]) => {
        const field = form.elements.namedItem(name);
        if (field && "value" in field) field.value = value;
      });
    });
  }
  sessionStorage.removeItem(DRAFTS);
  document.querySelectorAll("form[id]").forEach((form) => {
    form.addEventListener("submit", () => {
      const values = {};
      Array.from(form.elements).forEach((field) => {
        if (field.name && field.name !== "csrf_token" && !["password", "file", "hidden", "submit", "radio"].includes(field.type)) {
          values[field.name] = field.value;
        }
      });
      sessionStorage.setItem(DRAFTS, JSON.stringify({ page: here, forms: { [form.id]: values } }));
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  drafts();
  liveRows();
  waitForReport();
  dropZone();
  gallery();
});
