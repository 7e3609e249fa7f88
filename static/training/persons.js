/* The persons page: the live run (progress, per-fold mAP chart, log, cancel), the per-person
   AP bar chart, and the rejection threshold slider, which shows at once what a value does
   to the out-of-fold scores (share of known faces accepted, of unknown faces rejected). */
(function () {
  'use strict';
  const T = window.VIVA.training;
  const { COLORS } = T;

  function initRun() {
    const root = document.getElementById('run');
    if (!root) return;
    let chart = null;
    const canvas = document.getElementById('chart-folds');
    if (canvas && typeof Chart !== 'undefined') {
      chart = new Chart(canvas, {
        type: 'line',
        data: { datasets: [{ label: 'fold mAP', data: [], borderColor: COLORS.green, backgroundColor: COLORS.green, pointRadius: 4, tension: 0 }] },
        options: {
          animation: false, maintainAspectRatio: false, parsing: false,
          scales: { x: { type: 'linear', min: 1, title: { display: true, text: 'fold' }, ticks: { precision: 0 } },
                    y: { min: 0, max: 100, ticks: { callback: (v) => v + ' %' } } },
          plugins: { legend: { display: false }, emptyText: { text: 'waiting for the first fold…' } },
        },
      });
    }
    function render(s) {
      T.paintRun(root, s);
      if (chart) {
        chart.data.datasets[0].data = ((s.metrics || {})['fold mAP'] || []).map((p) => ({ x: p[0], y: 100 * p[1] }));
        chart.update('none');
      }
      // A run that just finished changed the active model: show it (once).
      if (root.dataset.wasActive === '1' && !s.active && s.status === 'succeeded') {
        const target = root.dataset.personsUrl + '?job=' + s.id;
        if (window.location.pathname + window.location.search === target) window.location.reload();
        else window.location.assign(target + '#result');
      }
      root.dataset.wasActive = s.active ? '1' : '0';
    }
    T.watchJob(root, render);
  }

  function initResult(data) {
    const canvas = document.getElementById('chart-ap');
    if (canvas && data && typeof Chart !== 'undefined') {
      new Chart(canvas, {
        type: 'bar',
        data: { labels: data.names, datasets: [{ label: 'AP %', data: data.ap, backgroundColor: COLORS.newBar }] },
        options: {
          animation: false, maintainAspectRatio: false, indexAxis: 'y',
          scales: { x: { min: 0, max: 100, ticks: { callback: (v) => v + ' %' } } },
          plugins: { legend: { display: false } },
        },
      });
    }
    const form = document.getElementById('threshold-form');
    if (!form || !data) return;
    const slider = form.querySelector('[data-field=threshold-slider]');
    const number = form.querySelector('[name=threshold]');
    const rates = form.querySelector('[data-field=rates]');
    const curve = data.curve;
    function pct(v) { return (100 * v).toFixed(1) + ' %'; }
    function show(t) {
      if (!curve || !curve.known.length) return;
      const accepted = curve.known.filter((v) => v >= t).length / curve.known.length;
      let text = 'known faces accepted ' + pct(accepted);
      if (curve.unknown.length) {
        text += ' · unknown faces rejected ' + pct(curve.unknown.filter((v) => v < t).length / curve.unknown.length);
      } else {
        text += ' · no unknown faces labelled to measure rejection';
      }
      rates.textContent = text;
    }
    slider.addEventListener('input', () => { number.value = Number(slider.value).toFixed(3); show(Number(slider.value)); });
    number.addEventListener('input', () => {
      const v = Number(number.value);
      if (!Number.isNaN(v) && v >= 0 && v <= 1) { slider.value = v; show(v); }
    });
    form.addEventListener('submit', (event) => {
      if (!window.confirm('Use ' + number.value + ' as the rejection threshold? Person inference must run again for the archive.')) {
        event.preventDefault();
      }
    });
  }

  document.addEventListener('DOMContentLoaded', () => {
    initRun();
    initResult(T.readJson('person-chart'));
  });
})();
