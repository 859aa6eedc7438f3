// DOM building without HTML strings: every value from the server becomes a text node or an
// attribute value, never markup (no HTML parsing from strings anywhere; tests/test_web_assets.c
// checks). Plus the few formatters every page uses.

// h('tr', {class: 'x', onclick: fn, title: s}, 'text', node, [more], null) -> element.
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  const later = [];
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = String(v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value') later.push(v); // a <select>'s value needs its options first
    else if (k === 'checked' || k === 'disabled' || k === 'hidden' || k === 'selected') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  for (const v of later) el.value = v;
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

// A hash link for the page's router; ids are URL-encoded.
export function link(path, ...children) {
  return h('a', { href: '#' + path }, ...children);
}

export function route(...parts) {
  return '/' + parts.map((p) => encodeURIComponent(String(p))).join('/');
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '–';
  const u = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(n < 10 ? 1 : 0) : String(n)) + ' ' + u[i];
}

export function fmtTime(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString();
}

export function fmtDuration(seconds) {
  if (!(seconds >= 0) || !isFinite(seconds)) return '–';
  const s = Math.round(seconds);
  if (s < 60) return s + ' s';
  const m = Math.floor(s / 60);
  if (m < 60) return m + ' min ' + (s % 60) + ' s';
  return Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
}

export function fmtNum(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return '–';
  if (typeof x !== 'number') return String(x);
  return Number.isInteger(x) ? String(x) : String(Number(x.toPrecision(digits))); // no trailing zeros
}

export function fmtPct(x) {
  return x === null || x === undefined ? '–' : (100 * x).toFixed(1) + ' %';
}

// A table in a horizontally scrollable box (narrow screens): heads are strings, rows arrays.
export function table(heads, rows, cls) {
  return h('div', { class: 'scroll' },
    h('table', { class: cls },
      h('thead', null, h('tr', null, heads.map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, rows.map((r) => (r instanceof Node ? r : h('tr', null, r.map((c) => h('td', null, c))))))));
}

// A <dl> of [term, value] pairs.
export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
}

export function badge(status) {
  return h('span', { class: 'badge s-' + String(status).replace(/[^a-z-]/g, '') }, status);
}

// A drop zone around a file input: click or keyboard opens the picker, dropped files go to onFiles.
export function dropZone(input, label, onFiles) {
  const zone = h('label', { class: 'drop' }, input, h('span', null, label));
  const stop = (e) => { e.preventDefault(); e.stopPropagation(); };
  zone.addEventListener('dragover', (e) => { stop(e); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    stop(e);
    zone.classList.remove('over');
    if (e.dataTransfer && e.dataTransfer.files.length) onFiles([...e.dataTransfer.files]);
  });
  input.addEventListener('change', () => { if (input.files.length) onFiles([...input.files]); });
  return zone;
}
