#!/usr/bin/env python3
"""The web page in a real browser (headless Chromium driven by Selenium) against a real `bit serve`.

Starts `bit serve` with an API token on an ephemeral port (temp data dir, the repository's
default base model bitd-fashion-r23 as its only model), opens the page, answers the token dialog (a wrong token first), uploads
a PNG class-folder tar through the file input, starts a short job from the form, waits for it
to finish and compares the loss, learning-rate and validation plots' data points with the
job's events from the API, classifies images through the page (file input, drop and paste)
and compares the top labels with the API's, checks that names with markup and quotes render
as literal text with no script run and no CSP violation, and writes screenshots of each page
at 1280x800 and 390x844 (BIT_WEB_SHOTS, default tests/web-shots; the desktop ones are
docs/ui/). Ends with "tally: P passed, F failed".
"""
import argparse
import base64
import gzip
import io
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zlib

HOSTILE = '<img src=x onerror=alert(1)> "dq" \'sq\''
# A job's name becomes its model's and follows the registry's rule (letters, digits, . _ -): the
# hostile one is refused, and the refusal, which quotes it, must show as text too.
JOB_NAME = 'colours-job.1'
TOKEN = 'bitd-web-test-token-0123456789'
DESKTOP = (1280, 800)
PHONE = (390, 844)
BASE = 'bitd-fashion-r23'  # the repository's default base model (models/README.md)

passed = failed = 0


def check(name, cond, detail=''):
    global passed, failed
    if cond:
        passed += 1
        print('ok   ' + name, flush=True)
    else:
        failed += 1
        print('FAIL ' + name + (': ' + str(detail) if detail != '' else ''), flush=True)
    return bool(cond)


def done():
    print(f'tally: {passed} passed, {failed} failed', flush=True)
    sys.exit(1 if failed else 0)


# ---------------------------------------------------------------- fixtures

def png(w, h, pixel):
    rows = b''.join(b'\x00' + b''.join(bytes(pixel(x, y)) for x in range(w)) for y in range(h))

    def chunk(t, d):
        return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d) & 0xffffffff)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)) +
            chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))


def colour_png(c, seed):
    r = random.Random(seed)
    base = [40, 40, 40]
    base[c] = 210
    return png(40, 32, lambda x, y: [min(255, v + r.randrange(30)) for v in base])


CLASSES = ['green', 'red', HOSTILE]  # channel 1, 0, 2; sorted order: '<img…' first
CHANNEL = {'red': 0, 'green': 1, HOSTILE: 2}
BAD_FILE = 'red/bad<b>"x".png'


