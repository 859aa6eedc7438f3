"""One row of bench/budget.sh: the plan from a `bit finetune --json` log's start line, the
final validation from its done line, the wall time measured around it; printed, and appended
as a JSON line to the results file."""
import json
import sys
import time

log, case, budget, req, t0, t1, results = sys.argv[1:]
start = done = None
for line in open(log):
    try:
        ev = json.loads(line)
    except ValueError:
        continue
    if ev.get('type') == 'start':
        start = ev
    elif ev.get('type') == 'done':
        done = ev
hp = (start or {}).get('hyperparameters', {})
plan = hp.get('plan', {})
actual = float(t1) - float(t0)
row = {'case': case, 'budget_min': float(budget), 'request': req, 'plan_mode': plan.get('mode'),
       'plan_resolution': plan.get('resolution'), 'plan_steps': plan.get('steps'),
       'predicted_s': plan.get('predicted_seconds'), 'actual_s': round(actual, 1),
       'val_top1': (done or {}).get('val_top1'), 'precision': hp.get('precision'),
       'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
top1 = row['val_top1']
print('%-8s %5s min  %-6s  plan %-6s res %-9s steps %-5s  predicted %6.2f min  actual %6.2f min'
      '  val top-1 %s' % (case, budget, req, row['plan_mode'], row['plan_resolution'],
                           row['plan_steps'], (row['predicted_s'] or 0) / 60, actual / 60,
                           '%.1f %%' % (100 * top1) if top1 is not None else '?'))
with open(results, 'a') as f:
    f.write(json.dumps(row) + '\n')
