// Jobs: the list, and one job live - status, progress with ETA, plots of training loss,
// learning rate and validation top-1/top-5 over steps, the event log, cancel; once finished,
// per-class accuracy and the confusion matrix; the model it made.
import { get, call, enc, ApiError } from './api.js';
import { h, append, link, route, table, facts, badge, fmtTime, fmtDuration, fmtNum, fmtPct } from './dom.js';
import { followEvents, isTerminal } from './events.js';
import { chartLib, stepChart, addPoint, heatmap } from './charts.js';

const ACTIVE_MS = 2000;

function progressCell(j) {
  const p = j.progress || {};
  return h('span', { class: 'prog' }, h('progress', { max: '1', value: String(p.fraction || 0) }),
    ` ${p.step ?? 0} / ${p.total_steps || '?'}`);
}

export async function list(ctx) {
  const box = h('div');
  const more = h('div');
  const render = (jobs) => table(['Name', 'Status', 'Progress', 'Dataset', 'Base model', 'Model', 'Created'],
    jobs.map((j) => [
      link(route('jobs', j.id), j.name),
      badge(j.status),
      progressCell(j),
      j.dataset ? link(route('datasets', j.dataset), j.dataset) : '(deleted)',
      j.base_model,
      j.model ? link(route('models', j.model), j.model) : '–',
      fmtTime(j.created_at),
    ]), 'jobs');
  let timer = 0;
  const refresh = async () => {
    const page = await get('/v1/jobs?limit=50');
    if (!ctx.alive()) return;
    box.replaceChildren(page.jobs.length ? render(page.jobs) : h('p', { class: 'muted' }, 'No jobs yet.'));
    more.replaceChildren(page.next_after ? pager(page.next_after) : '');
    if (page.jobs.some((j) => !isTerminal(j.status))) timer = setTimeout(() => refresh().catch(() => {}), ACTIVE_MS * 2);
  };
  const pager = (after) => h('button', {
    type: 'button',
    onclick: async (e) => {
      const page = await get(`/v1/jobs?limit=50&after=${enc(after)}`);
      e.target.replaceWith(render(page.jobs), page.next_after ? pager(page.next_after) : '');
    },
  }, 'More');
  ctx.onLeave(() => clearTimeout(timer));
  ctx.root.append(h('div', { class: 'titlebar' }, h('h1', null, 'Jobs'), link('/jobs/new', 'New job')), box, more);
  await refresh();
}

function detail(ev) {
  switch (ev.type) {
    case 'train': return `loss ${fmtNum(ev.loss)} · learning rate ${fmtNum(ev.lr)}`;
    case 'eval': return `top-1 ${fmtPct(ev.val_top1)} · top-5 ${fmtPct(ev.val_top5)} · loss ${fmtNum(ev.val_loss)}`;
    case 'checkpoint': return ev.path || '';
    case 'status':
      return `${ev.from ? ev.from + ' → ' : ''}${ev.to}` + (ev.error_message ? `: ${ev.error_message}` : '') + (ev.note ? ` (${ev.note})` : '');
    default: {
      const { seq, time, type, step, ...rest } = ev;
      return JSON.stringify(rest);
    }
  }
}

function chartCard(id, title) {
  const canvas = h('canvas', { id, role: 'img', 'aria-label': title });
  return { canvas, card: h('figure', { class: 'card chart' }, h('figcaption', null, title), h('div', { class: 'plot' }, canvas)) };
}

// Per-class accuracy (worst first) and the confusion matrix, from the final evaluation.
function results(m) {
  const v = m.val || m;
  const per = (v.per_class || []).slice().sort((a, b) => a.accuracy - b.accuracy);
  const classes = (v.per_class || []).map((p) => p.class);
  const parts = [
    facts([['Examples', String(v.examples ?? '–')], ['Top-1', fmtPct(v.top1)], ['Top-5', fmtPct(v.top5)], ['Loss', fmtNum(v.loss)]]),
    h('h3', null, 'Per-class accuracy'),
    table(['Class', 'Examples', 'Accuracy'], per.map((p) => {
      const fill = h('span');
      fill.style.width = `${Math.round(100 * p.accuracy)}%`;
      return [p.class, String(p.count), h('span', { class: 'meter' }, h('span', { class: 'bar' }, fill), ' ', fmtPct(p.accuracy))];
    }), 'perclass'),
  ];
  if (Array.isArray(v.confusion) && classes.length <= 60) {
    parts.push(h('h3', null, 'Confusion matrix'), h('p', { class: 'muted' }, 'Rows: true class; columns: predicted class (numbers as in the rows).'),
      heatmap(classes, v.confusion));
  } else if (Array.isArray(v.confusion)) {
    const pairs = [];
    v.confusion.forEach((row, i) => row.forEach((n, j) => { if (i !== j && n) pairs.push([n, i, j]); }));
    pairs.sort((a, b) => b[0] - a[0]);
    parts.push(h('h3', null, 'Most frequent confusions'),
      table(['True', 'Predicted', 'Count'], pairs.slice(0, 30).map(([n, i, j]) => [classes[i], classes[j], String(n)])));
  }
  return parts;
}

