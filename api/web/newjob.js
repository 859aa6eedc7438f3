// New job: a dataset, a base model, a name and every hyper-parameter (empty = the BiT
// HyperRule decides). The rule's values are resolved by the server before starting, with
// POST /v1/jobs?dry_run=true (the same checks as creation, nothing created), so the form
// shows what would run and what the server would refuse.
import { get, call, enc } from './api.js';
import { h, fmtNum } from './dom.js';

// [field, label, kind, hint]: int, num, ints (a list), pair (two ints)
const FIELDS = [
  ['steps', 'Steps', 'int', 'the rule\'s schedule is scaled to it'],
  ['schedule', 'Schedule', 'ints', 'warm-up end, decays…, total steps'],
  ['batch', 'Batch', 'int', ''],
  ['batch_split', 'Batch split', 'int', 'micro-batches per batch; less memory'],
  ['base_lr', 'Base learning rate', 'num', ''],
  ['resolution', 'Resolution', 'pair', 'resize, crop (px)'],
  ['mixup', 'MixUp α', 'num', '0 turns it off'],
  ['examples_per_class', 'Examples per class', 'int', 'few-shot; 0 = all'],
  ['seed', 'Seed', 'int', ''],
  ['eval_every', 'Evaluate every', 'int', 'steps'],
  ['save_every', 'Checkpoint every', 'int', 'steps'],
];

function parse(kind, text) {
  const t = text.trim();
  if (t === '' || t === 'auto') return { value: undefined };
  const int = (s) => (/^[0-9]+$/.test(s) ? Number(s) : NaN);
  if (kind === 'int') {
    const v = int(t);
    return Number.isNaN(v) ? { error: 'a whole number' } : { value: v };
  }
  if (kind === 'num') {
    const v = Number(t);
    return Number.isFinite(v) ? { value: v } : { error: 'a number' };
  }
  const list = t.split(/[\s,]+/).filter(Boolean).map(int);
  if (list.some(Number.isNaN)) return { error: 'whole numbers separated by commas' };
  if (kind === 'pair' && list.length !== 2) return { error: 'two numbers: resize, crop' };
  return { value: list };
}

const shown = (v) => (Array.isArray(v) ? v.join(', ') : v === undefined || v === null ? '–' : fmtNum(v, 6));

