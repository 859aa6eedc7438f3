// Models: the base models of --models-dir and the fine-tuned ones; one model's details;
// download (a plain link, or through fetch when a token must go along) and delete.
import { get, call, rawFetch, responseError, token, enc } from './api.js';
import { h, append, link, route, table, facts, fmtBytes, fmtTime } from './dom.js';

function classesCell(m) {
  if (m.num_classes === null || m.num_classes === undefined) return '–';
  return String(m.num_classes);
}

async function download(m, button) {
  const url = `/v1/models/${enc(m.id)}/download`;
  const save = (href) => {
    const a = h('a', { href, download: String(m.name).replace(/[^A-Za-z0-9._-]/g, '_') + '.npz', hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
  };
  if (!token()) return save(url); // no token: the browser streams it to disk itself
  button.disabled = true;
  try {
    const res = await rawFetch(url);
    if (!res.ok) throw await responseError(res);
    const obj = URL.createObjectURL(await res.blob());
    save(obj);
    setTimeout(() => URL.revokeObjectURL(obj), 60000);
  } finally {
    button.disabled = false;
  }
}

function actions(m, ctx, after) {
  const dl = h('button', { type: 'button', onclick: () => download(m, dl).catch((e) => ctx.notice(e.message)) }, 'Download');
  const del = m.kind === 'fine-tuned' && h('button', {
    type: 'button', class: 'danger',
    onclick: async () => {
      if (!confirm(`Delete the model "${m.name}" and its files?`)) return;
      try {
        await call('DELETE', `/v1/models/${enc(m.id)}`);
        after();
      } catch (e) { ctx.notice(e.message); }
    },
  }, 'Delete');
  return h('div', { class: 'actions' }, link(`/classify?model=${enc(m.id)}`, 'Classify'), dl, del);
}

export async function list(ctx) {
  const { models } = await get('/v1/models');
  ctx.root.append(h('h1', null, 'Models'));
  if (!models.length) {
    ctx.root.append(h('p', { class: 'muted' }, 'No models yet: put a BiT checkpoint NAME.npz in the models directory.'));
    return;
  }
  const reload = () => { if (ctx.alive()) { ctx.root.replaceChildren(); list(ctx).catch((e) => ctx.notice(e.message)); } };
  ctx.root.append(table(['Name', 'Kind', 'Architecture', 'Classes', 'Resolution', 'Size', 'From job', ''],
    models.map((m) => [
      link(route('models', m.id), m.name),
      h('span', { class: 'tag' }, m.kind),
      m.architecture || '–',
      classesCell(m),
      m.resolution ? `${m.resolution} px` : '–',
      fmtBytes(m.bytes),
      m.job ? link(route('jobs', m.job), m.job) : '–',
      actions(m, ctx, reload),
    ]), 'models'));
}

export async function show(ctx) {
  const m = await get(`/v1/models/${enc(ctx.params[0])}`);
  append(ctx.root, [
    h('p', { class: 'crumbs' }, link('/models', 'Models'), ' / '),
    h('h1', null, m.name),
    m.error ? h('p', { class: 'error' }, 'This file cannot be read: ', m.error) : null,
    facts([
      ['Id', m.id],
      ['Kind', m.kind],
      ['Architecture', m.architecture || '–'],
      ['Classes', classesCell(m)],
      ['Resolution', m.resolution ? `${m.resolution} px` : '–'],
      ['Size', fmtBytes(m.bytes)],
      ['Loaded', m.loaded ? 'yes (in the inference cache)' : 'no'],
      ['From job', m.job ? link(route('jobs', m.job), m.job) : '–'],
      ['Created', fmtTime(m.created_at)],
    ]),
    actions(m, ctx, () => { location.hash = '#/models'; })]);
  if (Array.isArray(m.classes)) {
    const shown = m.classes.slice(0, 500);
    append(ctx.root, [h('h2', null, 'Classes'),
      h('ol', { class: 'classes', start: '0' }, shown.map((c) => h('li', null, c))),
      m.classes.length > shown.length ? h('p', { class: 'muted' }, `… and ${m.classes.length - shown.length} more`) : null]);
  } else {
    ctx.root.append(h('p', { class: 'muted' }, 'No labels file: predictions are class indices.'));
  }
}