def make_dataset(path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as t:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        for cls in CLASSES:
            for i in range(10):
                add(f'{cls}/{i}.png', colour_png(CHANNEL[cls], 100 * CHANNEL[cls] + i))
        add(BAD_FILE, b'\x89PNG\r\n\x1a\nnot really a png')
        add('readme.txt', b'not in a class folder')
    with open(path, 'wb') as f:
        f.write(buf.getvalue())


# ---------------------------------------------------------------- the server and its API

class Api:
    def __init__(self, port):
        self.base = f'http://127.0.0.1:{port}'

    def req(self, method, path, body=None, ctype=None, token=TOKEN, accept=None):
        r = urllib.request.Request(self.base + path, data=body, method=method)
        if accept:
            r.add_header('Accept', accept)
        if token:
            r.add_header('Authorization', 'Bearer ' + token)
        if ctype:
            r.add_header('Content-Type', ctype)
        try:
            with urllib.request.urlopen(r, timeout=60) as res:
                return res.status, res.headers, res.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def json(self, method, path, obj=None):
        st, _, body = self.req(method, path, json.dumps(obj).encode() if obj is not None else None,
                               'application/json' if obj is not None else None)
        return st, (json.loads(body) if body else None)

    def events(self, job):
        out, after = [], 0
        while True:
            st, page = self.json('GET', f'/v1/jobs/{job}/events?after={after}&limit=1000')
            if st != 200:
                return None
            out += page['events']
            if not page['more'] or not page['events']:
                return out
            after = page['events'][-1]['seq']

    def classify(self, model, files):
        boundary = uuid.uuid4().hex
        body = b''
        for name, data, ctype in files:
            body += (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f'Content-Type: {ctype}\r\n\r\n').encode() + data + b'\r\n'
        body += f'--{boundary}--\r\n'.encode()
        st, _, out = self.req('POST', f'/v1/models/{model}/classify?top_k=3', body,
                              f'multipart/form-data; boundary={boundary}')
        return st, json.loads(out)


def start_server(bit, tmp, srcdir):
    """bit serve with the repository's default base model as its only model."""
    models = os.path.join(tmp, 'models')
    os.makedirs(models)
    for ext in ('.npz', '.labels.txt', '.json'):
        shutil.copy(os.path.join(srcdir, 'models', BASE + ext), os.path.join(models, BASE + ext))
    log = open(os.path.join(tmp, 'serve.log'), 'w+')
    env = dict(os.environ, BIT_API_TOKEN=TOKEN)
    p = subprocess.Popen([bit, 'serve', '--listen', '127.0.0.1:0', '--data-dir', os.path.join(tmp, 'var'),
                          '--models-dir', models, '--train-threads', '1', '--http-threads', '8'],
                         stdout=subprocess.DEVNULL, stderr=log, env=env)
    for _ in range(400):
        time.sleep(0.025)
        log.seek(0)
        m = re.search(r'"url":"http://127\.0\.0\.1:(\d+)', log.read())
        if m:
            return p, int(m.group(1))
        if p.poll() is not None:
            break
    log.seek(0)
    print(log.read())
    raise SystemExit('bit serve did not start')


def page_check(api):
    """bit serve serves the page at / to a browser with its headers, without a token; a client
    that does not ask for HTML is pointed to the API instead."""
    st, headers, body = api.req('GET', '/', token=None)
    check('GET / without Accept: text/html points to GET /v1', st == 404 and
          b'GET /v1 lists the routes' in body, (st, body[:200]))
    st, headers, _ = api.req('GET', '/', token=None, accept='text/html,application/xhtml+xml,*/*;q=0.8')
    check('bit serve serves the page at / without a token', st == 200 and
          headers.get('Content-Type', '').startswith('text/html') and
          "script-src 'self'" in headers.get('Content-Security-Policy', '') and
          headers.get('X-Content-Type-Options') == 'nosniff', (st, dict(headers)))
    if st != 200:
        done()


# ---------------------------------------------------------------- the browser

HOOKS = r"""
window.__t = {alerts: [], csp: [], errors: [], confirms: []};
window.alert = (m) => { window.__t.alerts.push('alert ' + String(m)); };
window.prompt = (m) => { window.__t.alerts.push('prompt ' + String(m)); return null; };
window.confirm = (m) => { window.__t.confirms.push(String(m)); return true; };
document.addEventListener('securitypolicyviolation', (e) =>
  window.__t.csp.push(e.violatedDirective + ' blocked ' + e.blockedURI + ' at ' + e.sourceFile + ':' + e.lineNumber));
window.addEventListener('error', (e) => window.__t.errors.push(String(e.message)));
window.addEventListener('unhandledrejection', (e) =>
  window.__t.errors.push('unhandled rejection: ' + String((e.reason && e.reason.message) || e.reason)));
"""


def browser(chromium, chromedriver, profile):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    o = webdriver.ChromeOptions()
    o.binary_location = chromium
    # the machine's network is closed: without the background-networking flags Chromium keeps
    # trying Google's hosts
    for f in ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
              '--disable-background-networking', '--disable-component-update', '--disable-sync',
              '--disable-extensions', '--disable-default-apps', f'--user-data-dir={profile}',
              '--window-size=1280,800', '--force-color-profile=srgb', '--lang=en-US']:
        o.add_argument(f)
    o.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    d = webdriver.Chrome(service=Service(chromedriver), options=o)
    d.execute_cdp_cmd('Page.addScriptToEvaluateOnNewDocument', {'source': HOOKS})
    return d