export async function form(ctx) {
  const [{ datasets }, { models }] = await Promise.all([get('/v1/datasets'), get('/v1/models')]);
  const want = { dataset: ctx.query.get('dataset'), model: ctx.query.get('model') };
  const ready = datasets.filter((d) => d.status === 'ready');
  const dataset = h('select', { id: 'job-dataset', required: true, value: want.dataset || (ready[0] && ready[0].id) || '' },
    ready.map((d) => h('option', { value: d.id }, `${d.name} — ${d.num_classes} classes, ${d.splits?.train?.total ?? '?'} train images`)));
  const groups = [['base', 'Base models'], ['fine-tuned', 'Fine-tuned models']];
  const bases = models.filter((m) => !m.error);
  const model = h('select', { id: 'job-model', required: true, value: want.model || (bases[0] && bases[0].id) || '' },
    groups.map(([kind, label]) => h('optgroup', { label },
      bases.filter((m) => m.kind === kind).map((m) => h('option', { value: m.id }, `${m.name}${m.architecture ? ' — ' + m.architecture : ''}`)))));
  const name = h('input', { id: 'job-name', type: 'text', maxlength: '200', placeholder: 'default: the job id' });
  const inputs = {};
  const ruleCells = {};
  const errCells = {};
  const rows = FIELDS.map(([key, label, kind, hint]) => {
    inputs[key] = h('input', { id: 'hp-' + key, type: 'text', inputmode: kind === 'num' ? 'decimal' : 'numeric', placeholder: 'auto', autocomplete: 'off' });
    ruleCells[key] = h('td', { class: 'rule', id: 'rule-' + key }, '…');
    errCells[key] = h('span', { class: 'error' });
    return h('tr', null,
      h('th', { scope: 'row' }, h('label', { for: 'hp-' + key }, label), hint ? h('small', null, hint) : null),
      h('td', null, inputs[key], errCells[key]), ruleCells[key]);
  });
  const preview = h('p', { id: 'preview-status', class: 'muted', 'aria-live': 'polite' });
  const start = h('button', { type: 'submit', class: 'primary', id: 'job-start' }, 'Start');
  const formError = h('p', { class: 'error', id: 'job-error' });

  // The request as the form stands, or null while a field does not parse.
  function request() {
    const hp = {};
    let ok = true;
    for (const [key, , kind] of FIELDS) {
      const r = parse(kind, inputs[key].value);
      errCells[key].textContent = r.error ? ' ' + r.error : '';
      inputs[key].setAttribute('aria-invalid', r.error ? 'true' : 'false');
      if (r.error) ok = false;
      else if (r.value !== undefined) hp[key] = r.value;
    }
    const body = { dataset: dataset.value, base_model: model.value, hyperparameters: hp };
    if (name.value.trim()) body.name = name.value.trim();
    return ok && dataset.value && model.value ? body : null;
  }

  let seq = 0;
  let timer = 0;
  async function resolve() {
    const body = request();
    start.disabled = !body;
    if (!body) return;
    const mine = ++seq;
    preview.textContent = 'Resolving the HyperRule…';
    try {
      const r = await call('POST', '/v1/jobs?dry_run=true', body);
      if (mine !== seq || !ctx.alive()) return;
      const hp = (r && r.hyperparameters) || {};
      for (const [key] of FIELDS) ruleCells[key].textContent = key === 'examples_per_class' && hp[key] === 0 ? 'all' : shown(hp[key]);
      preview.textContent = `Resolved by the server: ${hp.steps ?? '?'} steps of ${hp.batch ?? '?'} images` +
        (hp.micro_batch ? ` (micro-batches of ${hp.micro_batch})` : '') + '.';
      formError.textContent = '';
    } catch (e) {
      if (mine !== seq || !ctx.alive()) return;
      preview.textContent = 'The server refuses these values:';
      formError.textContent = e.message;
    }
  }
  const changed = () => { clearTimeout(timer); timer = setTimeout(resolve, 300); };
  ctx.onLeave(() => clearTimeout(timer));

  const formEl = h('form', { id: 'job-form', class: 'card' },
    h('div', { class: 'grid2' },
      h('div', null, h('label', { for: 'job-dataset' }, 'Dataset'), dataset),
      h('div', null, h('label', { for: 'job-model' }, 'Base model'), model),
      h('div', null, h('label', { for: 'job-name' }, 'Name'), name)),
    h('h2', null, 'Hyper-parameters'),
    preview,
    h('div', { class: 'scroll' }, h('table', { class: 'hp' },
      h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Parameter'), h('th', { scope: 'col' }, 'Your value'), h('th', { scope: 'col' }, 'HyperRule'))),
      h('tbody', null, rows))),
    formError,
    h('div', { class: 'buttons' }, start));
  formEl.addEventListener('input', changed);
  formEl.addEventListener('change', changed);
  formEl.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = request();
    if (!body) return;
    start.disabled = true;
    formError.textContent = '';
    try {
      const job = await call('POST', '/v1/jobs', body);
      location.hash = `#/jobs/${enc(job.id)}`;
    } catch (err) {
      formError.textContent = err.message;
      start.disabled = false;
    }
  });

  ctx.root.append(h('h1', null, 'New fine-tune job'));
  if (!ready.length || !bases.length) {
    ctx.root.append(h('p', { class: 'warn' }, !ready.length ? 'Upload a dataset first (Datasets).' : 'No base model: put a BiT checkpoint in the models directory.'));
  }
  ctx.root.append(formEl);
  resolve();
}
