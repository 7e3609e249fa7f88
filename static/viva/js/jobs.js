/* Live job views: progress bars in job tables and the job detail page (log, charts, controls).
   Polling keeps the server simple and works behind every proxy. */
(function () {
  'use strict';

  function fmtEta(seconds) {
    if (seconds == null) return '';
    seconds = Math.round(seconds);
    if (seconds < 60) return 'about ' + seconds + ' s left';
    const m = Math.floor(seconds / 60), s = seconds % 60;
    if (m < 60) return 'about ' + m + ' min ' + s + ' s left';
    return 'about ' + Math.floor(m / 60) + ' h ' + (m % 60) + ' min left';
  }

  function paintProgress(el, state) {
    if (!el) return;
    const bar = el.querySelector('.bar'), text = el.querySelector('.text');
    const pct = state.percent;
    el.classList.toggle('indeterminate', state.active && pct == null);
    bar.style.width = (pct == null ? 0 : pct).toFixed(1) + '%';
    el.setAttribute('aria-valuenow', pct == null ? 0 : Math.round(pct));
    text.textContent = pct != null ? Math.round(pct) + '%' + (state.total ? ' (' + state.progress + ' / ' + state.total + ')' : '')
      : (state.active ? '…' : '—');
  }

  function paintStatus(el, state) {
    if (!el) return;
    el.className = 'status ' + state.status;
    el.textContent = state.status_label;
  }

  // --- job tables ---------------------------------------------------------------
  function pollTables() {
    document.querySelectorAll('table.jobs-table').forEach((table) => {
      const rows = Array.from(table.querySelectorAll('tr[data-active="1"]'));
      if (!rows.length) return;
      const ids = rows.map((r) => r.dataset.jobId).join(',');
      fetch(table.dataset.pollUrl + '?ids=' + ids, { headers: { Accept: 'application/json' } })
        .then((r) => r.json())
        .then((data) => {
          data.jobs.forEach((state) => {
            const row = table.querySelector('tr[data-job-id="' + state.id + '"]');
            if (!row) return;
            paintStatus(row.querySelector('[data-field=status]'), state);
            paintProgress(row.querySelector('[data-field=progress]'), state);
            row.dataset.active = state.active ? '1' : '0';
          });
        })
        .catch(() => {});
    });
  }

  // --- job detail -----------------------------------------------------------------
  const charts = {};
  function drawCharts(metrics) {
    const box = document.getElementById('charts');
    if (!box || typeof Chart === 'undefined' || !metrics) return;
    Object.keys(metrics).forEach((name) => {
      const points = metrics[name].map((p) => ({ x: p[0], y: p[1] }));
      if (!charts[name]) {
        const card = document.createElement('div');
        card.className = 'card';
        card.innerHTML = '<strong></strong><div class="chart-box"><canvas></canvas></div>';
        card.querySelector('strong').textContent = name;
        box.appendChild(card);
        charts[name] = new Chart(card.querySelector('canvas'), {
          type: 'line',
          data: { datasets: [{ label: name, data: points, borderColor: '#2f80ed', pointRadius: 0, tension: 0.2 }] },
          options: { animation: false, maintainAspectRatio: false, parsing: false,
            scales: { x: { type: 'linear', title: { display: true, text: 'step' } } }, plugins: { legend: { display: false } } },
        });
      } else {
        charts[name].data.datasets[0].data = points;
        charts[name].update('none');
      }
    });
  }

  function renderResult(result) {
    const box = document.getElementById('result');
    if (!box || !result || !Object.keys(result).length) return;
    box.innerHTML = '';
    const card = document.createElement('div');
    card.className = 'card';
    if (result.summary) {
      const p = document.createElement('p'); p.innerHTML = '<strong></strong>';
      p.firstChild.textContent = result.summary; card.appendChild(p);
    }
    if (result.errors && result.errors.length) {
      const ul = document.createElement('ul'); ul.className = 'errors-list';
      result.errors.forEach((e) => { const li = document.createElement('li'); li.textContent = e.file + ': ' + e.error; ul.appendChild(li); });
      card.appendChild(ul);
    }
    if (result.url) {
      const a = document.createElement('a'); a.href = result.url; a.className = 'btn primary';
      a.textContent = result.url_label || 'Open result'; card.appendChild(a);
    }
    if (card.childNodes.length) box.appendChild(card);
  }

  function pollDetail() {
    const root = document.getElementById('job');
    if (!root) return;
    const tick = () => {
      fetch(root.dataset.statusUrl, { headers: { Accept: 'application/json' } })
        .then((r) => r.json())
        .then((s) => {
          paintStatus(root.querySelector('[data-field=status]'), s);
          paintProgress(root.querySelector('[data-field=progress]'), s);
          root.querySelector('[data-field=eta]').textContent = fmtEta(s.eta_seconds);
          root.querySelector('[data-field=note]').textContent = s.note || '';
          const err = root.querySelector('[data-field=error]');
          err.textContent = s.error || ''; err.hidden = !s.error;
          const log = root.querySelector('[data-field=log]');
          const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
          log.textContent = s.log || '';
          if (atBottom) log.scrollTop = log.scrollHeight;
          const cancel = root.querySelector('[data-action=cancel]');
          const resume = root.querySelector('[data-action=resume]');
          if (cancel) cancel.hidden = !s.active;
          if (resume) resume.hidden = !(s.status === 'failed' || s.status === 'cancelled');
          const hint = root.querySelector('[data-field=queued-hint]');
          if (hint) hint.hidden = !(s.status === 'queued' && Date.now() - Date.parse(s.created_at) > 10000);
          drawCharts(s.metrics);
          renderResult(s.result);
          if (s.active) setTimeout(tick, 1000);
        })
        .catch(() => setTimeout(tick, 3000));
    };
    tick();
  }

  document.addEventListener('DOMContentLoaded', () => {
    pollDetail();
    if (document.querySelector('table.jobs-table')) {
      pollTables();
      setInterval(pollTables, 1500);
    }
  });
  window.VIVA = Object.assign(window.VIVA || {}, { fmtEta, paintProgress });
})();
