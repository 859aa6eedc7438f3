// text/event-stream parsing as the HTML standard's "event stream interpretation" describes,
// for a fetch() reader (EventSource cannot send an Authorization header). Lines end in CRLF,
// LF or CR; ':' lines are comments (heartbeats); a blank line dispatches the message.
export class SseParser {
  constructor() {
    this.buf = '';
    this.data = [];
    this.event = '';
    this.lastId = ''; // kept across messages, as the standard says: the Last-Event-ID to send
    this.retry = null;
    this.started = false;
  }

  // Feeds decoded text; returns the messages it completed, each {id, event, data}.
  push(text) {
    if (!this.started && text) {
      this.started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    const buf = this.buf + text;
    const out = [];
    let pos = 0;
    let nl = -2;
    let cr = -2; // next '\n' and '\r' at or after pos; -1: none left (searched once, not per line)
    for (;;) {
      if (nl !== -1 && nl < pos) nl = buf.indexOf('\n', pos);
      if (cr !== -1 && cr < pos) cr = buf.indexOf('\r', pos);
      const end = nl < 0 ? cr : cr < 0 ? nl : Math.min(nl, cr);
      if (end < 0) break;
      let next = end + 1;
      if (buf[end] === '\r') {
        if (end + 1 === buf.length) break; // maybe the first half of a CRLF: wait for more
        if (buf[end + 1] === '\n') next = end + 2;
      }
      this.line(buf.slice(pos, end), out);
      pos = next;
    }
    this.buf = buf.slice(pos);
    return out;
  }

  line(line, out) {
    if (line === '') {
      if (this.data.length) out.push({ id: this.lastId, event: this.event || 'message', data: this.data.join('\n') });
      this.data = [];
      this.event = '';
      return;
    }
    if (line[0] === ':') return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (field === 'data') this.data.push(value);
    else if (field === 'event') this.event = value;
    else if (field === 'id' && !value.includes('\0')) this.lastId = value;
    else if (field === 'retry' && /^[0-9]+$/.test(value)) this.retry = Number(value);
  }
}
