/* Evaluation page: grouped bars (AP of the version and of its baseline per concept), the
   table sorted in the browser (the chart follows), and the precision–recall curves of the
   concept clicked (both versions, from the stored Evaluation rows). */
(function () {
  'use strict';
  const T = window.VIVA.training;
  const { COLORS } = T;
  const HORIZONTAL_FROM = 9;

  document.addEventListener('DOMContentLoaded', () => {
    const data = T.readJson('eval-data');
    const table = document.getElementById('eval-table');
    if (!data || !table || typeof Chart === 'undefined') return;
    const newLabel = 'v' + data.version;
    const oldLabel = data.baseline != null ? 'v' + data.baseline : null;
    const pctOrNull = (v) => (v == null ? null : 100 * v);
    let order = Array.from(table.tBodies[0].rows).map((r) => r.dataset.name);
    const horizontal = order.length >= HORIZONTAL_FROM;
    const box = document.getElementById('eval-chart-box');
    box.style.height = (horizontal ? Math.max(240, order.length * (oldLabel ? 26 : 18) + 70) : 260) + 'px';
    const valueAxis = horizontal ? 'x' : 'y';
    const catAxis = horizontal ? 'y' : 'x';

    const datasets = [{ label: newLabel, data: [], backgroundColor: COLORS.newBar }];
    if (oldLabel) datasets.push({ label: oldLabel, data: [], backgroundColor: COLORS.oldBar });
    const bars = new Chart(document.getElementById('eval-chart'), {
      type: 'bar',
      data: { labels: [], datasets },
      options: {
        indexAxis: horizontal ? 'y' : 'x', animation: false, maintainAspectRatio: false,
        scales: {
          [valueAxis]: { min: 0, max: 100, title: { display: true, text: 'AP %' } },
          [catAxis]: { ticks: { autoSkip: false } },
        },
        plugins: {
          legend: { position: 'bottom', labels: { boxWidth: 12 } },
          tooltip: { callbacks: { label: (c) => c.dataset.label + ': ' + (c.raw == null ? '—' : c.raw.toFixed(1) + ' %') } },
        },
        onClick: (_e, elements) => { if (elements.length) select(order[elements[0].index]); },
      },
    });
    function paintBars() {
      bars.data.labels = order;
      bars.data.datasets[0].data = order.map((n) => pctOrNull(data.curves[n].ap));
      if (oldLabel) bars.data.datasets[1].data = order.map((n) => pctOrNull(data.curves[n].previous_ap));
      bars.update('none');
    }

    const prTitle = document.getElementById('pr-title');
    const pr = new Chart(document.getElementById('pr-chart'), {
      type: 'line',
      data: { datasets: [] },
      options: {
        animation: false, maintainAspectRatio: false, parsing: false,
        scales: {
          x: { type: 'linear', min: 0, max: 1, title: { display: true, text: 'recall' } },
          y: { min: 0, max: 1, title: { display: true, text: 'precision' } },
        },
        plugins: {
          legend: { position: 'bottom', labels: { boxWidth: 12, boxHeight: 2 } },
          emptyText: { text: 'no validation positives for this concept' },
        },
      },
    });
    function curve(c) {
      return c ? c.recall.map((r, i) => ({ x: r, y: c.precision[i] })) : [];
    }
    function select(name) {
      const c = data.curves[name];
      if (!c) return;
      table.querySelectorAll('tbody tr').forEach((r) => r.classList.toggle('selected', r.dataset.name === name));
      prTitle.textContent = name;
      const fmt = (v) => (v == null ? '—' : (100 * v).toFixed(1) + ' %');
      const sets = [{ label: newLabel + ' (AP ' + fmt(c.ap) + ')', data: curve(c.new), borderColor: COLORS.newBar,
        backgroundColor: COLORS.newBar, borderWidth: 2, pointRadius: 0, stepped: 'after', clip: 6 }];
      if (oldLabel && c.old) {
        sets.push({ label: oldLabel + ' (AP ' + fmt(c.previous_ap) + ')', data: curve(c.old), borderColor: COLORS.grey,
          backgroundColor: COLORS.grey, borderWidth: 2, borderDash: [5, 3], pointRadius: 0, stepped: 'after', clip: 6 });
      }
      pr.data.datasets = sets;
      pr.update('none');
    }

    T.sortableTable(table, (_key, _dir, rows) => {
      order = rows.map((r) => r.dataset.name);
      paintBars();
    });
    table.tBodies[0].addEventListener('click', (e) => {
      const row = e.target.closest('tr');
      if (row) select(row.dataset.name);
    });
    table.tBodies[0].addEventListener('keydown', (e) => {
      const row = e.target.closest('tr');
      if (row && (e.key === 'Enter' || e.key === ' ')) { e.preventDefault(); select(row.dataset.name); }
    });
    paintBars();
    if (order.length) select(order[0]);
    window.VIVA.training.evaluation = { select, bars, pr };
  });
})();
