/* The similarity search page: live progress of the indexing job in the status box.
   Polls /jobs/<id>/status/ once a second while the job is active (painting comes from
   viva/js/jobs.js); when the job ends, the page reloads so the counts and the "ready"
   state are the server's. */
(function () {
  'use strict';
  const root = document.getElementById('index-job');
  if (!root || root.dataset.active !== '1' || !window.VIVA || !window.VIVA.paintProgress) return;
  const field = (name) => root.querySelector('[data-field="' + name + '"]');
  const statusEl = document.querySelector('#index-status [data-field=status]');

  function render(s) {
    window.VIVA.paintProgress(field('progress'), s);
    field('note').textContent = s.note || '';
    field('eta').textContent = s.active ? window.VIVA.fmtEta(s.eta_seconds) : '';
    const err = field('error');
    err.textContent = s.error || '';
    err.hidden = !s.error;
    if (statusEl) {
      statusEl.className = 'status ' + s.status;
      statusEl.textContent = s.status_label;
    }
  }

  function tick() {
    fetch(root.dataset.statusUrl, { headers: { Accept: 'application/json' } })
      .then((r) => { if (!r.ok) throw new Error('HTTP ' + r.status); return r.json(); })
      .then((s) => {
        render(s);
        if (s.active) setTimeout(tick, 1000);
        else if (s.status === 'succeeded') window.location.assign(window.location.href);  // GET, never a re-POST
      })
      .catch(() => setTimeout(tick, 3000));
  }
  tick();
})();
