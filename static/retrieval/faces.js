/* Face search page: live progress of an index rebuild, keyboard choice of faces and pages,
   confirmation before a rebuild, and "search the whole image instead" for an upload (the
   kept copy of the picture is posted again to the similar-images page). */
(function () {
  'use strict';

  function watchRebuild() {
    const box = document.querySelector('.face-status[data-status-url]');
    if (!box || box.dataset.jobActive !== '1') return;
    const tick = () => {
      fetch(box.dataset.statusUrl, { headers: { Accept: 'application/json' } })
        .then((r) => { if (!r.ok) throw new Error('HTTP ' + r.status); return r.json(); })
        .then((s) => {
          if (window.VIVA && window.VIVA.paintProgress) {
            window.VIVA.paintProgress(box.querySelector('[data-field=progress]'), s);
          }
          const status = box.querySelector('[data-field=status]');
          if (status) { status.className = 'status ' + s.status; status.textContent = s.status_label; }
          const note = box.querySelector('[data-field=note]');
          if (note) note.textContent = s.note || '';
          if (s.active) setTimeout(tick, 1000);
          else window.location.reload();  // new counts and index type
        })
        .catch(() => setTimeout(tick, 3000));
    };
    tick();
  }

  function confirmForms() {
    document.querySelectorAll('form[data-confirm]').forEach((form) => {
      form.addEventListener('submit', (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
  }

  function wholeImageUpload() {
    const form = document.getElementById('whole-image-form');
    if (!form || !form.dataset.upload) return;
    form.addEventListener('submit', (event) => {
      const input = form.querySelector('input[type=file]');
      if (input.files.length) return;  // already attached: post it
      event.preventDefault();
      const button = form.querySelector('button');
      button.disabled = true;
      fetch(form.dataset.upload, { credentials: 'same-origin' })
        .then((r) => { if (!r.ok) throw new Error('The query picture has expired; upload it again.'); return r.blob(); })
        .then((blob) => {
          const name = (form.dataset.name || 'query').replace(/\.[^.]*$/, '') + '.jpg';
          const transfer = new DataTransfer();
          transfer.items.add(new File([blob], name, { type: 'image/jpeg' }));
          input.files = transfer.files;
          form.submit();
        })
        .catch((err) => { button.disabled = false; window.alert(err.message); });
    });
  }

  function keyboard() {
    document.addEventListener('keydown', (event) => {
      const t = event.target;
      if (event.altKey || event.ctrlKey || event.metaKey) return;
      if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
      let link = null;
      if (/^[1-9]$/.test(event.key)) link = document.querySelector('a.face-box[data-face-no="' + event.key + '"]');
      else if (event.key === 'ArrowRight') link = document.querySelector('.pagination a[rel=next]');
      else if (event.key === 'ArrowLeft') link = document.querySelector('.pagination a[rel=prev]');
      if (link) { event.preventDefault(); window.location.href = link.href; }
    });
  }

  document.addEventListener('DOMContentLoaded', () => {
    watchRebuild();
    confirmForms();
    wholeImageUpload();
    keyboard();
  });
})();
