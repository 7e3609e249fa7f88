/* VIVA label grid: one component for every labelling, review, retrieval and acquisition page.
 *
 * Reads the grid dict (annotation.grid.GridSpec.as_dict) from <script id="vgrid-data"> and
 * renders it into <section id="vgrid">. Labels change in the page only (optimistic UI);
 * "Save" (or the `s` key) posts ONE JSON batch of the changed items to grid.save_url:
 *   {"category": id, "source": "...", "labels": [{"key": "...", "value": 1|-1|0|null}]}
 * A failed save keeps every label in the page and offers a retry; nothing is ever dropped.
 *
 * Events for pages that embed the grid (dispatched on the section element):
 *   "vgrid:change" {key, value}   "vgrid:saved" {response}   "vgrid:failed" {message}
 * window.vivaGrid exposes {items, save, dirtyCount, setLabel} for such pages and tests.
 * Vanilla JS, no framework, no CDN: archives often run offline.
 */
(function () {
  "use strict";

  const root = document.getElementById("vgrid");
  const dataEl = document.getElementById("vgrid-data");
  if (!root || !dataEl) return;
  const grid = JSON.parse(dataEl.textContent);
  const items = grid.items || [];
  const readonly = !!grid.readonly;
  const csrf = root.dataset.csrf || readCookie("csrftoken");
  const rows = clampSize(grid.rows, 4);
  const cols = clampSize(grid.cols, 6);

  // Label values and how each is shown: colour (Okabe–Ito) + icon + border style.
  const LABELS = {
    1: { name: "pos", text: "positive", icon: "✓" },
    "-1": { name: "neg", text: "negative", icon: "✗" },
    0: { name: "neu", text: "neutral", icon: "?" },
    null: { name: "none", text: "no label", icon: "" },
  };
  const CYCLE = [null, 1, -1, 0]; // click: none → positive → negative → neutral → none

  const saved = new Map(); // key → value the server has
  const current = new Map(); // key → value shown in the page
  const rejected = new Map(); // key → {value, error} refused by the server
  items.forEach((it) => {
    const v = normalise(it.label);
    saved.set(it.key, v);
    current.set(it.key, v);
  });
  let cursor = 0;
  let saving = false;
  let leaving = false;
  let lastError = null;
  let videoStop = null;

  /* ------------------------------------------------------------------ helpers */

  function readCookie(name) {
    const m = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : "";
  }
  function clampSize(v, d) {
    const n = parseInt(v, 10);
    return isNaN(n) ? d : Math.min(10, Math.max(1, n));
  }
  function normalise(v) {
    return v === 1 || v === -1 || v === 0 ? v : null;
  }
  function info(v) {
    return LABELS[v === null ? "null" : String(v)];
  }
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    (children || []).forEach((c) => c && node.appendChild(typeof c === "string" ? document.createTextNode(c) : c));
    return node;
  }
  function isDirty(key) {
    if (current.get(key) === saved.get(key)) return false;
    const r = rejected.get(key);
    return !(r && r.value === current.get(key));
  }
  function dirtyKeys() {
    return items.map((it) => it.key).filter(isDirty);
  }
  function fmt(n) {
    return Number(n).toLocaleString("en-US");
  }
  function emit(name, detail) {
    root.dispatchEvent(new CustomEvent("vgrid:" + name, { detail, bubbles: true }));
  }

  /* ------------------------------------------------------------------ layout */

  root.textContent = "";
  root.style.setProperty("--cols", cols);
  const bar = el("div", { class: "vgrid-bar", role: "toolbar", "aria-label": "Grid tools" });
  const banner = el("div", { class: "vgrid-banner", role: "alert", hidden: true });
  const cellsBox = el("div", { class: "vgrid-cells", role: "list" });
  const pager = el("nav", { class: "vgrid-pages pagination", "aria-label": "Pages" });
  const status = el("span", { class: "vgrid-status", "aria-live": "polite" });
  root.append(bar, banner, cellsBox, pager);

  // Toolbar: bulk buttons, save + unsaved counter, rows × columns, shortcuts.
  if (!readonly) {
    const bulk = el("div", { class: "vgrid-group" }, [el("span", { class: "vgrid-label", text: "Whole page:" })]);
    [[1, "Positive"], [-1, "Negative"], [0, "Neutral"], [null, "Clear"]].forEach(([v, text]) => {
      bulk.appendChild(
        el("button", {
          type: "button",
          class: "vgrid-bulk lbl-btn " + info(v).name,
          "data-value": v === null ? "none" : v,
          title: v === null ? "Remove the labels of every image on this page" : `Label every image on this page ${info(v).text}`,
          onclick: () => labelPage(v),
        }, [info(v).icon ? el("span", { class: "icon", "aria-hidden": "true", text: info(v).icon }) : null, text])
      );
    });
    bar.appendChild(bulk);
    const saveGroup = el("div", { class: "vgrid-group" });
    saveGroup.appendChild(el("button", { type: "button", class: "primary vgrid-save", title: "Save the changed labels (s saves and goes to the next page)", onclick: () => save(false) }, ["Save"]));
    saveGroup.appendChild(el("span", { class: "vgrid-dirty", "aria-live": "polite" }));
    bar.appendChild(saveGroup);
  }
  const sizeGroup = el("div", { class: "vgrid-group vgrid-size" });
  const rowsSel = sizeSelect("Rows", rows);
  const colsSel = sizeSelect("Columns", cols);
  sizeGroup.append(rowsSel.label, el("span", { class: "times", text: "×" }), colsSel.label);
  bar.appendChild(sizeGroup);
  bar.appendChild(status);
  bar.appendChild(el("button", { type: "button", class: "vgrid-help-btn", title: "Keyboard shortcuts (?)", onclick: toggleHelp }, [el("kbd", { text: "?" }), " Keys"]));

  function sizeSelect(text, value) {
    const select = el("select", { "aria-label": text, class: "vgrid-" + text.toLowerCase(), onchange: changeSize });
    for (let i = 1; i <= 10; i++) select.appendChild(el("option", { value: i, selected: i === value, text: String(i) }));
    return { select, label: el("label", { class: "vgrid-size-label" }, [text + " ", select]) };
  }

  // Cells.
  const cells = items.map((it, i) => buildCell(it, i));
  cells.forEach((c) => cellsBox.appendChild(c));
  if (!items.length) {
    cellsBox.appendChild(el("p", { class: "vgrid-empty muted", text: grid.empty_message || "Nothing to show here." }));
  }

  function buildCell(it, i) {
    const media = el("div", { class: "vcell-media" }, [
      el("img", { src: it.thumb, alt: it.caption || "", loading: "lazy", decoding: "async", draggable: "false" }),
      el("span", { class: "vcell-badge", "aria-hidden": "true" }),
      el("span", { class: "vcell-flag", "aria-hidden": "true" }),
      it.video ? el("span", { class: "vcell-play", title: "Play the shot (space)", "aria-hidden": "true", text: "▶" }) : null,
    ]);
    const links = [];
    const similar = similarHref(it);
    if (similar) links.push(el("a", { href: similar, class: "vcell-link vcell-similar", title: "Find similar images (m)", "aria-label": "Find similar images", text: "≈" }));
    if (it.link) links.push(el("a", { href: it.link, class: "vcell-link", title: "Open in the archive", target: "_blank", rel: "noopener", text: "↗" }));
    const caption = el("figcaption", {}, [
      el("span", { class: "vcell-caption", title: it.caption || "", text: it.caption || "" }),
      it.extra ? el("span", { class: "vcell-extra", text: it.extra }) : null,
      ...links,
    ]);
    const cell = el("figure", { class: "vcell", role: "listitem", "data-key": it.key, "data-index": i }, [
      media,
      caption,
      el("div", { class: "vcell-error", role: "status" }),
    ]);
    media.addEventListener("click", (e) => onCellClick(e, i));
    links.forEach((a) => a.addEventListener("click", (e) => e.stopPropagation()));
    return cell;
  }

  // The item's "similar" link, sent to the page the template chose (data-similar-url:
  // the researcher's search on retrieval pages, the acquisition page elsewhere).
  function similarHref(it) {
    if (!it.similar_url) return "";
    const base = root.dataset.similarUrl;
    if (!base) return it.similar_url;
    const url = new URL(it.similar_url, window.location.href);
    return base + url.search;
  }

  function findSimilar(i) {
    const it = items[i];
    const href = it && similarHref(it);
    if (!href) {
      flash("This item has no similar-image search.");
      return;
    }
    const n = readonly ? 0 : dirtyKeys().length;
    if (n && !window.confirm(`${n} unsaved label(s) on this page will be lost. Search similar images anyway?`)) return;
    navigate(href);
  }

  function paint(i) {
    const it = items[i];
    const cell = cells[i] || document.querySelector(`.vcell[data-index="${i}"]`);
    if (!cell) return;
    const v = current.get(it.key);
    const lab = info(v);
    cell.dataset.label = lab.name;
    cell.querySelector(".vcell-badge").textContent = lab.icon;
    const dirty = isDirty(it.key);
    const rej = rejected.get(it.key);
    const isRejected = !!(rej && rej.value === v);
    cell.classList.toggle("dirty", dirty);
    cell.classList.toggle("saving", dirty && saving);
    cell.classList.toggle("failed", dirty && !saving && !!lastError);
    cell.classList.toggle("rejected", isRejected);
    cell.classList.toggle("cursor", i === cursor);
    const flag = cell.querySelector(".vcell-flag");
    flag.textContent = isRejected ? "not saved" : dirty ? (saving ? "saving…" : "unsaved") : "";
    const err = cell.querySelector(".vcell-error");
    err.textContent = isRejected ? rej.error : "";
    cell.setAttribute(
      "aria-label",
      `${it.caption || "image"}: ${lab.text}${dirty ? " (unsaved)" : ""}${isRejected ? " (not saved: " + rej.error + ")" : ""}`
    );
  }

  function paintAll() {
    items.forEach((_, i) => paint(i));
    updateCounter();
  }

  function updateCounter() {
    const n = dirtyKeys().length;
    const counter = root.querySelector(".vgrid-dirty");
    if (counter) {
      counter.textContent = n ? `${n} unsaved` : "All saved";
      counter.classList.toggle("has-changes", n > 0);
    }
    root.classList.toggle("has-unsaved", n > 0);
    root.dataset.unsaved = String(n);
  }

  /* ------------------------------------------------------------------ pagination */

  function renderPager() {
    const p = grid.page || {};
    pager.textContent = "";
    const total = p.total || 0;
    const range = items.length ? `${fmt(p.first_index || 1)}–${fmt(p.last_index || items.length)}` : "0";
    pager.appendChild(el("span", { class: "vgrid-count muted", text: `${range} of ${p.approximate ? "about " : ""}${fmt(total)}` }));
    pager.appendChild(p.prev_url ? el("a", { href: p.prev_url, rel: "prev", class: "vgrid-prev", text: "‹ Previous" }) : el("span", { class: "disabled", text: "‹ Previous" }));
    let last = 0;
    (p.page_urls || []).forEach(([n, url]) => {
      if (last && n > last + 1) pager.appendChild(el("span", { class: "gap", text: "…" }));
      pager.appendChild(n === p.number ? el("span", { class: "current", "aria-current": "page", text: String(n) }) : el("a", { href: url, text: String(n) }));
      last = n;
    });
    pager.appendChild(p.next_url ? el("a", { href: p.next_url, rel: "next", class: "vgrid-next", text: "Next ›" }) : el("span", { class: "disabled", text: "Next ›" }));
    pager.appendChild(el("span", { class: "muted", text: `page ${fmt(p.number || 1)} of ${fmt(p.num_pages || 1)}` }));
  }

  /* ------------------------------------------------------------------ labelling */

  function setLabel(i, value) {
    if (readonly || i < 0 || i >= items.length) return;
    const key = items[i].key;
    value = normalise(value);
    current.set(key, value);
    paint(i);
    updateCounter();
    emit("change", { key, value });
  }

  function cycle(i) {
    const v = current.get(items[i].key);
    setLabel(i, CYCLE[(CYCLE.indexOf(v) + 1) % CYCLE.length]);
  }

  function labelPage(value) {
    if (readonly) return;
    items.forEach((_, i) => setLabel(i, value));
    flash(value === null ? "Cleared the page." : `Labelled the page ${info(value).text}.`);
  }

  // `a`: the whole page steps through the cycle together (as in the original VIVA).
  function cyclePage() {
    if (!items.length) return;
    const values = items.map((it) => current.get(it.key));
    const same = values.every((v) => v === values[0]);
    labelPage(same ? CYCLE[(CYCLE.indexOf(values[0]) + 1) % CYCLE.length] : 1);
  }

  function onCellClick(e, i) {
    moveCursor(i, false);
    if (e.shiftKey || readonly) {
      openViewer(i, false);
      return;
    }
    cycle(i);
  }

  function moveCursor(i, scroll = true) {
    if (!items.length) return;
    const old = cursor;
    cursor = Math.max(0, Math.min(items.length - 1, i));
    paint(old);
    paint(cursor);
    if (scroll) cells[cursor].scrollIntoView({ block: "nearest", inline: "nearest" });
    if (viewer.open) showInViewer(cursor, false);
  }

  /* ------------------------------------------------------------------ saving */

  function showBanner(kind, message, withRetry) {
    banner.hidden = false;
    banner.className = "vgrid-banner " + kind;
    banner.textContent = "";
    banner.appendChild(el("span", { class: "vgrid-banner-text", text: message }));
    if (withRetry) banner.appendChild(el("button", { type: "button", class: "small primary vgrid-retry", onclick: () => save(false), text: "Retry" }));
    banner.appendChild(el("button", { type: "button", class: "small vgrid-dismiss", onclick: hideBanner, text: "Dismiss" }));
    fit();
  }
  function hideBanner() {
    if (banner.hidden) return;
    banner.hidden = true;
    fit();
  }
  let flashTimer = null;
  function flash(text) {
    status.textContent = text;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => (status.textContent = ""), 4000);
  }

  /** Save the changed labels in one request; resolves to true when all were stored. */
  async function save(thenNext) {
    if (readonly) return false;
    if (saving) {
      flash("Still saving…");
      return false;
    }
    const keys = dirtyKeys();
    if (!keys.length) {
      if (thenNext) goNext(true);
      else flash("Nothing to save.");
      return true;
    }
    const sent = keys.map((key) => ({ key, value: current.get(key) }));
    saving = true;
    lastError = null;
    paintAll();
    let response = null;
    let body = null;
    try {
      response = await fetch(grid.save_url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, Accept: "application/json" },
        body: JSON.stringify({ category: grid.category_id, source: grid.source, labels: sent }),
      });
      try {
        body = await response.json();
      } catch (_) {
        body = null;
      }
    } catch (_) {
      response = null;
    }
    saving = false;
    if (!response || !response.ok || !body) {
      let message;
      if (!response) message = "Could not reach the server.";
      else if (body && body.error) message = body.error;
      else if (response.status === 403) message = "Not allowed — perhaps you were logged out. Log in again in another tab.";
      else message = `The server answered with an error (HTTP ${response.status}).`;
      lastError = message;
      paintAll();
      showBanner("error", `Labels NOT saved: ${message} Your ${sent.length} change(s) are still in the page — retry when ready.`, true);
      emit("failed", { message, status: response ? response.status : 0 });
      return false;
    }
    const refused = new Map((body.rejected || []).map((r) => [String(r.key), r.error || "rejected"]));
    sent.forEach(({ key, value }) => {
      if (refused.has(key)) rejected.set(key, { value, error: refused.get(key) });
      else {
        saved.set(key, value);
        rejected.delete(key);
      }
    });
    hideBanner();
    paintAll();
    emit("saved", { response: body, sent });
    const n = sent.length - refused.size;
    if (refused.size) {
      showBanner("warning", `${refused.size} label(s) could not be saved (marked “not saved” in the grid): ${[...new Set(refused.values())].join(" ")}`, false);
      return false;
    }
    flash(body.message || `Saved ${n} label${n === 1 ? "" : "s"}.`);
    if (thenNext) goNext(true);
    return true;
  }

  function navigate(url) {
    leaving = true;
    window.location.href = url;
  }

  function goNext(afterSave) {
    const p = grid.page || {};
    const url = afterSave ? grid.save_next_url || p.next_url : p.next_url;
    if (url) navigate(url);
    else flash("This is the last page.");
  }

  function skipPage() {
    const n = dirtyKeys().length;
    if (!(grid.page || {}).next_url) {
      flash("This is the last page.");
      return;
    }
    if (n && !window.confirm(`${n} unsaved label(s) on this page will be lost. Go to the next page anyway?`)) return;
    goNext(false);
  }

  window.addEventListener("beforeunload", (e) => {
    if (leaving || readonly || !dirtyKeys().length) return;
    e.preventDefault();
    e.returnValue = "";
  });

  async function changeSize() {
    const newRows = parseInt(rowsSel.select.value, 10);
    const newCols = parseInt(colsSel.select.value, 10);
    if (!readonly && dirtyKeys().length && !(await save(false))) {
      rowsSel.select.value = rows;
      colsSel.select.value = cols;
      return;
    }
    const form = new URLSearchParams({ rows: newRows, cols: newCols });
    let ok = false;
    try {
      const r = await fetch(grid.prefs_url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrf, "Content-Type": "application/x-www-form-urlencoded" },
        body: form,
      });
      ok = r.ok;
    } catch (_) {
      ok = false;
    }
    if (!ok) {
      showBanner("error", "Could not store the grid size.", false);
      return;
    }
    // Stay near the first image of this page.
    const first = ((grid.page || {}).first_index || 1) - 1;
    const url = new URL(window.location.href);
    url.searchParams.delete("after");
    url.searchParams.set("page", String(Math.floor(first / (newRows * newCols)) + 1));
    navigate(url.toString());
  }

  /* ------------------------------------------------------------------ viewer & video */

  const viewer = { open: false, node: null, index: 0 };
  function buildViewer() {
    const close = el("button", { type: "button", class: "vgrid-close", title: "Close (Esc)", "aria-label": "Close", onclick: closeViewer, text: "×" });
    const node = el("div", { class: "vgrid-overlay vgrid-viewer", role: "dialog", "aria-modal": "true", "aria-label": "Full view", hidden: true }, [
      el("div", { class: "vgrid-viewer-box" }, [
        close,
        el("div", { class: "vgrid-viewer-media" }),
        el("div", { class: "vgrid-viewer-info" }),
      ]),
    ]);
    node.addEventListener("click", (e) => {
      if (e.target === node) closeViewer();
    });
    document.body.appendChild(node);
    viewer.node = node;
  }
  buildViewer();

  function openViewer(i, play) {
    viewer.open = true;
    viewer.node.hidden = false;
    showInViewer(i, play);
  }

  function showInViewer(i, play) {
    const it = items[i];
    if (!it) return;
    viewer.index = i;
    stopVideo();
    const media = viewer.node.querySelector(".vgrid-viewer-media");
    media.textContent = "";
    if (play && it.video) {
      const v = it.video;
      const video = el("video", { controls: true, autoplay: true, playsinline: true, preload: "auto", class: "vgrid-video", poster: it.full });
      video.src = `${v.src}#t=${Number(v.start).toFixed(3)},${Number(v.end).toFixed(3)}`;
      // The media fragment sets start and end; the timeupdate check makes sure playback
      // stops at the shot's end in every browser and when the user seeks past it.
      const onTime = () => {
        if (video.currentTime >= Number(v.end) - 0.02) {
          video.pause();
        }
      };
      video.addEventListener("loadedmetadata", () => {
        if (video.currentTime < Number(v.start) || video.currentTime > Number(v.end)) video.currentTime = Number(v.start);
        video.play().catch(() => {});
      });
      video.addEventListener("timeupdate", onTime);
      video.addEventListener("play", () => {
        if (video.currentTime >= Number(v.end) - 0.05) video.currentTime = Number(v.start);
      });
      videoStop = () => {
        video.removeEventListener("timeupdate", onTime);
        video.pause();
        video.removeAttribute("src");
        video.load();
      };
      media.appendChild(video);
    } else {
      media.appendChild(el("img", { src: it.full || it.thumb, alt: it.caption || "" }));
    }
    const lab = info(current.get(it.key));
    const infoBox = viewer.node.querySelector(".vgrid-viewer-info");
    infoBox.textContent = "";
    infoBox.append(
      el("span", { class: "lbl " + lab.name, text: lab.icon || "–" }),
      el("strong", { text: it.caption || "" }),
      it.extra ? el("span", { class: "muted", text: it.extra }) : "",
      el("span", { class: "muted", text: ` ${i + 1} / ${items.length} · ← → browse · 1/2/3/0 label · ${it.video ? "space plays the shot · " : ""}Esc closes` })
    );
    viewer.node.dataset.label = lab.name;
  }

  function stopVideo() {
    if (videoStop) {
      videoStop();
      videoStop = null;
    }
  }

  function closeViewer() {
    stopVideo();
    viewer.open = false;
    viewer.node.hidden = true;
    root.focus({ preventScroll: true });
  }

  /* ------------------------------------------------------------------ help overlay */

  const SHORTCUTS = [
    ["← → ↑ ↓", "move the cursor"],
    ["1", "cursor image positive"],
    ["2", "cursor image negative"],
    ["3", "cursor image neutral"],
    ["0", "remove the label of the cursor image"],
    ["click", "cycle: none → positive → negative → neutral → none"],
    ["a", "cycle the whole page"],
    ["s", "save and go to the next page"],
    ["d", "next page without saving (asks if labels are unsaved)"],
    ["f / shift+click", "full-screen view of the image (Esc closes)"],
    ["m / ≈", "find images similar to the cursor image"],
    ["space", "play the shot of a keyframe"],
    ["?", "show or hide this list"],
  ];
  const help = el("div", { class: "vgrid-overlay vgrid-help", role: "dialog", "aria-modal": "true", "aria-label": "Keyboard shortcuts", hidden: true }, [
    el("div", { class: "vgrid-help-box" }, [
      el("h2", { text: "Keyboard shortcuts" }),
      el("table", {}, [
        el("tbody", {}, SHORTCUTS.filter(([k]) => !readonly || !/^[0-3as]$|click/.test(k)).map(([k, t]) => el("tr", {}, [el("th", {}, [el("kbd", { text: k })]), el("td", { text: t })]))),
      ]),
      el("p", { class: "muted" }, [
        "Labels: ",
        el("span", { class: "lbl pos", text: "✓" }), " positive (blue, solid border) · ",
        el("span", { class: "lbl neg", text: "✗" }), " negative (orange, dashed) · ",
        el("span", { class: "lbl neu", text: "?" }), " neutral (grey, dotted)",
      ]),
      el("button", { type: "button", class: "vgrid-help-close", onclick: toggleHelp, text: "Close (Esc)" }),
    ]),
  ]);
  help.addEventListener("click", (e) => {
    if (e.target === help) toggleHelp();
  });
  document.body.appendChild(help);
  function toggleHelp() {
    help.hidden = !help.hidden;
  }

  /* ------------------------------------------------------------------ keyboard */

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.isContentEditable || /^(INPUT|SELECT|TEXTAREA)$/.test(t.tagName))) return;
    const key = e.key;
    if (!help.hidden) {
      if (key === "Escape" || key === "?") {
        e.preventDefault();
        toggleHelp();
      }
      return;
    }
    if (viewer.open) {
      const handled = {
        Escape: closeViewer,
        f: closeViewer,
        ArrowLeft: () => moveCursor(viewer.index - 1, false),
        ArrowUp: () => moveCursor(viewer.index - 1, false),
        ArrowRight: () => moveCursor(viewer.index + 1, false),
        ArrowDown: () => moveCursor(viewer.index + 1, false),
        " ": () => showInViewer(viewer.index, !videoStop),
        1: () => labelInViewer(1),
        2: () => labelInViewer(-1),
        3: () => labelInViewer(0),
        0: () => labelInViewer(null),
        "?": toggleHelp,
      }[key];
      if (handled) {
        e.preventDefault();
        handled();
      }
      return;
    }
    const actions = {
      ArrowLeft: () => moveCursor(cursor - 1),
      ArrowRight: () => moveCursor(cursor + 1),
      ArrowUp: () => moveCursor(cursor - cols),
      ArrowDown: () => moveCursor(cursor + cols),
      1: () => setLabel(cursor, 1),
      2: () => setLabel(cursor, -1),
      3: () => setLabel(cursor, 0),
      0: () => setLabel(cursor, null),
      a: cyclePage,
      s: () => (readonly ? goNext(false) : save(true)),
      d: skipPage,
      f: () => items.length && openViewer(cursor, false),
      m: () => items.length && findSimilar(cursor),
      " ": () => items.length && openViewer(cursor, true),
      "?": toggleHelp,
      Escape: hideBanner,
    };
    const action = actions[key];
    if (action) {
      e.preventDefault();
      action();
    }
  });

  function labelInViewer(value) {
    setLabel(viewer.index, value);
    showInViewer(viewer.index, false);
  }

  /* ------------------------------------------------------------------ sizing */

  // Fit rows × columns into the window so a whole page is visible without scrolling
  // (down to a minimum cell size; below that the page scrolls).
  function fit() {
    const width = cellsBox.clientWidth;
    const top = cellsBox.getBoundingClientRect().top + window.scrollY;
    const pagerH = pager.offsetHeight || 44;
    const gap = 8;
    const captionH = 34;
    const availH = window.innerHeight - top - pagerH - 24;
    const byWidth = (width - gap * (cols - 1)) / cols;
    const byHeight = ((availH - gap * (rows - 1)) / rows - captionH) * (4 / 3);
    const w = Math.max(110, Math.floor(Math.min(byWidth, byHeight)));
    root.style.setProperty("--cell-w", Math.min(w, Math.floor(byWidth)) + "px");
  }
  window.addEventListener("resize", fit);

  renderPager();
  paintAll();
  fit();
  root.classList.add("ready");

  window.vivaGrid = {
    grid,
    items,
    save,
    setLabel,
    labelPage,
    dirtyCount: () => dirtyKeys().length,
    label: (key) => current.get(key),
  };
})();
