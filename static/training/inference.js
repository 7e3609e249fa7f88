/* The inference page: the live view of a run (progress, ETA from the measured
   throughput, keyframes/s, CPU/GPU use, log, cancel). Polls jobs:status once a second
   while the job is active; progress painting, ETA text, colours, confirmations and the
   empty-chart text come from viva/js/jobs.js and training/training.js. */
(function () {
  'use strict';
  const T = window.VIVA.training;
  const { COLORS } = T;
  const USAGE = [
    ['cpu %', 'CPU', COLORS.blue],
    ['ram %', 'RAM', COLORS.grey],
    ['gpu %', 'GPU', COLORS.green],
    ['gpu memory %', 'GPU memory', COLORS.purple],
  ];

  function chart(canvas, yOpts, empty) {
    return new Chart(canvas, {
      type: 'line',
      data: { datasets: [] },
      options: {
        animation: false, maintainAspectRatio: false, parsing: false, normalized: true,
        scales: {
          x: { type: 'linear', min: 0, title: { display: true, text: 'seconds since start' } },
          y: Object.assign({ beginAtZero: true }, yOpts || {}),
        },
        plugins: {
          legend: { display: false, position: 'bottom', labels: { boxWidth: 12, boxHeight: 2 } },
          emptyText: { text: empty },
        },
      },
    });
  }

  function setSeries(c, key, label, color, series) {
    if (!series) return;
    let ds = c.data.datasets.find((d) => d.key === key);
    if (!ds) {
      ds = { key, label, data: [], borderColor: color, backgroundColor: color, borderWidth: 2, pointRadius: 2, tension: 0.2 };
      c.data.datasets.push(ds);
    }
    ds.data = series.map((p) => ({ x: p[0], y: p[1] }));
  }

  function last(series) { return series && series.length ? series[series.length - 1][1] : null; }

  function initRun() {
    const root = document.getElementById('run');
    if (!root || typeof Chart === 'undefined') return;
    const q = (name) => root.querySelector('[data-field="' + name + '"]');
    const ipsChart = chart(document.getElementById('chart-ips'), {}, 'one point per finished chunk');
    const usage = chart(document.getElementById('chart-usage'), { min: 0, max: 100, ticks: { callback: (v) => v + ' %' } },
      'sampled every 2 s while the run scores');

    function render(s) {
      const m = s.metrics || {};
      T.paintRun(root, s, T.rateEta(s, 'images/s'));
      const parts = [];
      if (s.total) parts.push(s.progress + ' of ' + s.total + ' keyframes');
      const ips = last(m['images/s']);
      if (ips != null) parts.push(ips.toFixed(1) + ' keyframes/s');
      q('stats').textContent = parts.join(' · ');
      setSeries(ipsChart, 'images/s', 'keyframes/s', COLORS.blue, m['images/s']);
      USAGE.forEach(([key, label, color]) => setSeries(usage, key, label, color, m[key]));
      usage.options.plugins.legend.display = usage.data.datasets.length > 1;
      ipsChart.update('none');
      usage.update('none');
    }

    T.watchJob(root, render);
  }

  document.addEventListener('DOMContentLoaded', initRun);
})();
