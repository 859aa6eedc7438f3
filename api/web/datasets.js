// Datasets: upload an archive (drop or pick; a progress bar from XMLHttpRequest's upload
// events), the list, one dataset's summary (classes with counts, splits, median image size,
// skipped and undecodable files by name), delete.
import { get, call, upload, enc } from './api.js';
import { h, link, route, table, facts, fmtBytes, fmtTime, dropZone } from './dom.js';

// The Content-Type the server expects for an archive, from its name (unknown: sniffed).
function typeOf(name) {
  const n = name.toLowerCase();
  if (n.endsWith('.tar')) return 'application/x-tar';
  if (n.endsWith('.tgz') || n.endsWith('.gz')) return 'application/gzip';
  if (n.endsWith('.zip')) return 'application/zip';
  if (n.endsWith('.xz') || n.endsWith('.txz')) return 'application/x-xz';
  if (n.endsWith('.npz')) return 'application/x-npz';
  return 'application/octet-stream';
}

// The summary the server computed at import.
export function summary(ds) {
  const sp = ds.splits || {};
  const train = (sp.train && sp.train.per_class) || {};
  const val = (sp.val && sp.val.per_class) || {};
  const classes = ds.classes || Object.keys(train);
  const sk = ds.skipped || {};
  const med = ds.median_image_size;
  const validation = ds.validation
    ? ds.validation + (typeof ds.holdout === 'number' && ds.holdout ? ` (${Math.round(ds.holdout * 100)} %, seed ${ds.seed})` : '')
    : '–';
  return h('section', { class: 'summary' },
    facts([
      ['Name', ds.name],
      ['Id', ds.id],
      ['Kind', ds.kind || '–'],
      ['Layout', ds.layout || '–'],
      ['Classes', String(classes.length)],
      ['Images', `${sp.train ? sp.train.total : '–'} train, ${sp.val ? sp.val.total : '–'} validation`],
      ['Validation', validation],
      ['Median image size', Array.isArray(med) ? `${med[0]} × ${med[1]} px` : '–'],
      ds.examples_per_class ? ['Few-shot', `${ds.examples_per_class} per class`] : null,
      ['Upload', fmtBytes(ds.bytes)],
      ['Created', fmtTime(ds.created_at)],
    ]),
    h('h2', null, 'Classes'),
    table(['#', 'Class', 'Train', 'Validation'],
      classes.map((c, i) => [String(i), c, String(train[c] ?? 0), String(val[c] ?? 0)]), 'classes'),
    h('h2', null, 'Skipped files'),
    facts([
      ['Not images', String(sk.non_image ?? 0)],
      ['Outside a class folder', String(sk.outside_class ?? 0)],
      ['Undecodable', String(sk.undecodable ?? 0)],
    ]),
    (sk.undecodable_first || []).length
      ? h('ul', { class: 'files' }, sk.undecodable_first.map((f) => h('li', null, h('code', null, f))))
      : null,
    sk.undecodable > (sk.undecodable_first || []).length
      ? h('p', { class: 'muted' }, `The first ${sk.undecodable_first.length} are listed.`) : null);
}

