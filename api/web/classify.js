// Classify: pick a model, drop, choose or paste images (several at once: one multipart
// request), see each image with its top-k labels as bars, the scores and the timing. Images
// are drawn on a canvas from createImageBitmap, so the CSP needs no blob: or data: sources.
import { get, call, enc } from './api.js';
import { h, append, fmtNum, dropZone } from './dom.js';

const MAX_IMAGES = 64; // the server reads at most 64 image parts

async function preview(file) {
  const canvas = h('canvas', { class: 'thumb', role: 'img', 'aria-label': file.name || 'pasted image' });
  try {
    const bmp = await createImageBitmap(file);
    const s = Math.min(8, 320 / Math.max(bmp.width, bmp.height)); // small images are scaled up too
    canvas.width = Math.max(1, Math.round(bmp.width * s));
    canvas.height = Math.max(1, Math.round(bmp.height * s));
    canvas.getContext('2d').drawImage(bmp, 0, 0, canvas.width, canvas.height);
    bmp.close();
  } catch {
    canvas.width = 1;
    canvas.height = 1; // the browser cannot decode it; the server will say why
  }
  return canvas;
}

function bars(preds) {
  return h('ol', { class: 'preds' }, preds.map((p, i) => {
    const fill = h('span');
    fill.style.width = `${(100 * p.score).toFixed(1)}%`;
    return h('li', { class: i === 0 ? 'pred best' : 'pred' },
      h('span', { class: 'label' }, p.label),
      h('span', { class: 'bar' }, fill),
      h('span', { class: 'score' }, `${(100 * p.score).toFixed(2)} %`));
  }));
}

export async function page(ctx) {
  const { models } = await get('/v1/models');
  const usable = models.filter((m) => !m.error);
  const want = ctx.query.get('model');
  const model = h('select', { id: 'classify-model', value: want || (usable.find((m) => m.kind === 'fine-tuned') || usable[0] || {}).id || '' },
    usable.map((m) => h('option', { value: m.id }, `${m.name} (${m.kind}${m.num_classes ? ', ' + m.num_classes + ' classes' : ''})`)));
  const topk = h('input', { id: 'classify-topk', type: 'number', min: '1', max: '20', value: '5' });
  const input = h('input', { type: 'file', id: 'classify-files', accept: 'image/jpeg,image/png', multiple: true });
  const status = h('p', { id: 'classify-status', class: 'muted', 'aria-live': 'polite' }, 'Drop, choose or paste images (JPEG or PNG).');
  const out = h('div', { id: 'classify-results', class: 'results' });

  async function run(files) {
    files = files.filter((f) => f && f.size > 0).slice(0, MAX_IMAGES);
    if (!files.length || !model.value) return;
    const k = Math.min(20, Math.max(1, parseInt(topk.value, 10) || 5));
    const form = new FormData();
    files.forEach((f, i) => form.append('image', f, f.name || `pasted-${i + 1}.png`));
    status.textContent = `Classifying ${files.length} image${files.length > 1 ? 's' : ''}…`;
    const cards = await Promise.all(files.map(async (f, i) => h('figure', { class: 'card result', 'data-index': String(i) },
      await preview(f), h('figcaption', null, f.name || `pasted image ${i + 1}`))));
    out.replaceChildren(...cards);
    const t0 = performance.now();
    try {
      const r = await call('POST', `/v1/models/${enc(model.value)}/classify?top_k=${k}`, form);
      const rtt = performance.now() - t0;
      const results = r.results || [{ image: 0, predictions: r.predictions }];
      for (const res of results) {
        const card = cards[res.image];
        if (card) card.append(bars(res.predictions || []));
      }
      const t = r.timing_ms || {};
      status.textContent = `${results.length} image${results.length > 1 ? 's' : ''} in ${fmtNum(t.total, 3)} ms on the server ` +
        `(load ${fmtNum(t.load, 3)}, decode ${fmtNum(t.decode, 3)}, queue ${fmtNum(t.queue, 3)}, inference ${fmtNum(t.infer, 3)}); ` +
        `${Math.round(rtt)} ms round trip.`;
    } catch (e) {
      status.textContent = 'Classification failed: ' + e.message;
    }
  }

  const onPaste = (e) => {
    const files = [...((e.clipboardData && e.clipboardData.files) || [])].filter((f) => f.type.startsWith('image/'));
    if (files.length) {
      e.preventDefault();
      run(files);
    }
  };
  document.addEventListener('paste', onPaste);
  ctx.onLeave(() => document.removeEventListener('paste', onPaste));

  append(ctx.root, [h('h1', null, 'Classify'),
    usable.length ? null : h('p', { class: 'warn' }, 'No model to classify with.'),
    h('section', { class: 'card' },
      h('div', { class: 'grid2' },
        h('div', null, h('label', { for: 'classify-model' }, 'Model'), model),
        h('div', null, h('label', { for: 'classify-topk' }, 'Top k'), topk)),
      dropZone(input, 'Drop images here, click to choose, or paste (Ctrl+V)', run),
      status),
    out]);
}
