/* The face-indexing page: live view of a job (progress, ETA from the measured
   throughput, faces/s and images/s, log, cancel). Polls jobs:status once a second while
   the job is active, through window.VIVA.training.watchJob. */
(function () {
  'use strict';
  const T = window.VIVA.training;
  const { COLORS } = T;

  function last(series) { return series && series.length ? series[series.length - 1][1] : null; }

  function initRun() {
    const root = document.getElementById('run');
    if (!root) return;
    const q = (name) => root.querySelector('[data-field="' + name + '"]');
    let chart = null;
    if (typeof Chart !== 'undefined') {
      chart = new Chart(document.getElementById('chart-fps'), {
        type: 'line',
        data: { datasets: [] },
        options: {
          animation: false, maintainAspectRatio: false, parsing: false, normalized: true,
          scales: { x: { type: 'linear', min: 0, title: { display: true, text: 'seconds of work' } }, y: { beginAtZero: true } },
          plugins: { legend: { position: 'bottom', labels: { boxWidth: 12, boxHeight: 2 } }, emptyText: { text: 'one point per finished chunk' } },
        },
      });
    }

    function setSeries(key, label, color, series) {
      if (!chart || !series) return;
      let ds = chart.data.datasets.find((d) => d.key === key);
      if (!ds) {
        ds = { key, label, data: [], borderColor: color, backgroundColor: color, borderWidth: 2, pointRadius: 2, tension: 0.2 };
        chart.data.datasets.push(ds);
      }
      ds.data = series.map((p) => ({ x: p[0], y: p[1] }));
    }

    function render(s) {
      const m = s.metrics || {};
      T.paintRun(root, s, T.rateEta(s, 'images/s'));
      const parts = [];
      if (s.total) parts.push(s.progress + ' of ' + s.total + ' images');
      const fps = last(m['faces/s']);
      const ips = last(m['images/s']);
      if (ips != null) parts.push(ips.toFixed(1) + ' images/s');
      if (fps != null) parts.push(fps.toFixed(1) + ' faces/s');
      q('stats').textContent = parts.join(' · ');
      setSeries('faces/s', 'faces/s', COLORS.blue, m['faces/s']);
      setSeries('images/s', 'images/s', COLORS.orange, m['images/s']);
      if (chart) chart.update('none');
    }

    T.watchJob(root, render);
  }

  document.addEventListener('DOMContentLoaded', initRun);
})();
