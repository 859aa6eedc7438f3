// A job's events as they happen. First GET /v1/jobs/{id}/events?follow=true read as
// Server-Sent Events through fetch() (so the bearer token goes along), reconnecting with
// Last-Event-ID after a drop; a server that answers that request with its JSON page instead
// (no streaming) is polled with ?after= from then on. Events reach onEvents once each, in
// seq order, whichever way they came.
import { rawFetch, get, responseError, ApiError, enc } from './api.js';
import { SseParser } from './sse.js';

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
let streaming = null; // null: not tried yet; false: this server answers JSON, so poll

export const isTerminal = (status) => TERMINAL.has(status);
const ends = (ev) => ev.type === 'status' && TERMINAL.has(ev.to);

// onEvents(list), onMode('stream' | 'poll' | 'ended' | 'stopped'), onError(e).
export function followEvents(jobId, { onEvents, onMode = () => {}, onError = () => {}, pollMs = 1000 }) {
  const ctl = new AbortController();
  const path = `/v1/jobs/${enc(jobId)}/events`;
  let last = 0;
  let ended = false;
  let retryMs = 1000;

  const take = (list) => {
    const fresh = list.filter((e) => e && Number.isInteger(e.seq) && e.seq > last);
    if (!fresh.length) return;
    last = fresh[fresh.length - 1].seq;
    if (fresh.some(ends)) ended = true;
    onEvents(fresh);
  };
  const sleep = (ms) => new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    ctl.signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });

  // true: the server streams (read until it closes); false: it answered the JSON page.
  async function stream() {
    const headers = { Accept: 'text/event-stream' };
    if (last) headers['Last-Event-ID'] = String(last);
    const res = await rawFetch(`${path}?follow=true&after=${last}`, { headers, signal: ctl.signal });
    if (!res.ok) throw await responseError(res);
    if (!(res.headers.get('Content-Type') || '').startsWith('text/event-stream')) {
      streaming = false;
      take((await res.json()).events || []);
      return false;
    }
    streaming = true;
    onMode('stream');
    const parser = new SseParser();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    while (!ended) {
      const { value, done } = await reader.read();
      if (done) break;
      const list = [];
      for (const m of parser.push(value)) {
        if (m.event === 'end') ended = true;
        else if (m.data) {
          try { list.push(JSON.parse(m.data)); } catch { /* not a JSON event: ignored */ }
        }
      }
      take(list);
    }
    if (ended) reader.cancel().catch(() => {});
    if (parser.retry !== null) retryMs = parser.retry;
    return true;
  }

  async function poll() {
    onMode('poll');
    while (!ctl.signal.aborted) {
      const page = await get(`${path}?after=${last}&limit=1000`, { signal: ctl.signal });
      take(page.events || []);
      if (page.more) continue;
      if (ended) return;
      await sleep(pollMs);
    }
  }

  (async () => {
    let backoff = 1000;
    while (!ctl.signal.aborted && !ended) {
      try {
        if (streaming === false || !(await stream())) {
          await poll();
          break;
        }
        backoff = 1000;
        if (!ended) await sleep(retryMs); // the stream closed early: resume after `last`
      } catch (e) {
        if (ctl.signal.aborted) break;
        onError(e);
        if (e instanceof ApiError && (e.status === 401 || e.status === 404)) break;
        await sleep(backoff);
        backoff = Math.min(2 * backoff, 15000);
      }
    }
    if (!ctl.signal.aborted) onMode(ended ? 'ended' : 'stopped');
  })();

  return {
    stop: () => ctl.abort(),
    // The job is over (its status says so): stop once what is left has been read.
    jobEnded: () => { ended = true; },
  };
}