class Page:
    def __init__(self, d, base, shots):
        self.d, self.base, self.shots = d, base, shots
        self.console = []
        self.viewport = None

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def wait(self, what, script, *args, timeout=30.0):
        end = time.time() + timeout
        while time.time() < end:
            try:
                v = self.js(script, *args)
                if v:
                    return v
            except Exception:  # the page may be between renders
                pass
            time.sleep(0.1)
        check(what, False, f'not within {timeout:.0f} s')
        return None

    def go(self, hash_):
        self.js('location.hash = arguments[0]', hash_)

    def size(self, wh, mobile):
        self.viewport = wh
        self.d.execute_cdp_cmd('Emulation.setDeviceMetricsOverride',
                               {'width': wh[0], 'height': wh[1], 'deviceScaleFactor': 1, 'mobile': mobile})

    def text(self, sel):
        return self.js('const e = document.querySelector(arguments[0]); return e ? e.textContent : null', sel)

    def shot(self, name, scroll=None):
        kind = 'desktop' if self.viewport == DESKTOP else 'phone'
        self.js('const e = arguments[0] && document.querySelector(arguments[0]);'
                'if (e) e.scrollIntoView(); else window.scrollTo(0, 0)', scroll)
        time.sleep(0.3)
        path = os.path.join(self.shots, f'{kind}-{name}.png')
        self.d.save_screenshot(path)
        with open(path, 'rb') as f:
            w, h = struct.unpack('>II', f.read(24)[16:24])
        check(f'screenshot {kind}-{name} is {self.viewport[0]}x{self.viewport[1]}', (w, h) == self.viewport, (w, h))
        overflow = self.js('return document.documentElement.scrollWidth')
        check(f'{kind} {name}: no sideways scrolling of the page', overflow <= self.viewport[0], overflow)
        self.safe(f'{kind} {name}')

    def safe(self, where):
        """Markup in names stayed text: no injected element, no script ran, no CSP violation."""
        injected = self.js("return [...document.querySelectorAll('img')].filter(i => i.getAttribute('src') !== '/ui/icon.svg').length"
                           " + document.querySelectorAll('[onerror], b').length")
        t = self.js('return window.__t')
        check(f'{where}: no element made from server data, no alert, no CSP violation, no script error',
              injected == 0 and not t['alerts'] and not t['csp'] and not t['errors'], (injected, t))

    def drain_console(self):
        self.console += self.d.get_log('browser')


def has_literal(page, sel, text):
    return page.js('return [...document.querySelectorAll(arguments[0])].some(e => e.textContent.includes(arguments[1]))',
                   sel, text)


# ---------------------------------------------------------------- the flow

def token_flow(p):
    p.d.get(p.base + '/#/models')
    p.wait('the token dialog opens on the first 401', "return document.getElementById('token-dialog').open")
    p.shot('token')
    p.js("document.getElementById('token-input').value = 'wrong-token-0123456789'")
    p.js("document.querySelector('#token-form button[type=submit]').click()")
    p.wait('a refused token asks again, saying so',
           "return document.getElementById('token-dialog').open && !document.getElementById('token-rejected').hidden")
    p.js("document.getElementById('token-input').value = arguments[0]", TOKEN)
    p.js("document.querySelector('#token-form button[type=submit]').click()")
    p.wait('the models page lists the base model once the token is in',
           "return [...document.querySelectorAll('table.models td a')].some(a => a.textContent === '" + BASE + "')")
    check('the token is kept in sessionStorage', p.js("return sessionStorage.getItem('bitd.token')") == TOKEN)


