/* Shared pieces of the training pages: confirmations, client-side table sorting, and two
   small Chart.js plugins of our own (a threshold line, an "empty chart" text), so no chart
   add-on library has to be vendored. Exposed as window.VIVA.training. */
(function () {
  'use strict';

  const COLORS = {
    pos: '#0072b2', neg: '#d55e00', neu: '#a0a0a0', posLow: '#9cc3dd',
    blue: '#2f80ed', orange: '#e07b00', green: '#1b7f3b', purple: '#7b4fc9', grey: '#7a8594',
    bad: '#b3261e', newBar: '#2f80ed', oldBar: '#b8c2cf',
  };

  /** Forms with data-confirm ask first (cancel a run, activate an old model). Runs in the
      capture phase, before any page handler, so a "No" stops everything. */
  document.addEventListener('submit', (event) => {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  /** <select data-autosubmit> submits its form on change (version pickers). */
  document.addEventListener('change', (event) => {
    const el = event.target;
    if (el instanceof HTMLSelectElement && el.hasAttribute('data-autosubmit') && el.form) el.form.submit();
  });

  /** A vertical or horizontal dashed line at a value of the value axis, with a label:
      options.plugins.thresholdLine = {value, label, color, axis: 'x'|'y'}. */
  const thresholdLine = {
    id: 'thresholdLine',
    afterDatasetsDraw(chart, _args, opts) {
      if (!opts || opts.value == null) return;
      const axis = opts.axis || (chart.options.indexAxis === 'y' ? 'x' : 'y');
      const scale = chart.scales[axis];
      if (!scale) return;
      const px = scale.getPixelForValue(opts.value);
      const area = chart.chartArea;
      const { ctx } = chart;
      ctx.save();
      ctx.strokeStyle = opts.color || COLORS.bad;
      ctx.fillStyle = opts.color || COLORS.bad;
      ctx.lineWidth = 2;
      ctx.setLineDash([6, 4]);
      ctx.beginPath();
      if (axis === 'x') {
        if (px < area.left || px > area.right) { ctx.restore(); return; }
        ctx.moveTo(px, area.top); ctx.lineTo(px, area.bottom);
      } else {
        if (px < area.top || px > area.bottom) { ctx.restore(); return; }
        ctx.moveTo(area.left, px); ctx.lineTo(area.right, px);
      }
      ctx.stroke();
      ctx.setLineDash([]);
      if (opts.label) {
        ctx.font = '600 12px system-ui, sans-serif';
        const width = ctx.measureText(opts.label).width;
        let x, y;
        if (axis === 'x') {
          // Above the plot when the chart left room for it (layout.padding.top), so the
          // label does not cover the first bar.
          x = px + 6; y = area.top >= 18 ? area.top - 5 : area.top + 14;
          if (x + width > area.right) { x = px - 6 - width; }
        } else {
          x = area.right - width - 4; y = px - 6;
        }
        ctx.fillStyle = 'rgba(255,255,255,.85)';
        ctx.fillRect(x - 3, y - 12, width + 6, 16);
        ctx.fillStyle = opts.color || COLORS.bad;
        ctx.fillText(opts.label, x, y);
      }
      ctx.restore();
    },
  };

  /** Writes options.plugins.emptyText.text in the middle of a chart without data points. */
  const emptyText = {
    id: 'emptyText',
    afterDraw(chart, _args, opts) {
      if (!opts || !opts.text) return;
      const hasData = chart.data.datasets.some((d) => d.data && d.data.length);
      if (hasData) return;
      const { ctx, chartArea: a } = chart;
      ctx.save();
      ctx.fillStyle = '#7a8594';
      ctx.font = '13px system-ui, sans-serif';
      ctx.textAlign = 'center';
      ctx.fillText(opts.text, (a.left + a.right) / 2, (a.top + a.bottom) / 2);
      ctx.restore();
    },
  };

  if (typeof Chart !== 'undefined') {
    Chart.register(thresholdLine, emptyText);
    Chart.defaults.font.family = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
    Chart.defaults.color = '#4a5563';
  }

  /** Sortable table: <th data-sort="key" data-type="num|text">, rows with data-<key>.
      Clicking a header sorts by it (again: reverses). onSort(key, dir) lets a page re-order
      its chart the same way. Empty values sort last in both directions. */
  function sortableTable(table, onSort) {
    if (!table) return null;
    const tbody = table.tBodies[0];
    let state = { key: null, dir: 1 };
    function compare(key, type, dir) {
      return (a, b) => {
        const va = a.dataset[key], vb = b.dataset[key];
        const ea = va === undefined || va === '', eb = vb === undefined || vb === '';
        if (ea || eb) return ea === eb ? 0 : (ea ? 1 : -1);
        if (type === 'num') return dir * (parseFloat(va) - parseFloat(vb));
        return dir * va.localeCompare(vb, undefined, { sensitivity: 'base', numeric: true });
      };
    }
    function sortBy(key, dir) {
      const th = table.querySelector('th[data-sort="' + key + '"]');
      if (!th) return;
      const type = th.dataset.type || 'text';
      if (dir == null) dir = state.key === key ? -state.dir : (type === 'num' ? -1 : 1);
      state = { key, dir };
      const rows = Array.from(tbody.rows).sort(compare(key, type, dir));
      rows.forEach((r) => tbody.appendChild(r));
      table.querySelectorAll('th[data-sort]').forEach((h) => {
        h.setAttribute('aria-sort', h === th ? (dir > 0 ? 'ascending' : 'descending') : 'none');
      });
      if (onSort) onSort(key, dir, rows);
    }
    table.querySelectorAll('th[data-sort]').forEach((th) => {
      th.classList.add('sortable');
      th.tabIndex = 0;
      th.addEventListener('click', () => sortBy(th.dataset.sort));
      th.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sortBy(th.dataset.sort); } });
    });
    return { sortBy, state: () => state };
  }

  function readJson(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function csrfToken() {
    const input = document.querySelector('input[name=csrfmiddlewaretoken]');
    return input ? input.value : '';
  }

  // Poll a job's status into render(state) while it is active, and cancel it in place
  // (the cancel form's confirmation runs first; without JavaScript the form still works).
  function watchJob(root, render) {
    let timer = null;
    function tick() {
      timer = null;
      fetch(root.dataset.statusUrl, { headers: { Accept: 'application/json' } })
        .then((r) => { if (!r.ok) throw new Error('HTTP ' + r.status); return r.json(); })
        .then((s) => {
          render(s);
          root.dataset.status = s.status;
          if (s.active) timer = setTimeout(tick, 1000);
        })
        .catch(() => { timer = setTimeout(tick, 3000); });
    }
    const cancel = root.querySelector('[data-action=cancel]');
    if (cancel) {
      cancel.addEventListener('submit', (event) => {
        if (event.defaultPrevented) return;  // the confirmation said no
        event.preventDefault();
        cancel.querySelector('button').disabled = true;
        fetch(cancel.action, {
          method: 'POST', headers: { Accept: 'application/json', 'X-CSRFToken': csrfToken() },
          body: new FormData(cancel),
        }).then((r) => {
          if (!r.ok) throw new Error('HTTP ' + r.status);
          if (!timer) tick();
        }).catch(() => cancel.submit())
          .finally(() => { cancel.querySelector('button').disabled = false; });
      });
    }
    tick();
  }

  /** The ETA from the recent throughput (mean of the last 5 points of the metric ``key``,
      items/s) when there is one: the job's linear ETA is wrong when a resumed job starts
      with work done before. Falls back to the job's own ETA. */
  function rateEta(s, key) {
    const rates = (s.metrics || {})[key] || [];
    if (!s.active || !s.total || !rates.length) return window.VIVA.fmtEta(s.active ? s.eta_seconds : null);
    const recent = rates.slice(-5).map((p) => p[1]);
    const rate = recent.reduce((a, b) => a + b, 0) / recent.length;
    return rate > 0 ? window.VIVA.fmtEta((s.total - s.progress) / rate) : '';
  }

  /** What every job card (#run) shows alike: status, progress bar, ETA, note, failure,
      cancelled/done with the summary, the cancel button and the log (kept scrolled to the
      end when the reader was there). ``eta`` is the text for the ETA field. */
  function paintRun(root, s, eta) {
    const q = (name) => root.querySelector('[data-field="' + name + '"]');
    const show = (name, visible) => { const el = q(name); if (el) el.hidden = !visible; };
    const status = q('status');
    status.className = 'status ' + s.status;
    status.textContent = s.status_label;
    const progress = root.querySelector('.run-progress [data-field=progress]');
    if (progress) window.VIVA.paintProgress(progress, s);
    if (q('eta')) q('eta').textContent = eta == null ? window.VIVA.fmtEta(s.active ? s.eta_seconds : null) : eta;
    q('note').textContent = s.note || '';
    show('note', s.active);
    show('failed', s.status === 'failed');
    q('error').textContent = s.error || '';
    show('cancelled', s.status === 'cancelled');
    show('done', s.status === 'succeeded');
    if (s.result && s.result.summary) q('summary').textContent = s.result.summary;
    const cancel = root.querySelector('[data-action=cancel]');
    if (cancel) cancel.hidden = !s.active || s.status === 'cancelling';
    const log = q('log');
    if (log && log.textContent !== (s.log || '')) {
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.textContent = s.log || '';
      if (atBottom) log.scrollTop = log.scrollHeight;
    }
  }

  window.VIVA = Object.assign(window.VIVA || {}, {
    training: {
      COLORS, sortableTable, readJson, csrfToken, thresholdLine, emptyText, watchJob, paintRun, rateEta,
    },
  });
})();
