/* Dataset overview: stacked bars (positive / negative / neutral) per concept with the
   minimum-positives line; concepts below it are drawn paler and their names in red.
   Sorting (select or table header) re-orders chart and table together. */
(function () {
  'use strict';
  const T = window.VIVA.training;
  const { COLORS } = T;
  const HORIZONTAL_FROM = 13;  // more concepts than this: horizontal bars, one row each

  document.addEventListener('DOMContentLoaded', () => {
    const data = T.readJson('overview-data');
    const canvas = document.getElementById('overview-chart');
    if (!data || !canvas || typeof Chart === 'undefined' || !data.concepts.length) return;
    let concepts = data.concepts.slice();
    const horizontal = concepts.length >= HORIZONTAL_FROM;
    const box = document.getElementById('overview-chart-box');
    box.style.height = (horizontal ? Math.max(260, concepts.length * 24 + 70) : 320) + 'px';
    const valueAxis = horizontal ? 'x' : 'y';
    const catAxis = horizontal ? 'y' : 'x';
    const below = (i) => !concepts[i].eligible;

    const chart = new Chart(canvas, {
      type: 'bar',
      data: { labels: [], datasets: [
        { label: 'positive', data: [], backgroundColor: [], stack: 'labels' },
        { label: 'negative', data: [], backgroundColor: COLORS.neg, stack: 'labels' },
        { label: 'neutral', data: [], backgroundColor: COLORS.neu, stack: 'labels' },
      ] },
      options: {
        indexAxis: horizontal ? 'y' : 'x', animation: false, maintainAspectRatio: false,
        layout: { padding: { top: horizontal ? 20 : 0 } },
        scales: {
          [catAxis]: { stacked: true, ticks: { autoSkip: false,
            color: (c) => (concepts[c.index] && below(c.index) ? COLORS.bad : '#1d2430') } },
          [valueAxis]: { stacked: true, beginAtZero: true, title: { display: true, text: 'labels' },
            suggestedMax: data.threshold * 1.15 },
        },
        plugins: {
          legend: { display: false },
          thresholdLine: { value: data.threshold, axis: valueAxis, label: 'min. ' + data.threshold + ' positives' },
          tooltip: { callbacks: { footer: (items) => {
            const c = concepts[items[0].dataIndex];
            return c.eligible ? 'will be trained' : 'needs ' + (data.threshold - c.positives) + ' more positives';
          } } },
        },
      },
    });

    function paint() {
      chart.data.labels = concepts.map((c) => c.name);
      chart.data.datasets[0].data = concepts.map((c) => c.positives);
      chart.data.datasets[0].backgroundColor = concepts.map((c) => (c.eligible ? COLORS.pos : COLORS.posLow));
      chart.data.datasets[1].data = concepts.map((c) => c.negatives);
      chart.data.datasets[2].data = concepts.map((c) => c.neutral);
      chart.update('none');
    }

    const select = document.getElementById('overview-sort');
    const table = T.sortableTable(document.getElementById('overview-table'), (key, dir, rows) => {
      const order = rows.map((r) => r.dataset.name);
      const byName = Object.fromEntries(data.concepts.map((c) => [c.name, c]));
      concepts = order.map((n) => byName[n]);
      if (select && [...select.options].some((o) => o.value === key)) select.value = key;
      paint();
    });
    select.addEventListener('change', () => {
      table.sortBy(select.value, select.value === 'name' ? 1 : -1);
    });
    table.sortBy(select.value, -1);
  });
})();
