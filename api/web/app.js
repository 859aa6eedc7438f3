// The page's shell: a hash router over the pages (#/models, #/datasets/ID, #/jobs/new, ...),
// the notice line, and the token dialog. Each page renders into a fresh container and
// registers what must stop (streams, timers, charts) when the user leaves it.
import { setTokenPrompt, setToken, token, ApiError } from './api.js';
import { h, clear, link } from './dom.js';
import * as models from './models.js';
import * as datasets from './datasets.js';
import * as jobs from './jobs.js';
import * as newjob from './newjob.js';
import * as classify from './classify.js';

const routes = [
  [/^\/models$/, 'models', models.list],
  [/^\/models\/([^/]+)$/, 'models', models.show],
  [/^\/datasets$/, 'datasets', datasets.list],
  [/^\/datasets\/([^/]+)$/, 'datasets', datasets.show],
  [/^\/jobs$/, 'jobs', jobs.list],
  [/^\/jobs\/new$/, 'new', newjob.form],
  [/^\/jobs\/([^/]+)$/, 'jobs', jobs.show],
  [/^\/classify$/, 'classify', classify.page],
];

const $ = (id) => document.getElementById(id);
let leaving = [];

export function notice(message, kind = 'error') {
  const el = $('notice');
  el.className = 'notice ' + kind;
  el.replaceChildren(h('span', null, message), h('button', { type: 'button', class: 'quiet', 'aria-label': 'dismiss', onclick: () => { el.hidden = true; } }, '×'));
  el.hidden = false;
}

export function describe(e) {
  if (e instanceof ApiError) return e.status ? `${e.message} (HTTP ${e.status}, ${e.code})` : e.message;
  return String((e && e.message) || e);
}

async function render() {
  for (const fn of leaving.splice(0)) {
    try { fn(); } catch { /* a page's cleanup must not block the next page */ }
  }
  const [path, qs] = (location.hash.slice(1) || '/models').split('?');
  $('notice').hidden = true;
  const main = clear($('main'));
  const root = h('div', { class: 'page' });
  main.append(root);
  let alive = true;
  leaving.push(() => { alive = false; });
  for (const [re, nav, page] of routes) {
    const m = re.exec(path);
    if (!m) continue;
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('here', a.dataset.nav === nav);
    const ctx = {
      root,
      query: new URLSearchParams(qs || ''),
      params: m.slice(1).map(decodeURIComponent),
      alive: () => alive,
      onLeave: (fn) => (alive ? leaving.push(fn) : fn()),
      notice,
    };
    try {
      await page(ctx);
    } catch (e) {
      if (alive) notice(describe(e));
    }
    return;
  }
  root.append(h('h1', null, 'No such page'), h('p', null, link('/models', 'Models')));
}

// The token dialog: resolves once a token is stored, rejects when the user gives none.
function promptToken(rejected) {
  return new Promise((resolve, reject) => {
    const dlg = $('token-dialog');
    const input = $('token-input');
    $('token-rejected').hidden = !rejected;
    $('token-forget').hidden = !token();
    input.value = '';
    const done = (t) => {
      $('token-form').onsubmit = null;
      $('token-cancel').onclick = null;
      $('token-forget').onclick = null;
      dlg.oncancel = null;
      if (dlg.open) dlg.close();
      if (t) resolve(t);
      else reject(new ApiError(401, 'unauthorized', 'This server needs an API token (the Token button asks again).'));
    };
    $('token-form').onsubmit = (e) => {
      e.preventDefault();
      const t = input.value.trim();
      if (!t) return;
      setToken(t);
      done(t);
    };
    $('token-cancel').onclick = () => done(null);
    $('token-forget').onclick = () => { setToken(''); done(null); };
    dlg.oncancel = (e) => { e.preventDefault(); done(null); };
    if (!dlg.open) dlg.showModal();
    input.focus();
  });
}

setTokenPrompt(promptToken);
$('token-button').addEventListener('click', () => promptToken(false).then(render, () => {}));
window.addEventListener('hashchange', render);
render();
