"""PyTorch peer for `bit bench`: a BiT R50x1 (ResNet-v2,
GroupNorm, Weight Standardisation) written for the comparison, timed the same way: median of
the timed iterations after a warm-up, 2 threads.

  /usr/bin/python3 bench/peer-torch.py infer|infer_bf16|train BATCH RES CLASSES [ITERS] [cl]
  PRESTD=1: weights standardised once (inference), as bitd does; cl: channels_last.
Needs Debian's python3-torch."""
import os, sys, time, statistics, torch, torch.nn as nn, torch.nn.functional as F

class WSConv(nn.Conv2d):
    def forward(self, x):
        if getattr(self, 'frozen', None) is not None:  # inference: standardised once
            return F.conv2d(x, self.frozen, None, self.stride, self.padding)
        w = self.weight
        m = w.mean(dim=(1, 2, 3), keepdim=True)
        v = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return F.conv2d(x, (w - m) / torch.sqrt(v + 1e-10), None, self.stride, self.padding)

class Unit(nn.Module):
    def __init__(s, cin, cout, mid, stride):
        super().__init__()
        s.gn1, s.c1 = nn.GroupNorm(32, cin), WSConv(cin, mid, 1, bias=False)
        s.gn2, s.c2 = nn.GroupNorm(32, mid), WSConv(mid, mid, 3, stride, 1, bias=False)
        s.gn3, s.c3 = nn.GroupNorm(32, mid), WSConv(mid, cout, 1, bias=False)
        s.proj = WSConv(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
    def forward(s, x):
        o = F.relu(s.gn1(x))
        r = s.proj(o) if s.proj is not None else x
        o = s.c1(o)
        o = s.c2(F.relu(s.gn2(o)))
        o = s.c3(F.relu(s.gn3(o)))
        return o + r

class R50x1(nn.Module):
    def __init__(s, classes):
        super().__init__()
        s.root = WSConv(3, 64, 7, 2, 3, bias=False)
        units, layers, cin = (3, 4, 6, 3), [], 64
        for b, n in enumerate(units):
            mid = 64 * 2 ** b
            for i in range(n):
                layers.append(Unit(cin, mid * 4, mid, 2 if (i == 0 and b > 0) else 1))
                cin = mid * 4
        s.body = nn.Sequential(*layers)
        s.gn = nn.GroupNorm(32, cin)
        s.head = nn.Conv2d(cin, classes, 1)
    def forward(s, x):
        x = F.max_pool2d(F.pad(s.root(x), (1, 1, 1, 1)), 3, 2)
        x = F.relu(s.gn(s.body(x)))
        return s.head(x.mean((2, 3), keepdim=True)).flatten(1)

def median_time(fn, iters, warm=2):
    for _ in range(warm): fn()
    t = []
    for _ in range(iters):
        a = time.perf_counter(); fn(); t.append(time.perf_counter() - a)
    return statistics.median(t)

mode, batch, res, head = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
iters = int(sys.argv[5]) if len(sys.argv) > 5 else 10
torch.set_num_threads(2)
torch.manual_seed(0)
m = R50x1(head)
x = torch.randn(batch, 3, res, res)
if len(sys.argv) > 6 and sys.argv[6] == 'cl':  # channels_last: oneDNN's blocked-friendly layout
    m = m.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    mode_tag = ' channels_last'
else:
    mode_tag = ''
if os.environ.get('PRESTD') == '1':
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, WSConv):
                w = mod.weight
                mod.frozen = ((w - w.mean(dim=(1, 2, 3), keepdim=True)) /
                              torch.sqrt(w.var(dim=(1, 2, 3), keepdim=True, unbiased=False) + 1e-10)).contiguous(
                                  memory_format=torch.channels_last if mode_tag else torch.contiguous_format)
    mode_tag += ' pre-standardised'
if mode == 'infer':
    m.eval()
    with torch.no_grad():
        t = median_time(lambda: m(x), iters)
    print(f'torch{mode_tag} infer b{batch} {res}px: {t*1000:.1f} ms/batch {batch/t:.1f} images/s')
elif mode == 'infer_bf16':
    m.eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        t = median_time(lambda: m(x), iters)
    print(f'torch{mode_tag} bf16 infer b{batch} {res}px: {t*1000:.1f} ms/batch {batch/t:.1f} images/s')
else:
    y = torch.randint(0, head, (batch,))
    opt = torch.optim.SGD(m.parameters(), lr=0.003, momentum=0.9)
    def step():
        opt.zero_grad(); F.cross_entropy(m(x), y).backward(); opt.step()
    t = median_time(step, iters)
    print(f'torch{mode_tag} train b{batch} {res}px: {t*1000:.1f} ms/step {batch/t:.1f} images/s')
