/* VIVA person labelling: the face-cluster page and the face preview of the face grids.
 *
 * 1. Preview (every person page): resting the pointer on a face crop — a grid cell of
 *    the face grid (items from <script id="vgrid-data">, with `box` and `size`) or a
 *    sample of a cluster card — shows the whole image with the face framed.
 * 2. Cluster page (<script id="fc-data">): one key labels a WHOLE cluster
 *      j / k / ↓ / ↑  move between clusters      1 / p  positive    2 / n  negative
 *      3 / u  neutral    0  remove the cluster's labels    Enter  open the cluster's faces
 *    Labels are posted as JSON to the page's own URL (action "label"); on success the
 *    card's counts update and the cursor moves on; a failure keeps the page as it was and
 *    says why. "Cluster again" asks first when it would replace clusters, and a running
 *    face detection / clustering job shows a live progress bar; the page reloads when
 *    it ends.
 * The label grid itself (static/annotation/grid.js) does the face grid's keys and saving.
 */
(function () {
  "use strict";

  function readCookie(name) {
    const m = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : "";
  }
  function readJson(id) {
    const node = document.getElementById(id);
    if (!node) return null;
    try {
      return JSON.parse(node.textContent);
    } catch (_) {
      return null;
    }
  }

  /* ------------------------------------------------------------------ preview */

  const preview = document.createElement("div");
  preview.className = "fc-preview";
  preview.hidden = true;
  preview.setAttribute("aria-hidden", "true");
  const previewImg = document.createElement("img");
  previewImg.alt = "";
  const previewBox = document.createElement("div");
  previewBox.className = "fc-preview-box";
  const previewFrame = document.createElement("div");
  previewFrame.className = "fc-preview-frame";
  previewFrame.append(previewImg, previewBox);
  preview.appendChild(previewFrame);
  document.body.appendChild(preview);

  const MAX_W = 420;
  const MAX_H = 340;

  /** Show ``full`` near ``anchor`` with ``box`` ([x1, y1, x2, y2] of a w × h image) framed. */
  function showPreview(anchor, full, box, w, h) {
    if (!full) return;
    w = Number(w) || 0;
    h = Number(h) || 0;
    const scale = w && h ? Math.min(MAX_W / w, MAX_H / h, 4) : 1;
    const width = w && h ? Math.round(w * scale) : MAX_W;
    const height = w && h ? Math.round(h * scale) : null;
    previewFrame.style.width = width + "px";
    previewFrame.style.height = height ? height + "px" : "auto";
    if (previewImg.getAttribute("src") !== full) previewImg.src = full;
    if (box && box.length === 4 && w && h) {
      previewBox.hidden = false;
      previewBox.style.left = (100 * box[0]) / w + "%";
      previewBox.style.top = (100 * box[1]) / h + "%";
      previewBox.style.width = (100 * (box[2] - box[0])) / w + "%";
      previewBox.style.height = (100 * (box[3] - box[1])) / h + "%";
    } else {
      previewBox.hidden = true;
    }
    preview.hidden = false;
    const r = anchor.getBoundingClientRect();
    const pw = preview.offsetWidth;
    const ph = preview.offsetHeight;
    let left = r.right + 10;
    if (left + pw > window.innerWidth - 8) left = Math.max(8, r.left - pw - 10);
    let top = Math.min(Math.max(8, r.top), Math.max(8, window.innerHeight - ph - 8));
    preview.style.left = left + "px";
    preview.style.top = top + "px";
  }
  function hidePreview() {
    preview.hidden = true;
  }

  // Face grid cells (the grid renders them; delegation works whenever that happens).
  const grid = readJson("vgrid-data");
  const byKey = new Map(((grid && grid.items) || []).map((it) => [String(it.key), it]));
  document.addEventListener("mouseover", (e) => {
    const media = e.target.closest && e.target.closest(".vcell-media");
    if (media) {
      const cell = media.closest(".vcell");
      const it = cell && byKey.get(cell.dataset.key);
      if (it) showPreview(media, it.full, it.box, (it.size || [])[0], (it.size || [])[1]);
      return;
    }
    const sample = e.target.closest && e.target.closest(".fc-sample");
    if (sample) {
      let box = null;
      try {
        box = JSON.parse(sample.dataset.box || "null");
      } catch (_) {
        box = null;
      }
      showPreview(sample, sample.dataset.full, box, sample.dataset.width, sample.dataset.height);
    }
  });
  document.addEventListener("mouseout", (e) => {
    const from = e.target.closest && e.target.closest(".vcell-media, .fc-sample");
    if (from && !(e.relatedTarget && from.contains(e.relatedTarget))) hidePreview();
  });
  window.addEventListener("scroll", hidePreview, { passive: true });
  document.addEventListener("keydown", hidePreview, true);

  /* ------------------------------------------------------------------ cluster page */

  const data = readJson("fc-data");
  if (!data) return;
  const csrf = readCookie("csrftoken") || (document.querySelector("[name=csrfmiddlewaretoken]") || {}).value || "";
  const cards = Array.from(document.querySelectorAll(".fc-card"));
  const errorBox = document.querySelector(".fc-error");
  const flashBox = document.querySelector(".fc-flash");
  let cursor = 0;
  let busy = false;

  function showError(message) {
    if (!errorBox) return;
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }
  let flashTimer = null;
  function flash(message) {
    if (!flashBox) return;
    flashBox.textContent = message;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => (flashBox.textContent = ""), 6000);
  }

  function moveTo(i, scroll) {
    if (!cards.length) return;
    cursor = Math.max(0, Math.min(cards.length - 1, i));
    cards.forEach((c, j) => c.classList.toggle("cursor", j === cursor));
    if (scroll !== false) {
      cards[cursor].scrollIntoView({ block: "nearest" });
      cards[cursor].focus({ preventScroll: true });
    }
  }

  function paintCounts(card, answer) {
    const counts = answer.counts || {};
    Object.keys(counts).forEach((k) => {
      const node = card.querySelector(`[data-count="${k}"]`);
      if (node) node.textContent = counts[k];
    });
    card.dataset.state = answer.state || "none";
  }

  /** Label every face of ``card``'s cluster; resolves to true when the server stored it. */
  async function labelCluster(card, value) {
    if (busy) {
      flash("Still saving the previous cluster…");
      return false;
    }
    busy = true;
    card.classList.add("saving");
    let response = null;
    let body = null;
    try {
      response = await fetch(data.url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrf },
        body: JSON.stringify({ category: data.category, action: "label", cluster: Number(card.dataset.number), version: card.dataset.version, value }),
      });
      try {
        body = await response.json();
      } catch (_) {
        body = null;
      }
    } catch (_) {
      response = null;
    }
    busy = false;
    card.classList.remove("saving");
    if (!response || !response.ok || !body) {
      let message = "Could not reach the server.";
      if (body && body.error) message = body.error;
      else if (response && response.status === 403) message = "Not allowed — perhaps you were logged out. Log in again in another tab.";
      else if (response) message = `The server answered with an error (HTTP ${response.status}).`;
      showError(`Cluster ${card.dataset.number} was NOT labelled: ${message}`);
      card.classList.add("failed");
      return false;
    }
    card.classList.remove("failed");
    showError("");
    paintCounts(card, body);
    flash(body.message || "Saved.");
    card.dispatchEvent(new CustomEvent("fc:labelled", { detail: body, bubbles: true }));
    return true;
  }

  async function labelCursor(value) {
    const card = cards[cursor];
    if (!card) return;
    if (await labelCluster(card, value)) moveTo(cursor + 1);
  }

  cards.forEach((card, i) => {
    card.addEventListener("click", (e) => {
      if (e.target.closest("a")) return;
      moveTo(i, false);
    });
    const form = card.querySelector("form.fc-buttons");
    if (form) {
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        const raw = e.submitter ? e.submitter.value : "none";
        const value = raw === "none" ? null : Number(raw);
        moveTo(i, false);
        if (await labelCluster(card, value)) moveTo(i + 1);
      });
    }
  });

  // "Cluster again" replaces the clusters: ask first (labels stay on the faces).
  document.querySelectorAll("form.fc-action[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (e) => {
      if (!window.confirm(form.dataset.confirm)) e.preventDefault();
    });
  });

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.isContentEditable || /^(INPUT|SELECT|TEXTAREA)$/.test(t.tagName))) return;
    // Enter and space keep their meaning on a focused button or link.
    if (t && /^(BUTTON|A)$/.test(t.tagName) && (e.key === "Enter" || e.key === " ")) return;
    if (!cards.length) return;
    const actions = {
      j: () => moveTo(cursor + 1),
      ArrowDown: () => moveTo(cursor + 1),
      ArrowRight: () => moveTo(cursor + 1),
      k: () => moveTo(cursor - 1),
      ArrowUp: () => moveTo(cursor - 1),
      ArrowLeft: () => moveTo(cursor - 1),
      Home: () => moveTo(0),
      End: () => moveTo(cards.length - 1),
      1: () => labelCursor(1),
      p: () => labelCursor(1),
      2: () => labelCursor(-1),
      n: () => labelCursor(-1),
      3: () => labelCursor(0),
      u: () => labelCursor(0),
      0: () => labelCursor(null),
      Enter: () => {
        window.location.href = cards[cursor].dataset.facesUrl;
      },
    };
    const action = actions[e.key];
    if (action) {
      e.preventDefault();
      action();
    }
  });
  moveTo(0, false);

  /* ------------------------------------------------------------------ running job */

  const statusBox = document.getElementById("fc-status");
  const jobBox = statusBox && statusBox.querySelector(".fc-job");
  function watch(url) {
    if (!url || !jobBox) return;
    jobBox.hidden = false;
    const bar = jobBox.querySelector("[data-field=progress]");
    const tick = () => {
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then((r) => {
          if (!r.ok) throw new Error("HTTP " + r.status);
          return r.json();
        })
        .then((s) => {
          if (window.VIVA && window.VIVA.paintProgress) window.VIVA.paintProgress(bar, s);
          const title = jobBox.querySelector(".fc-job-title");
          if (title) title.textContent = `${s.title}: ${s.status_label}${s.note ? " · " + s.note : ""}`;
          if (s.active) {
            setTimeout(tick, 1000);
          } else if (s.status === "failed" || s.status === "cancelled") {
            showError(`${s.title} ${s.status_label.toLowerCase()}: ${s.error || "see the job's details."}`);
          } else if (s.kind === "index_faces" && data.auto_cluster) {
            clusterThenReload();
          } else {
            window.location.reload();
          }
        })
        .catch(() => setTimeout(tick, 3000));
    };
    tick();
  }
  // Face detection is done and there are no clusters yet: group the faces right away.
  function clusterThenReload() {
    fetch(data.url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrf },
      body: JSON.stringify({ category: data.category, action: "cluster" }),
    })
      .catch(() => null)
      .finally(() => window.location.reload());
  }
  watch(data.job_status_url);
  window.vivaClusters = { labelCluster, moveTo, cursor: () => cursor };
})();
