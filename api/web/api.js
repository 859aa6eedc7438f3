// The HTTP API from the page: JSON calls, uploads with progress (XMLHttpRequest, whose upload
// events fetch() lacks) and the bearer token. The token lives in sessionStorage (this tab
// only); a 401 asks for it once, through the prompt app.js installs, and the call is retried.

const TOKEN_KEY = 'bitd.token';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const token = () => sessionStorage.getItem(TOKEN_KEY) || '';
export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

let prompt = () => Promise.reject(new ApiError(401, 'unauthorized', 'This server needs an API token.'));
let asking = null;

// fn(rejected) resolves once a token is stored, or rejects when the user gives none.
export function setTokenPrompt(fn) {
  prompt = fn;
}

// Every request that meets a 401 while the dialog is open waits for the same answer.
function askToken(rejected) {
  if (!asking) asking = prompt(rejected).finally(() => { asking = null; });
  return asking;
}

// fetch() with the token; on 401 asks for one (again, if the one sent was refused) and retries.
export async function rawFetch(path, init = {}) {
  for (;;) {
    const sent = token();
    const headers = new Headers(init.headers || {});
    if (sent) headers.set('Authorization', 'Bearer ' + sent);
    const res = await fetch(path, { ...init, headers, cache: 'no-store', credentials: 'same-origin' });
    if (res.status !== 401) return res;
    if (token() !== sent) continue; // a new token was entered meanwhile
    await askToken(sent !== '');
  }
}

function errorOf(status, text) {
  let e = null;
  try { e = JSON.parse(text).error; } catch { /* not JSON */ }
  return new ApiError(status, (e && e.code) || 'http_' + status,
    (e && e.message) || (status ? `HTTP ${status}` : 'the server did not answer'));
}

export async function responseError(res) {
  return errorOf(res.status, await res.text());
}

// -> {status, data}; throws ApiError on a non-2xx answer.
export async function send(method, path, body, opts = {}) {
  const init = { method, headers: { Accept: 'application/json' }, signal: opts.signal };
  if (body instanceof FormData || body instanceof Blob) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  const res = await rawFetch(path, init);
  const text = await res.text();
  if (!res.ok) throw errorOf(res.status, text);
  return { status: res.status, data: text ? JSON.parse(text) : null };
}

export const call = async (method, path, body, opts) => (await send(method, path, body, opts)).data;
export const get = (path, opts) => call('GET', path, undefined, opts);

// POSTs a file as the raw body. onProgress(loaded, total, phase): phase 'upload' while bytes
// go out, 'server' once they are all sent and the server works on them.
export function upload(path, file, type, onProgress) {
  const once = () => new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open('POST', path);
    if (token()) x.setRequestHeader('Authorization', 'Bearer ' + token());
    x.setRequestHeader('Content-Type', type);
    x.setRequestHeader('Accept', 'application/json');
    x.upload.addEventListener('progress', (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size, 'upload'));
    x.upload.addEventListener('load', () => onProgress(file.size, file.size, 'server'));
    x.addEventListener('load', () => resolve({ status: x.status, text: x.responseText }));
    x.addEventListener('error', () => reject(new ApiError(0, 'network',
      'The upload broke off: the connection closed (a body over the server\'s limit is refused as soon as it is exceeded).')));
    x.addEventListener('abort', () => reject(new ApiError(0, 'aborted', 'The upload was cancelled.')));
    x.send(file);
  });
  return (async () => {
    for (;;) {
      const sent = token();
      const r = await once();
      if (r.status === 401) {
        if (token() === sent) await askToken(sent !== '');
        continue;
      }
      if (r.status < 200 || r.status > 299) throw errorOf(r.status, r.text);
      return JSON.parse(r.text);
    }
  })();
}

export const enc = encodeURIComponent;