def upload_dataset(p, api, tar):
    p.go('#/datasets')
    p.wait('the datasets page', "return document.getElementById('dataset-file')")
    name = HOSTILE + ' set'
    p.js("document.getElementById('dataset-name').value = arguments[0]", name)
    from selenium.webdriver.common.by import By
    p.d.find_element(By.ID, 'dataset-file').send_keys(tar)
    p.wait('the upload finishes and the summary shows',
           "return (document.getElementById('upload-status').textContent || '').startsWith('Stored')", timeout=60)
    check('the upload progress bar reached the end', p.js("return document.getElementById('upload-progress').value") == 1)
    st, lst = api.json('GET', '/v1/datasets')
    ds = next((x for x in lst['datasets'] if x['name'] == name), None)
    check('the dataset is stored under its name with markup as given', ds is not None, lst)
    if not ds:
        done()
    check('the summary lists every class by its literal name, markup included',
          all(has_literal(p, '#upload-result table.classes td', c) for c in CLASSES))
    counts = p.js("return [...document.querySelectorAll('#upload-result table.classes tbody tr')]"
                  ".map(r => [...r.children].map(c => c.textContent))")
    want = [[str(i), c, str(ds['splits']['train']['per_class'][c]), str(ds['splits']['val']['per_class'][c])]
            for i, c in enumerate(ds['classes'])]
    check('class counts per split equal the API summary', counts == want, (counts, want))
    check('the undecodable file is listed by its literal name', has_literal(p, '#upload-result ul.files li', BAD_FILE))
    check('median image size shown', has_literal(p, '#upload-result dd', '40 × 32 px'))
    check('the stored list shows the dataset name as text', has_literal(p, 'table.datasets td a', name))
    p.shot('datasets')
    p.go(f'#/datasets/{ds["id"]}')
    p.wait('the dataset page', "return document.querySelector('h1') && document.querySelector('h1').textContent === arguments[0]", name)
    p.shot('dataset')
    return ds


def start_job(p, api, ds):
    p.go(f'#/jobs/new?dataset={ds["id"]}&model={BASE}')
    status = p.wait('the HyperRule preview settles',
                    "const s = document.getElementById('preview-status'); const t = s && s.textContent;"
                    "return t && !t.startsWith('Resolving') ? t : null", timeout=90)
    check('the HyperRule preview comes from the server\'s dry run', status and status.startswith('Resolved by the server'), status)
    rule = p.js("return Object.fromEntries([...document.querySelectorAll('td.rule')].map(c => [c.id.slice(5), c.textContent]))")
    st, dr = api.json('POST', '/v1/jobs?dry_run=true', {'dataset': ds['id'], 'base_model': BASE})
    check('dry run: the form shows the values the server resolves', st == 200 and all(
        rule[k] == ', '.join(map(str, dr['hyperparameters'][k])) for k in ('schedule', 'resolution')) and
        rule['batch'] == str(dr['hyperparameters']['batch']) and rule['steps'] == str(dr['hyperparameters']['steps']), (st, rule, dr))
    st, jobs = api.json('GET', '/v1/jobs')
    check('the dry runs created no job', st == 200 and not jobs['jobs'], jobs)
    p.js("document.getElementById('preview-status').textContent = '';"  # only the next answer counts
         "const e = document.getElementById('job-name'); e.value = arguments[0];"
         "e.dispatchEvent(new Event('input', {bubbles: true}))", HOSTILE + ' job')
    verdict = p.wait('the preview answers for a name with markup',
                     "const t = document.getElementById('preview-status').textContent;"
                     "const e = document.getElementById('job-error').textContent;"
                     "return t.startsWith('The server refuses') && e.includes(arguments[0]) ? 'refused'"
                     " : t.startsWith('Resolved') && !e ? 'accepted' : null", HOSTILE + ' job')
    check('a job name with markup: refused by the name rule, the message quoting it as text', verdict == 'refused', verdict)
    p.safe('refused job name')
    p.js("const s = document.getElementById('hp-seed'); s.value = 'abc'; s.dispatchEvent(new Event('input', {bubbles: true}))")
    p.wait('a value that does not parse is flagged and blocks Start',
           "return document.getElementById('job-start').disabled && document.getElementById('hp-seed').getAttribute('aria-invalid') === 'true'")
    values = {'job-name': JOB_NAME, 'hp-seed': '', 'hp-steps': '24', 'hp-batch': '8', 'hp-base_lr': '0.05',
              'hp-resolution': '64, 48', 'hp-eval_every': '8', 'hp-save_every': '24'}
    for k, v in values.items():
        p.js("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
             "e.dispatchEvent(new Event('input', {bubbles: true}))", k, v)
    p.wait('Start is enabled once every value parses', "return !document.getElementById('job-start').disabled")
    time.sleep(0.5)
    p.shot('newjob')
    p.js("document.getElementById('job-start').click()")
    jid = p.wait('starting the job opens its page', "const m = /^#\\/jobs\\/(job_[0-9a-f]+)$/.exec(location.hash); return m && m[1]")
    if not jid:
        done()
    st, job = api.json('GET', f'/v1/jobs/{jid}')
    check('the job got the form\'s values', job['name'] == JOB_NAME and job['requested'] ==
          {'steps': 24, 'batch': 8, 'base_lr': 0.05, 'resolution': [64, 48], 'eval_every': 8, 'save_every': 24}, job)
    return jid


