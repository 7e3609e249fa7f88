/* The "Hash codes" page: live view of the running hashing job (progress, note, log,
   result, cancel in place) through window.VIVA.training.watchJob, and for deep hashing
   runs the loss and held-out mAP@100 charts. Polls jobs:status once a second while the
   job is active; without JavaScript the page still works (reload to refresh). */
(function () {
  'use strict';
  const T = window.VIVA && window.VIVA.training;
  const root = document.getElementById('run');
  if (!T || !root) return;
  const { COLORS } = T;

  function points(series, scale) {
    return (series || []).map((p) => ({ x: p[0], y: scale ? p[1] * scale : p[1] }));
  }

  function lineChart(canvas, datasets, yOpts, empty, xTitle) {
    if (!canvas || typeof Chart === 'undefined') return null;
    return new Chart(canvas, {
      type: 'line',
      data: {
        datasets: datasets.map(([label, color]) => ({
          label, data: [], borderColor: color, backgroundColor: color, borderWidth: 2,
          pointRadius: 0, tension: 0.2,
        })),
      },
      options: {
        animation: false, maintainAspectRatio: false, parsing: false, normalized: true,
        scales: {
          x: { type: 'linear', min: 0, title: { display: true, text: xTitle } },
          y: Object.assign({ beginAtZero: true }, yOpts || {}),
        },
        plugins: {
          legend: { display: datasets.length > 1, position: 'bottom', labels: { boxWidth: 12, boxHeight: 2 } },
          emptyText: { text: empty },
        },
      },
    });
  }

  const charts = root.dataset.kind === 'train_hashing' ? {
    loss: lineChart(document.getElementById('chart-loss'),
      [['total', COLORS.blue], ['classification', COLORS.orange], ['triplet', COLORS.purple]],
      {}, 'appears after the first batch', 'epoch'),
    map: lineChart(document.getElementById('chart-map'), [['held-out mAP@100', COLORS.green]],
      { max: 100, ticks: { callback: (v) => v + ' %' } }, 'appears after the first epoch', 'epoch'),
  } : null;

  function render(s) {
    T.paintRun(root, s);
    if (charts) {
      const m = s.metrics || {};
      if (charts.loss) {
        charts.loss.data.datasets[0].data = points(m['train loss']);
        charts.loss.data.datasets[1].data = points(m['classification loss']);
        charts.loss.data.datasets[2].data = points(m['triplet loss']);
        charts.loss.update('none');
      }
      if (charts.map) {
        charts.map.data.datasets[0].data = points(m['held-out mAP@100'], 100);
        charts.map.update('none');
      }
    }
    if (!s.active && root.dataset.status && root.dataset.status !== s.status) {
      // finished while watched: reload once so the active model and versions are current
      window.setTimeout(() => window.location.reload(), 1500);
    }
  }

  T.watchJob(root, render);
})();