function uploader(ctx, onDone) {
  const input = h('input', { type: 'file', id: 'dataset-file', accept: '.tar,.tgz,.gz,.zip,.xz,.txz,.npz' });
  const name = h('input', { type: 'text', id: 'dataset-name', maxlength: '200', placeholder: 'default: the file name' });
  const bar = h('progress', { id: 'upload-progress', max: '1', value: '0' });
  const status = h('p', { id: 'upload-status', class: 'muted', 'aria-live': 'polite' }, 'No upload yet.');
  const result = h('div', { id: 'upload-result' });
  let busy = false;
  async function go(files) {
    if (busy) return;
    const file = files[0];
    busy = true;
    input.disabled = true;
    result.replaceChildren();
    bar.value = 0;
    const t0 = performance.now();
    const type = typeOf(file.name);
    const q = new URLSearchParams({ name: name.value.trim() || file.name });
    if (type === 'application/x-npz') q.set('format', 'npz');
    try {
      const ds = await upload(`/v1/datasets?${q}`, file, type, (done, total, phase) => {
        bar.value = total ? done / total : 0;
        const rate = done / Math.max(0.001, (performance.now() - t0) / 1000);
        status.textContent = phase === 'upload'
          ? `Uploading ${file.name}: ${fmtBytes(done)} of ${fmtBytes(total)} (${Math.round(100 * bar.value)} %), ${fmtBytes(rate)}/s`
          : `Uploaded ${fmtBytes(total)}; the server is unpacking it and decoding every image…`;
      });
      bar.value = 1;
      status.textContent = `Stored "${ds.name}": ${ds.num_classes} classes.`;
      result.append(summary(ds), h('p', { class: 'actions' },
        link(route('datasets', ds.id), 'Open'), link(`/jobs/new?dataset=${enc(ds.id)}`, 'New job with it')));
      onDone();
    } catch (e) {
      status.textContent = 'Upload failed.';
      result.append(h('p', { class: 'error' }, e.message));
    } finally {
      busy = false;
      input.disabled = false;
      input.value = '';
    }
  }
  return h('section', { class: 'card upload' },
    h('h2', null, 'Upload a dataset'),
    h('p', { class: 'muted' }, 'An archive (tar, tar.gz, tar.xz, zip) of class folders — cats/*.jpg, dogs/*.jpg — or of train/ and val/ with class folders; or a tensor .npz.'),
    h('label', { for: 'dataset-name' }, 'Name'), name,
    dropZone(input, 'Drop the archive here, or click to choose it', go),
    bar, status, result);
}

export async function list(ctx) {
  const box = h('div');
  const refresh = async () => {
    const { datasets } = await get('/v1/datasets');
    if (!ctx.alive()) return;
    box.replaceChildren(datasets.length
      ? table(['Name', 'Classes', 'Train', 'Validation', 'Median size', 'Skipped', 'Upload', 'Created', ''],
        datasets.map((d) => [
          link(route('datasets', d.id), d.name),
          String(d.num_classes ?? '–'),
          String(d.splits?.train?.total ?? '–'),
          String(d.splits?.val?.total ?? '–'),
          Array.isArray(d.median_image_size) ? d.median_image_size.join(' × ') : '–',
          String((d.skipped?.non_image ?? 0) + (d.skipped?.outside_class ?? 0) + (d.skipped?.undecodable ?? 0)),
          fmtBytes(d.bytes),
          fmtTime(d.created_at),
          deleteButton(d, ctx, refresh),
        ]), 'datasets')
      : h('p', { class: 'muted' }, 'No datasets yet.'));
  };
  ctx.root.append(h('h1', null, 'Datasets'), uploader(ctx, () => refresh().catch((e) => ctx.notice(e.message))),
    h('h2', null, 'Stored datasets'), box);
  await refresh();
}

function deleteButton(d, ctx, after) {
  return h('button', {
    type: 'button', class: 'danger',
    onclick: async () => {
      if (!confirm(`Delete the dataset "${d.name}" and its files?`)) return;
      try {
        await call('DELETE', `/v1/datasets/${enc(d.id)}`);
        await after();
      } catch (e) { ctx.notice(e.message); }
    },
  }, 'Delete');
}

export async function show(ctx) {
  const ds = await get(`/v1/datasets/${enc(ctx.params[0])}`);
  ctx.root.append(
    h('p', { class: 'crumbs' }, link('/datasets', 'Datasets'), ' / '),
    h('h1', null, ds.name),
    h('p', { class: 'actions' }, link(`/jobs/new?dataset=${enc(ds.id)}`, 'New job with this dataset'),
      deleteButton(ds, ctx, () => { location.hash = '#/datasets'; })),
    summary(ds));
}
