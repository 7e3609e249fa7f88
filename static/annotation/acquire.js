/* Acquisition pages: progress of the background downloads started by saving labels on the
 * web search page. The grid dispatches "vgrid:saved" with the save response; when the
 * response names a job, a row with a progress bar is added and polled (jobs:status) until
 * the job ends, then its summary and per-URL errors are shown.
 * Vanilla JS, no CDN (archives often run offline).
 */
(function () {
  "use strict";

  const box = document.getElementById("acquire-downloads");
  if (!box) return;
  const list = box.querySelector(".download-list");
  const statusUrl = (id) => box.dataset.statusUrl.replace(/\/0\/status\/$/, "/" + id + "/status/");
  const polling = new Set();

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text) node.textContent = text;
    return node;
  }

  function rowFor(job) {
    let row = list.querySelector('[data-job-id="' + job.id + '"]');
    if (row) return row;
    row = el("li", "download-job");
    row.dataset.jobId = job.id;
    row.dataset.active = "1";
    const link = el("a", null, job.title || "Download #" + job.id);
    link.href = job.detail_url;
    const status = el("span", "status queued", "Queued");
    status.dataset.field = "status";
    const progress = el("div", "progress indeterminate");
    progress.dataset.field = "progress";
    progress.setAttribute("role", "progressbar");
    progress.setAttribute("aria-valuemin", "0");
    progress.setAttribute("aria-valuemax", "100");
    progress.append(el("div", "bar"), el("span", "text", "…"));
    const result = el("div", "muted download-result");
    result.dataset.field = "result";
    const errors = el("ul", "errors-list download-errors");
    errors.dataset.field = "errors";
    errors.hidden = true;
    row.append(link, " ", status, progress, result, errors);
    list.prepend(row);
    box.hidden = false;
    return row;
  }

  function paint(row, s) {
    const status = row.querySelector("[data-field=status]");
    status.className = "status " + s.status;
    status.textContent = s.status_label;
    const bar = row.querySelector("[data-field=progress]");
    const pct = s.percent;
    bar.classList.toggle("indeterminate", s.active && pct == null);
    bar.querySelector(".bar").style.width = (pct == null ? (s.active ? 0 : 100) : pct).toFixed(1) + "%";
    bar.setAttribute("aria-valuenow", pct == null ? 0 : Math.round(pct));
    bar.querySelector(".text").textContent =
      pct != null ? Math.round(pct) + "% (" + s.progress + " / " + s.total + ")" : s.active ? "…" : "";
    const result = s.result || {};
    row.querySelector("[data-field=result]").textContent = s.error || result.summary || s.note || "";
    const errors = row.querySelector("[data-field=errors]");
    const list = result.errors || [];
    errors.textContent = "";
    list.slice(0, 50).forEach((e) => errors.appendChild(el("li", null, (e.url || e.file) + ": " + e.error)));
    errors.hidden = !list.length;
    row.dataset.active = s.active ? "1" : "0";
  }

  function poll(id) {
    if (polling.has(id)) return;
    polling.add(id);
    const tick = () => {
      fetch(statusUrl(id), { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
        .then((s) => {
          const row = list.querySelector('[data-job-id="' + id + '"]');
          if (row) paint(row, s);
          if (s.active) setTimeout(tick, 1000);
          else polling.delete(id);
        })
        .catch(() => setTimeout(tick, 3000));
    };
    tick();
  }

  document.addEventListener("vgrid:saved", (event) => {
    const job = event.detail && event.detail.response && event.detail.response.job;
    if (!job) return;
    rowFor(job);
    poll(String(job.id));
  });

  list.querySelectorAll('.download-job[data-active="1"]').forEach((row) => poll(row.dataset.jobId));
})();