export async function show(ctx) {
  const id = ctx.params[0];
  const path = `/v1/jobs/${enc(id)}`;
  let job = await get(path);
  const head = h('div', { class: 'titlebar' });
  const info = h('div');
  const bar = h('progress', { id: 'job-progress', max: '1', value: '0' });
  const progText = h('p', { id: 'job-progress-text', class: 'muted' });
  const buttons = h('div', { class: 'actions' });
  const errorBox = h('div');
  const live = h('span', { id: 'job-live', class: 'live' });
  const loss = chartCard('chart-loss', 'Training loss');
  const lr = chartCard('chart-lr', 'Learning rate');
  const val = chartCard('chart-val', 'Validation accuracy');
  const resultsBox = h('section', { id: 'job-results' });
  const hpBox = h('div');
  const logBody = h('tbody');
  const logBox = h('div', { class: 'scroll log' }, h('table', { id: 'job-events' },
    h('thead', null, h('tr', null, ['#', 'Time', 'Type', 'Step', 'Details'].map((t) => h('th', { scope: 'col' }, t)))), logBody));

  const charts = chartLib()
    ? { loss: stepChart(loss.canvas, [{ label: 'training loss' }]),
      lr: stepChart(lr.canvas, [{ label: 'learning rate' }]),
      val: stepChart(val.canvas, [{ label: 'top-1' }, { label: 'top-5' }], { percent: true }) }
    : null;
  if (!charts) ctx.notice('The charts library (/ui/chart.js) did not load: plots are off, the event log still runs.');
  ctx.onLeave(() => { if (charts) Object.values(charts).forEach((c) => c.destroy()); });

  let resultsLoaded = false;
  let timer = 0;
  function renderJob() {
    const p = job.progress || {};
    head.replaceChildren(h('h1', null, job.name), badge(job.status));
    info.replaceChildren(facts([
      ['Id', job.id],
      ['Dataset', job.dataset ? link(route('datasets', job.dataset), job.dataset) : '(deleted)'],
      ['Base model', link(route('models', job.base_model), job.base_model)],
      ['Model', job.model ? h('span', null, link(route('models', job.model), job.model), ' · ', link(`/classify?model=${enc(job.model)}`, 'classify with it')) : '–'],
      ['Created', fmtTime(job.created_at)],
      ['Started', fmtTime(job.started_at)],
      ['Finished', fmtTime(job.finished_at)],
    ]));
    bar.value = p.fraction || 0;
    let text = `Step ${p.step ?? 0} of ${p.total_steps || '?'} (${Math.round(100 * (p.fraction || 0))} %)`;
    if (job.status === 'running') {
      if (p.images_per_sec) text += ` · ${p.images_per_sec.toFixed(1)} images/s`;
      if (p.estimated_finish) {
        const left = (Date.parse(p.estimated_finish) - Date.now()) / 1000;
        text += ` · ETA ${new Date(p.estimated_finish).toLocaleTimeString()} (in ${fmtDuration(Math.max(0, left))})`;
      }
    } else if (job.status === 'queued') text += ' · waiting for the worker (one job runs at a time)';
    else if (job.finished_at && job.started_at) text += ` · took ${fmtDuration((Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000)}`;
    progText.textContent = text;
    buttons.replaceChildren();
    append(buttons, [
      !isTerminal(job.status) ? h('button', { type: 'button', id: 'job-cancel', class: 'danger', onclick: cancel }, 'Cancel') : null,
      isTerminal(job.status) ? h('button', { type: 'button', class: 'danger', onclick: remove }, 'Delete job') : null]);
    errorBox.replaceChildren(job.error ? h('p', { class: 'error' }, `${job.error.code}: ${job.error.message}`) : '');
    if (!hpBox.firstChild && job.hyperparameters && Object.keys(job.hyperparameters).length) {
      const req = job.requested || {};
      hpBox.append(h('h2', null, 'Hyper-parameters'), table(['Parameter', 'Value', 'From'],
        Object.entries(job.hyperparameters).map(([k, v]) => [k, Array.isArray(v) ? v.join(', ') : String(v), k in req ? 'you' : 'rule']), 'hp'));
    }
    if (isTerminal(job.status)) {
      follower.jobEnded();
      if (job.status === 'succeeded' && !resultsLoaded) {
        resultsLoaded = true;
        loadResults();
      }
    }
  }
  async function refresh() {
    clearTimeout(timer);
    try {
      job = await get(path);
    } catch (e) {
      if (ctx.alive()) ctx.notice(e.message);
    }
    if (!ctx.alive()) return;
    renderJob();
    if (!isTerminal(job.status)) timer = setTimeout(refresh, ACTIVE_MS);
  }
  async function loadResults() {
    resultsBox.replaceChildren(h('h2', null, 'Final evaluation'), h('p', { class: 'muted' }, 'Loading…'));
    try {
      const m = await get(`${path}/metrics`);
      resultsBox.replaceChildren(h('h2', null, 'Final evaluation'), ...results(m));
    } catch (e) {
      resultsBox.replaceChildren(h('h2', null, 'Final evaluation'), h('p', { class: 'warn', id: 'results-missing' },
        `Per-class accuracy and the confusion matrix are not available from this server (GET ${path}/metrics: ${e.message}).`));
    }
  }
  async function cancel() {
    try {
      job = await call('POST', `${path}/cancel`);
      renderJob();
    } catch (e) { ctx.notice(e.message); }
  }
  async function remove() {
    if (!confirm(`Delete the job "${job.name}", its events and checkpoints? (Its model stays.)`)) return;
    try {
      await call('DELETE', path);
      location.hash = '#/jobs';
    } catch (e) { ctx.notice(e.message); }
  }
  function onEvents(list) {
    const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
    let statusSeen = false;
    for (const ev of list) {
      logBody.append(h('tr', { class: 't-' + String(ev.type).replace(/[^a-z]/g, '') },
        h('td', null, String(ev.seq)), h('td', null, fmtTime(ev.time)), h('td', null, String(ev.type)),
        h('td', null, ev.step === null || ev.step === undefined ? '' : String(ev.step)), h('td', null, detail(ev))));
      if (!charts) continue;
      if (ev.type === 'train') {
        addPoint(charts.loss, 0, ev.step, ev.loss);
        addPoint(charts.lr, 0, ev.step, ev.lr);
      } else if (ev.type === 'eval') {
        addPoint(charts.val, 0, ev.step, ev.val_top1);
        addPoint(charts.val, 1, ev.step, ev.val_top5);
      }
      if (ev.type === 'status') statusSeen = true;
    }
    if (atBottom) logBox.scrollTop = logBox.scrollHeight;
    if (statusSeen) refresh();
  }
  const modes = { stream: 'live (event stream)', poll: 'live (polling)', ended: 'complete', stopped: 'updates stopped' };
  const follower = followEvents(id, {
    onEvents,
    onMode: (m) => {
      live.textContent = modes[m] || m;
      live.dataset.mode = m;
      live.dataset.modes = `${live.dataset.modes || ''} ${m}`.trim(); // the way updates came, for tests
    },
    onError: (e) => { if (!(e instanceof ApiError && e.status === 404)) ctx.notice('Events: ' + e.message); },
  });
  ctx.onLeave(() => { follower.stop(); clearTimeout(timer); });

  ctx.root.append(h('p', { class: 'crumbs' }, link('/jobs', 'Jobs'), ' / '), head, info,
    h('section', { class: 'card' }, bar, progText, buttons, errorBox),
    h('div', { class: 'charts' }, loss.card, lr.card, val.card),
    resultsBox,
    h('h2', null, 'Events ', live), logBox,
    hpBox);
  renderJob();
  if (!isTerminal(job.status)) timer = setTimeout(refresh, ACTIVE_MS);
}
