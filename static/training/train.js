/* The train page: advanced-option hints, and the live view of a run (progress, ETA, loss,
   mAP, learning rate, CPU/GPU use, log, cancel). Polls the job's JSON (jobs:status) once
   a second while the run is active — the same endpoint the job page uses. */
(function () {
  'use strict';
  const T = window.VIVA.training;
  const { COLORS } = T;

  // --- advanced options --------------------------------------------------------------
  function initAdvanced() {
    const info = T.readJson('networks-info') || {};
    const form = document.getElementById('start-form');
    if (!form) return;
    const network = form.querySelector('[name=network]');
    const init = form.querySelector('[name=init]');
    const size = form.querySelector('[name=image_size]');
    const status = form.querySelector('[data-field=weights-status]');
    function update() {
      const net = info[network.value];
      if (!net) return;
      if (size) size.placeholder = net.size + ' (default)';
      if (status) status.textContent = net.weights;
      const pretrained = init.querySelector('option[value=pretrained]');
      pretrained.disabled = !net.pretrained;
      if (!net.pretrained) init.value = 'random';
    }
    network.addEventListener('change', update);
    update();
  }

  // --- charts ---------------------------------------------------------------------------
  function lineChart(canvas, datasets, opts) {
    opts = opts || {};
    return new Chart(canvas, {
      type: 'line',
      data: { datasets: datasets.map((d) => Object.assign({
        data: [], borderWidth: 2, pointRadius: 0, tension: 0.2, fill: false,
      }, d)) },
      options: {
        animation: false, maintainAspectRatio: false, parsing: false, normalized: true,
        interaction: { mode: 'nearest', intersect: false },
        scales: {
          x: { type: 'linear', title: { display: true, text: opts.xTitle || 'epoch' }, min: 0,
               ticks: { precision: 0 } },
          y: Object.assign({ type: opts.yType || 'linear' }, opts.y || {}),
        },
        plugins: {
          legend: { display: datasets.length > 1, position: 'bottom', labels: { boxWidth: 12, boxHeight: 2 } },
          emptyText: { text: opts.empty || 'waiting for the first points…' },
          tooltip: { callbacks: opts.tooltip || {} },
        },
      },
    });
  }

  function points(series, scale) {
    return (series || []).map((p) => ({ x: p[0], y: scale ? p[1] * scale : p[1] }));
  }

  const USAGE = [
    ['cpu %', 'CPU', COLORS.blue],
    ['ram %', 'RAM', COLORS.grey],
    ['gpu %', 'GPU', COLORS.green],
    ['gpu memory %', 'GPU memory', COLORS.purple],
  ];

  function makeCharts() {
    const charts = {};
    const pct = (v) => v.toFixed(1) + ' %';
    charts.loss = lineChart(document.getElementById('chart-loss'), [
      { label: 'training loss', borderColor: COLORS.blue, backgroundColor: COLORS.blue },
      { label: 'validation loss', borderColor: COLORS.orange, backgroundColor: COLORS.orange, pointRadius: 3, tension: 0 },
    ], { y: { beginAtZero: true } });
    charts.map = lineChart(document.getElementById('chart-map'), [
      { label: 'validation mAP', borderColor: COLORS.green, backgroundColor: COLORS.green, pointRadius: 3, tension: 0 },
    ], { y: { min: 0, max: 100, ticks: { callback: (v) => v + ' %' } },
         tooltip: { label: (c) => 'mAP ' + pct(c.parsed.y) } });
    charts.lr = lineChart(document.getElementById('chart-lr'), [
      { label: 'learning rate', borderColor: COLORS.purple, backgroundColor: COLORS.purple, stepped: 'before', pointRadius: 2, tension: 0 },
    ], { yType: 'logarithmic', y: { ticks: { callback: (v) => {
      // Powers of ten only: a log axis otherwise labels 7e-4, 4e-4 … and gets crowded.
      const e = Math.log10(v);
      return Math.abs(e - Math.round(e)) < 1e-9 ? Number(v).toExponential(0) : '';
    } } } });
    charts.usage = lineChart(document.getElementById('chart-usage'), [], {
      xTitle: 'seconds since start', y: { min: 0, max: 100, ticks: { callback: (v) => v + ' %' } },
      empty: 'sampled every 2 s while the run trains',
    });
    return charts;
  }

  function updateCharts(charts, metrics) {
    metrics = metrics || {};
    charts.loss.data.datasets[0].data = points(metrics['train loss']);
    charts.loss.data.datasets[1].data = points(metrics['val loss']);
    charts.map.data.datasets[0].data = points(metrics['val mAP'], 100);
    charts.lr.data.datasets[0].data = points(metrics['learning rate']);
    const usage = charts.usage;
    USAGE.forEach(([key, label, color]) => {
      if (!metrics[key]) return;
      let ds = usage.data.datasets.find((d) => d.key === key);
      if (!ds) {
        ds = { key, label, data: [], borderColor: color, backgroundColor: color, borderWidth: 2, pointRadius: 0, tension: 0.2 };
        usage.data.datasets.push(ds);
      }
      ds.data = points(metrics[key]);
    });
    usage.options.plugins.legend.display = usage.data.datasets.length > 1;
    Object.values(charts).forEach((c) => c.update('none'));
  }

  function last(series) { return series && series.length ? series[series.length - 1][1] : null; }

  function statsText(s) {
    const m = s.metrics || {};
    const parts = [];
    const map = m['val mAP'] || [];
    if (map.length) {
      const best = Math.max(...map.map((p) => p[1]));
      parts.push('epoch ' + map[map.length - 1][0] + ' done', 'last mAP ' + (100 * last(map)).toFixed(1) + ' %',
        'best ' + (100 * best).toFixed(1) + ' %');
    }
    const ips = last(m['images/s']);
    if (ips != null) parts.push(ips.toFixed(1) + ' images/s');
    if (s.started_at) {
      const end = s.finished_at ? Date.parse(s.finished_at) : Date.now();
      const secs = Math.max(0, Math.round((end - Date.parse(s.started_at)) / 1000));
      parts.push((s.active ? 'running for ' : 'took ') + (secs < 60 ? secs + ' s' : Math.floor(secs / 60) + ' min ' + (secs % 60) + ' s'));
    }
    return parts.join(' · ');
  }

  // --- the live run ----------------------------------------------------------------------------
  function initRun() {
    const root = document.getElementById('run');
    if (!root || typeof Chart === 'undefined') return;
    const charts = makeCharts();
    const q = (name) => root.querySelector('[data-field="' + name + '"]');

    function render(s) {
      T.paintRun(root, s);
      if (s.status === 'succeeded' && s.result && s.result.version != null) {
        q('evaluation-link').href = root.dataset.evaluationUrl + '?version=' + s.result.version;
      }
      q('stats').textContent = statsText(s);
      updateCharts(charts, s.metrics);
    }

    const log = q('log');
    log.scrollTop = log.scrollHeight;
    T.watchJob(root, render);
  }

  document.addEventListener('DOMContentLoaded', () => {
    initAdvanced();
    initRun();
  });
})();