def chart_points(p, cid, i):
    return p.js("const c = Chart.getChart(arguments[0]); return c ? c.data.datasets[arguments[1]].data.map(q => [q.x, q.y]) : null",
                cid, i)


def watch_job(p, api, jid):
    p.wait('the job page shows the job name as literal text',
           "const h = document.querySelector('h1'); return h && h.textContent === arguments[0]", JOB_NAME)
    p.wait('the job succeeds on the page',
           "return document.querySelector('.badge') && document.querySelector('.badge').textContent === 'succeeded'"
           " && document.getElementById('job-live').dataset.mode === 'ended'", timeout=240)
    time.sleep(0.5)  # one animation frame for the last chart update
    st, headers, _ = api.req('GET', f'/v1/jobs/{jid}/events?follow=true')
    streams = headers.get('Content-Type', '').startswith('text/event-stream')
    modes = p.js("return document.getElementById('job-live').dataset.modes")
    print(f'     live updates: {modes} (the server {"streams" if streams else "answers JSON to"} events?follow=true)')
    check('live updates came the way the server offers (event stream, else polling)',
          modes and set(modes.split()[:-1]) == {'stream' if streams else 'poll'} and modes.split()[-1] == 'ended', modes)
    events = api.events(jid)
    train = [e for e in events if e['type'] == 'train']
    evals = [e for e in events if e['type'] == 'eval']
    check('the job trained and evaluated', len(train) >= 10 and len(evals) >= 2, (len(train), len(evals)))
    check('loss plot points = the train events (step, loss)', chart_points(p, 'chart-loss', 0) == [[e['step'], e['loss']] for e in train])
    check('learning-rate plot points = the train events (step, lr)', chart_points(p, 'chart-lr', 0) == [[e['step'], e['lr']] for e in train])
    check('top-1 plot points = the eval events', chart_points(p, 'chart-val', 0) == [[e['step'], e['val_top1']] for e in evals])
    check('top-5 plot points = the eval events', chart_points(p, 'chart-val', 1) == [[e['step'], e['val_top5']] for e in evals])
    inked = p.js("const c = document.getElementById('chart-loss'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                 "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n")
    check('the loss plot is drawn on its canvas', inked > 500, inked)
    seqs = p.js("return [...document.querySelectorAll('#job-events tbody tr')].map(r => Number(r.children[0].textContent))")
    check('the event log lists every event once, in order', seqs == [e['seq'] for e in events], (seqs, len(events)))
    check('the progress bar is full', p.js("return document.getElementById('job-progress').value") == 1)
    st, job = api.json('GET', f'/v1/jobs/{jid}')
    check('the page links the model the job made', job['model'] and p.js(
        "return !!document.querySelector('a[href=\"#/models/' + arguments[0] + '\"]')", job['model']))
    st, _, body = api.req('GET', f'/v1/jobs/{jid}/metrics')
    check('the job\'s final metrics are served', st == 200, st)
    metrics = json.loads(body) if st == 200 else {'val': {'per_class': []}}
    p.wait('per-class accuracy and the confusion matrix', "return document.querySelector('table.heatmap')")
    check('the confusion matrix has a row per class, names as text',
          p.js("return document.querySelectorAll('table.heatmap tbody tr').length") == len(CLASSES) and
          has_literal(p, 'table.heatmap tbody th', HOSTILE))
    shown = p.js("return [...document.querySelectorAll('table.perclass tbody tr')].map(r => [r.children[0].textContent, r.children[1].textContent])")
    want = sorted([[c['class'], str(c['count'])] for c in metrics['val']['per_class']])
    check('per-class accuracy lists the metrics\' classes and counts', sorted(shown or []) == want, (shown, want))
    p.shot('job')
    p.shot('job-results', scroll='#job-results')
    return job['model']


def classify(p, api, model, tmp):
    red = colour_png(0, 4242)
    green = colour_png(1, 4343)
    files = {'red.png': red, 'green.png': green}
    paths = []
    for n, b in files.items():
        paths.append(os.path.join(tmp, n))
        with open(paths[-1], 'wb') as f:
            f.write(b)
    p.go(f'#/classify?model={model}')
    p.wait('the classify page', "return document.getElementById('classify-files')")
    from selenium.webdriver.common.by import By
    p.d.find_element(By.ID, 'classify-files').send_keys('\n'.join(paths))
    p.wait('both images get predictions', "return document.querySelectorAll('.result .pred.best').length === 2", timeout=60)
    labels = p.js("return [...document.querySelectorAll('.result')].map(r => r.querySelector('.pred.best .label').textContent)")
    st, want = api.classify(model, [('red.png', red, 'image/png'), ('green.png', green, 'image/png')])
    api_labels = [r['predictions'][0]['label'] for r in want['results']]
    check('top labels on the page = the API\'s answer', st == 200 and labels == api_labels, (labels, api_labels))
    check('the model learnt the colours', api_labels == ['red', 'green'], api_labels)
    scores = p.js("return [...document.querySelectorAll('.result[data-index=\"0\"] .score')].map(s => parseFloat(s.textContent))")
    api_scores = [100 * q['score'] for q in want['results'][0]['predictions']]
    check('scores shown = the API\'s (to the 0.01 % shown)', len(scores) == 3 and all(abs(a - b) <= 0.0051 for a, b in zip(scores, api_scores)),
          (scores, api_scores))
    check('class names with markup show as text in the bars', has_literal(p, '.pred .label', HOSTILE))
    check('the timing is shown', 'ms on the server' in (p.text('#classify-status') or ''))
    p.shot('classify')
    # paste and drop reach the same code through clipboard and drag events
    for how in ('paste', 'drop'):
        p.js("""const b = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
                const dt = new DataTransfer(); dt.items.add(new File([b], 'from-' + arguments[1] + '.png', {type: 'image/png'}));
                document.getElementById('classify-results').replaceChildren();
                if (arguments[1] === 'paste') document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true}));
                else document.querySelector('.drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));""",
             base64.b64encode(green).decode(), how)
        got = p.wait(f'an image given by {how} is classified',
                     "const e = document.querySelector('.result .pred.best .label'); return e && e.textContent")
        check(f'{how}: top label = the API\'s', got == api_labels[1], got)


def sse_parser(p):
    out = p.d.execute_async_script("""const done = arguments[arguments.length - 1];
      import('/ui/sse.js').then(({ SseParser }) => {
        const s = new SseParser(), got = [];
        for (const c of ['\\ufeffid: 1\\r', '\\nevent: status\\r\\ndata: {"a":', '1}\\r\\n\\r\\n: heartbeat\\n\\n',
                         'data: x\\ndata: y\\rretry: 50\\r\\r', 'id: 7\\ndata:z\\n', '\\n', 'data: cut off'])
          got.push(...s.push(c));
        done({ got, retry: s.retry, last: s.lastId });
      }, (e) => done({ error: String(e) }));""")
    check('the text/event-stream parser: CRLF/CR/LF, split chunks, comments, ids, retry', out == {
        'got': [{'id': '1', 'event': 'status', 'data': '{"a":1}'}, {'id': '1', 'event': 'message', 'data': 'x\ny'},
                {'id': '7', 'event': 'message', 'data': 'z'}], 'retry': 50, 'last': '7'}, out)


def heatmap_unit(p):
    out = p.d.execute_async_script("""const done = arguments[arguments.length - 1];
      import('/ui/charts.js').then(({ heatmap }) => {
        const t = heatmap([arguments[0], 'b'], [[3, 1], [0, 4]]);
        document.body.append(t);
        const rows = [...t.querySelectorAll('tbody tr')].map((r) => [...r.children].map((c) => [c.className, c.textContent]));
        t.remove();
        done(rows);
      }, (e) => done({ error: String(e) }));""", HOSTILE)
    check('the confusion heat map: a shade per share of the row, names as text', out == [
        [['', '0 ' + HOSTILE], ['hm hm7 diag', '3'], ['hm hm2', '1']],
        [['', '1 b'], ['hm hm0', '0'], ['hm hm9 diag', '4']]], out)
    p.safe('heat map')


def weight(p):
    urls = p.js("return [location.origin + '/'].concat(performance.getEntriesByType('resource').map(e => e.name)"
                ".filter(u => new URL(u).pathname.startsWith('/ui/')))")
    sizes = {}
    for u in sorted(set(urls)):
        # as the browser asks: the page at / is for a request that names text/html
        with urllib.request.urlopen(urllib.request.Request(u, headers={'Accept': 'text/html,*/*;q=0.8'}),
                                    timeout=10) as r:
            b = r.read()
            sizes[u.split('/', 3)[3] or 'index.html'] = (len(b), len(gzip.compress(b, 9)))
    chart = sizes.get('ui/chart.js', (0, 0))
    own = [v for k, v in sizes.items() if k != 'ui/chart.js']
    print('     page weight: %d bytes HTML/CSS/JS/SVG of our own in %d files (%d gzipped); with Chart.js %d (%d gzipped)' % (
        sum(a for a, _ in own), len(own), sum(b for _, b in own), sum(a for a, _ in own) + chart[0],
        sum(b for _, b in own) + chart[1]))
    for k, (a, b) in sorted(sizes.items()):
        print(f'       {k:24} {a:7d} {b:7d}')
    check('the page loaded Chart.js', chart[0] > 100000)


def phone_tour(p, ds, jid, model):
    p.size(PHONE, True)
    for name, hash_, ready in [
            ('models', '#/models', "document.querySelector('table.models')"),
            ('datasets', '#/datasets', "document.querySelector('table.datasets')"),
            ('dataset', f'#/datasets/{ds["id"]}', "document.querySelector('table.classes')"),
            ('newjob', f'#/jobs/new?dataset={ds["id"]}&model={BASE}', "document.querySelector('td.rule') && document.getElementById('preview-status').textContent"),
            ('jobs', '#/jobs', "document.querySelector('table.jobs')"),
            ('job', f'#/jobs/{jid}', "document.getElementById('job-live') && document.getElementById('job-live').dataset.mode === 'ended'"),
            ('classify', f'#/classify?model={model}', "document.getElementById('classify-files')")]:
        p.go(hash_)
        p.wait(f'phone: the {name} page', 'return !!(' + ready + ')')
        if name == 'classify':
            p.js("""const b = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
                    const dt = new DataTransfer(); dt.items.add(new File([b], 'red.png', {type: 'image/png'}));
                    document.querySelector('.drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));""",
                 base64.b64encode(colour_png(0, 4242)).decode())
            p.wait('phone: classified', "return document.querySelector('.result .pred.best')")
        time.sleep(0.4)
        p.shot(name)
        if name == 'job':
            p.shot('job-results', scroll='#job-results')
    p.js("document.getElementById('token-button').click()")
    p.wait('the Token button opens the dialog', "return document.getElementById('token-dialog').open")
    p.shot('token')
    p.js("document.getElementById('token-cancel').click()")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--chromium', default=shutil.which('chromium') or '/usr/bin/chromium')
    ap.add_argument('--chromedriver', default=shutil.which('chromedriver') or '/usr/bin/chromedriver')
    a = ap.parse_args()
    if not (os.path.exists(a.chromium) and os.path.exists(a.chromedriver)):
        print('SKIP: Chromium or ChromeDriver is not installed (Debian: chromium chromium-driver python3-selenium)')
        print('tally: 0 passed, 0 failed')
        sys.exit(77)
    srcdir = os.path.abspath(os.environ.get('srcdir') or os.path.join(os.path.dirname(__file__), '..'))
    bit = os.environ.get('BIT_BIN') or os.path.abspath('bit')
    shots = os.path.abspath(os.environ.get('BIT_WEB_SHOTS') or os.path.join('tests', 'web-shots'))
    os.makedirs(shots, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='bit-web-')
    signal.signal(signal.SIGALRM, lambda *_: (check('the test finishes within 10 minutes', False), done()))
    signal.alarm(600)
    procs, d = [], None
    ok = False
    try:
        server, port = start_server(bit, tmp, srcdir)
        procs.append(server)
        api = Api(port)
        page_check(api)
        base = api.base
        print(f'     page from bit serve: {base}; screenshots in {shots}')
        d = browser(a.chromium, a.chromedriver, os.path.join(tmp, 'chrome'))
        p = Page(d, base, shots)
        p.size(DESKTOP, False)
        tar = os.path.join(tmp, 'colours.tar')
        make_dataset(tar)
        token_flow(p)
        p.shot('models')
        ds = upload_dataset(p, api, tar)
        jid = start_job(p, api, ds)
        model = watch_job(p, api, jid)
        p.go('#/jobs')
        p.wait('the jobs list', "return document.querySelector('table.jobs')")
        check('the jobs list shows the job name and its dataset', has_literal(p, 'table.jobs td a', JOB_NAME))
        p.shot('jobs')
        p.go('#/models')
        p.wait('the models list with the new model', "return document.querySelectorAll('table.models tbody tr').length === 2")
        check('the models list shows the fine-tuned model\'s name', has_literal(p, 'table.models td a', JOB_NAME))
        p.shot('models')
        classify(p, api, model, tmp)
        sse_parser(p)
        heatmap_unit(p)
        weight(p)
        phone_tour(p, ds, jid, model)
        p.drain_console()
        unexpected = [m for m in p.console if m['level'] == 'SEVERE' and not re.search(
            r'status of (401|404)|dry_run=true - .* status of 400', m['message'])]
        check('the console has no errors beyond the expected 401/404 answers and the refused name',
              not unexpected, unexpected)
        ok = True
    finally:
        if d:
            d.quit()
        for pr in procs:
            pr.terminate()
            try:
                rc = pr.wait(30)
            except subprocess.TimeoutExpired:
                pr.kill()
                rc = 'killed after 30 s'
            # under ASan a leak makes bit serve's exit non-zero: it fails here
            if ok and not check('bit serve stops cleanly on SIGTERM (exit 0; no leak under ASan)', rc == 0, rc):
                with open(os.path.join(tmp, 'serve.log')) as f:
                    print(''.join(l for l in f.readlines()[-40:] if not l.startswith('{')))
        if ok and not failed:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f'     kept {tmp} (serve.log)')
    done()


if __name__ == '__main__':
    main()
