// Charts over Chart.js (/ui/chart.js, Debian's libjs-chart.js embedded at build time: a
// classic script defining window.Chart, loaded before the modules). Chart.js sizes its canvas
// through element.style (CSSOM), which style-src 'self' allows; it injects no <style>.
import { h, fmtPct } from './dom.js';

export const chartLib = () => (typeof globalThis.Chart === 'function' ? globalThis.Chart : null);

const COLORS = ['#2563eb', '#d97706', '#059669', '#dc2626'];

// A line chart of step -> value; series: [{label}]. Returns the Chart (or null without the library).
export function stepChart(canvas, series, { percent = false, yTitle = '' } = {}) {
  const Chart = chartLib();
  if (!Chart) return null;
  return new Chart(canvas, {
    type: 'line',
    data: {
      datasets: series.map((s, i) => ({
        label: s.label, data: [], borderColor: COLORS[i], backgroundColor: COLORS[i],
        borderWidth: 2, pointRadius: 2, pointHoverRadius: 4, tension: 0,
      })),
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: 'nearest', axis: 'x', intersect: false },
      scales: {
        x: { type: 'linear', title: { display: true, text: 'step' }, ticks: { precision: 0 } },
        y: {
          title: { display: !!yTitle, text: yTitle },
          ...(percent ? { min: 0, max: 1, ticks: { callback: (v) => Math.round(v * 100) + ' %' } } : {}),
        },
      },
      plugins: {
        legend: { display: series.length > 1 },
        tooltip: percent ? { callbacks: { label: (c) => `${c.dataset.label}: ${fmtPct(c.parsed.y)}` } } : {},
      },
    },
  });
}

// Adds (step, y) to series i. A step at or before the last one means the run went back to a
// checkpoint (a resumed job repeats those steps): the later values replace the earlier ones.
export function addPoint(chart, i, x, y) {
  if (!chart || typeof x !== 'number' || typeof y !== 'number') return;
  const data = chart.data.datasets[i].data;
  while (data.length && data[data.length - 1].x >= x) data.pop();
  data.push({ x, y });
  if (!chart.$pending) {
    chart.$pending = true;
    requestAnimationFrame(() => { chart.$pending = false; chart.update('none'); });
  }
}

// The confusion matrix as a table heat map: rows are true classes, columns predictions; a
// cell's shade (one of ten classes, no inline style) is its share of the row.
export function heatmap(classes, matrix) {
  const k = classes.length;
  const head = h('tr', null, h('th', { scope: 'col' }, 'true \\ predicted'),
    classes.map((c, j) => h('th', { scope: 'col', title: c }, String(j))));
  const rows = matrix.map((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    return h('tr', null, h('th', { scope: 'row', title: classes[i] }, `${i} ${classes[i]}`),
      row.map((n, j) => h('td', {
        class: `hm hm${Math.min(9, Math.floor((10 * n) / total))}${i === j ? ' diag' : ''}`,
        title: `${classes[i]} → ${classes[j]}: ${n}`,
      }, String(n))));
  });
  return h('div', { class: 'scroll' }, h('table', { class: 'heatmap', 'aria-label': `confusion matrix, ${k} classes` },
    h('thead', null, head), h('tbody', null, rows)));
}
