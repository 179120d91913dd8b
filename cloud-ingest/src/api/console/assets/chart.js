// Small SVG charts drawn locally: a time-series chart with min/max band, bad-quality markers and
// drag-to-zoom; a GPS track plot with places and stops; horizontal bars. Every chart sets
// data-points to the number of data points it drew (the browser test checks it).

const NS = 'http://www.w3.org/2000/svg';

function s(tag, attrs = {}, ...children) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

/** Nice tick values covering [lo, hi]. */
function ticks(lo, hi, n = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((x) => x >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

const TIME_STEPS = [1, 5, 15, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400].map((x) => x * 1000);

function timeTicks(from, to, n = 6) {
  const raw = (to - from) / n;
  const step = TIME_STEPS.find((x) => x >= raw) || TIME_STEPS[TIME_STEPS.length - 1];
  const out = [];
  for (let t = Math.ceil(from / step) * step; t <= to; t += step) out.push(t);
  return { out, step };
}

function timeLabel(t, step) {
  const iso = new Date(t).toISOString();
  if (step >= 86400000) return iso.slice(5, 10);
  if (step >= 3600000 && iso.slice(11, 16) === '00:00') return iso.slice(5, 10);
  return step < 60000 ? iso.slice(11, 19) : iso.slice(11, 16);
}

function fmtValue(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return `${(v / 1e6).toFixed(a >= 1e7 ? 1 : 2)}M`;
  if (a >= 1e4) return `${(v / 1e3).toFixed(0)}k`;
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return v.toFixed(2);
  return v.toPrecision(3);
}

/**
 * A time-series chart. buckets: [{ts_ms, min, max, avg, last, count, bad}] of `step` ms.
 * opts: {from, to, step, unit, onZoom(from, to)}.
 */
export function timeChart(buckets, opts) {
  const W = 960, H = 340, L = 64, R = 16, T = 16, B = 40;
  const { from, to, step } = opts;
  const good = buckets.filter((b) => b.avg !== null && b.avg !== undefined);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': 'time series' });
  svg.dataset.points = String(good.length);
  svg.dataset.bad = String(buckets.filter((b) => b.bad > 0).length);
  let lo = Math.min(...good.map((b) => b.min ?? b.avg));
  let hi = Math.max(...good.map((b) => b.max ?? b.avg));
  if (!good.length) { lo = 0; hi = 1; }
  if (hi - lo < 1e-9) { const pad = Math.abs(hi) * 0.01 || 1; lo -= pad; hi += pad; }
  const padY = (hi - lo) * 0.06; lo -= padY; hi += padY;
  const x = (t) => L + ((t - from) / (to - from)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const grid = s('g', { class: 'grid' });
  for (const v of ticks(lo, hi)) {
    grid.append(s('line', { x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    grid.append(s('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmtValue(v)));
  }
  const tt = timeTicks(from, to);
  for (const t of tt.out) {
    grid.append(s('line', { x1: x(t), x2: x(t), y1: T, y2: H - B, class: 'v' }));
    grid.append(s('text', { x: x(t), y: H - B + 16, 'text-anchor': 'middle' }, timeLabel(t, tt.step)));
  }
  grid.append(s('text', { x: W - R, y: H - 6, 'text-anchor': 'end', class: 'axis-note' }, `UTC · bucket ${stepLabel(step)}`));
  if (opts.unit) grid.append(s('text', { x: 8, y: T + 4, class: 'axis-note' }, opts.unit));
  svg.append(grid);
  // Runs of consecutive buckets (a missing bucket breaks the line).
  const runs = [];
  let cur = [];
  for (const b of good) {
    if (cur.length && b.ts_ms - cur[cur.length - 1].ts_ms > step * 1.5) { runs.push(cur); cur = []; }
    cur.push(b);
  }
  if (cur.length) runs.push(cur);
  const mid = (b) => x(b.ts_ms + step / 2);
  for (const run of runs) {
    if (run.some((b) => b.min !== b.max)) {
      const top = run.map((b) => `${mid(b).toFixed(1)},${y(b.max ?? b.avg).toFixed(1)}`);
      const bottom = run.slice().reverse().map((b) => `${mid(b).toFixed(1)},${y(b.min ?? b.avg).toFixed(1)}`);
      svg.append(s('polygon', { class: 'band', points: [...top, ...bottom].join(' ') }));
    }
    if (run.length === 1) svg.append(s('circle', { class: 'dot', cx: mid(run[0]), cy: y(run[0].avg), r: 2.5 }));
    else svg.append(s('polyline', { class: 'line', points: run.map((b) => `${mid(b).toFixed(1)},${y(b.avg).toFixed(1)}`).join(' ') }));
  }
  // Buckets holding bad-quality readings: a red mark at the value (or on the axis when none was good).
  const badG = s('g', { class: 'bad' });
  for (const b of buckets.filter((q) => q.bad > 0)) {
    const cy = b.avg !== null && b.avg !== undefined ? y(b.avg) : H - B - 4;
    const m = s('rect', { x: mid(b) - 3, y: cy - 3, width: 6, height: 6 });
    m.append(s('title', {}, `${new Date(b.ts_ms).toISOString()}: ${b.bad} of ${b.count} readings bad`));
    badG.append(m);
  }
  svg.append(badG);
  // Hover read-out and drag-to-zoom.
  const cursor = s('line', { class: 'cursor', x1: 0, x2: 0, y1: T, y2: H - B, visibility: 'hidden' });
  const readout = s('text', { class: 'readout', x: L + 8, y: T + 14 });
  const sel = s('rect', { class: 'selection', x: 0, y: T, width: 0, height: H - T - B, visibility: 'hidden' });
  const overlay = s('rect', { class: 'overlay', x: L, y: T, width: W - L - R, height: H - T - B });
  svg.append(cursor, sel, readout, overlay);
  const toT = (ev) => {
    const r = svg.getBoundingClientRect();
    const px = ((ev.clientX - r.left) / r.width) * W;
    return { px: Math.max(L, Math.min(W - R, px)), t: from + ((px - L) / (W - L - R)) * (to - from) };
  };
  let drag = null;
  overlay.addEventListener('mousemove', (ev) => {
    const { px, t } = toT(ev);
    cursor.setAttribute('x1', px); cursor.setAttribute('x2', px); cursor.setAttribute('visibility', 'visible');
    let best = null;
    for (const b of good) if (!best || Math.abs(b.ts_ms + step / 2 - t) < Math.abs(best.ts_ms + step / 2 - t)) best = b;
    readout.textContent = best
      ? `${new Date(best.ts_ms).toISOString().slice(0, 16).replace('T', ' ')}  avg ${fmtValue(best.avg)}  min ${fmtValue(best.min ?? best.avg)}  max ${fmtValue(best.max ?? best.avg)}  n=${best.count}${best.bad ? `  bad=${best.bad}` : ''}`
      : '';
    if (drag) {
      const a = Math.min(drag.px, px), b = Math.max(drag.px, px);
      sel.setAttribute('x', a); sel.setAttribute('width', b - a); sel.setAttribute('visibility', 'visible');
    }
  });
  overlay.addEventListener('mouseleave', () => { cursor.setAttribute('visibility', 'hidden'); readout.textContent = ''; });
  overlay.addEventListener('mousedown', (ev) => { drag = toT(ev); ev.preventDefault(); });
  window.addEventListener('mouseup', (ev) => {
    if (!drag) return;
    const end = toT(ev);
    const a = Math.min(drag.t, end.t), b = Math.max(drag.t, end.t);
    drag = null;
    sel.setAttribute('visibility', 'hidden');
    if (opts.onZoom && b - a > (to - from) / 200) opts.onZoom(Math.round(a), Math.round(b));
  });
  return svg;
}

export function stepLabel(ms) {
  if (ms % 86400000 === 0) return `${ms / 86400000}d`;
  if (ms % 3600000 === 0) return `${ms / 3600000}h`;
  if (ms % 60000 === 0) return `${ms / 60000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

/** The bucket width for a range: a round step giving at most `max` buckets, at least `min_ms`. */
export function pickStep(from, to, max = 480, minMs = 1000) {
  const steps = [1, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400].map((x) => x * 1000);
  return steps.find((st) => st >= minMs && Math.ceil((to - from) / st) + 1 <= max) || 86400000 * Math.ceil((to - from) / 86400000 / max);
}

/**
 * A GPS track on a local equirectangular projection (no map tiles): places as circles of their
 * radius, the track, start/end, stops (red: outside every known place).
 * track: {fixes: [[ts, lat, lon]], stops: [{lat, lon, place, minutes, from_ms}]}, places: [{id, lat, lon, radius_m, kind}].
 */
export function trackPlot(track, places) {
  const W = 960, H = 560, P = 36;
  const fixes = track ? track.fixes : [];
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'plot', role: 'img', 'aria-label': 'truck track' });
  svg.dataset.points = String(fixes.length);
  const pts = fixes.map((f) => [f[1], f[2]]);
  // Bounds: the track (or every place when there is none), padded, with the places near it.
  const base = pts.length ? pts : places.map((p) => [p.lat, p.lon]);
  if (!base.length) return svg;
  let la0 = Math.min(...base.map((p) => p[0])), la1 = Math.max(...base.map((p) => p[0]));
  let lo0 = Math.min(...base.map((p) => p[1])), lo1 = Math.max(...base.map((p) => p[1]));
  const padLat = Math.max((la1 - la0) * 0.12, 0.004), padLon = Math.max((lo1 - lo0) * 0.12, 0.004);
  la0 -= padLat; la1 += padLat; lo0 -= padLon; lo1 += padLon;
  const k = Math.cos((((la0 + la1) / 2) * Math.PI) / 180);
  const spanX = (lo1 - lo0) * k, spanY = la1 - la0;
  const scale = Math.min((W - 2 * P) / spanX, (H - 2 * P) / spanY);
  const ox = (W - spanX * scale) / 2, oy = (H - spanY * scale) / 2;
  const X = (lon) => ox + (lon - lo0) * k * scale;
  const Y = (lat) => oy + (la1 - lat) * scale;
  const mPerDeg = 111320;
  svg.append(s('rect', { class: 'plot-bg', x: 0, y: 0, width: W, height: H }));
  // Graticule.
  const g = s('g', { class: 'grid' });
  for (const v of ticks(la0, la1, 6)) { g.append(s('line', { x1: 0, x2: W, y1: Y(v), y2: Y(v) })); g.append(s('text', { x: 4, y: Y(v) - 3 }, `${v.toFixed(3)}°`)); }
  for (const v of ticks(lo0, lo1, 8)) { g.append(s('line', { x1: X(v), x2: X(v), y1: 0, y2: H })); g.append(s('text', { x: X(v) + 3, y: H - 4 }, `${v.toFixed(3)}°`)); }
  svg.append(g);
  for (const p of places) {
    if (p.lat < la0 - padLat || p.lat > la1 + padLat || p.lon < lo0 - padLon || p.lon > lo1 + padLon) continue;
    const r = Math.max(4, (p.radius_m / mPerDeg) * scale);
    const c = s('g', { class: `place ${p.kind}` });
    c.append(s('circle', { cx: X(p.lon), cy: Y(p.lat), r }));
    c.append(s('text', { x: X(p.lon), y: Y(p.lat) - r - 4, 'text-anchor': 'middle' }, p.id));
    svg.append(c);
  }
  if (pts.length) {
    svg.append(s('polyline', { class: 'track', points: pts.map((p) => `${X(p[1]).toFixed(1)},${Y(p[0]).toFixed(1)}`).join(' ') }));
    const start = pts[0], end = pts[pts.length - 1];
    svg.append(s('circle', { class: 'start', cx: X(start[1]), cy: Y(start[0]), r: 6 }, s('title', {}, 'loaded (first fix)')));
    svg.append(s('circle', { class: 'end', cx: X(end[1]), cy: Y(end[0]), r: 6 }, s('title', {}, 'last fix')));
  }
  for (const st of (track && track.stops) || []) {
    const c = s('g', { class: st.place ? 'stop known' : 'stop unscheduled' });
    c.append(s('circle', { cx: X(st.lon), cy: Y(st.lat), r: 9 }));
    c.append(s('text', { x: X(st.lon) + 12, y: Y(st.lat) + 4 }, `${Math.round(st.minutes)} min${st.place ? '' : ' · unscheduled'}`));
    svg.append(c);
  }
  // Scale bar.
  const kmPx = (1000 / mPerDeg) * scale;
  const km = [0.5, 1, 2, 5, 10, 20, 50].find((v) => v * kmPx > 80) || 50;
  svg.append(s('g', { class: 'scale' },
    s('line', { x1: W - P - km * kmPx, x2: W - P, y1: H - 18, y2: H - 18 }),
    s('text', { x: W - P - (km * kmPx) / 2, y: H - 24, 'text-anchor': 'middle' }, `${km} km`)));
  return svg;
}

/** Horizontal bars: rows [{label, values: [{v, cls, title}]}], drawn on one scale. */
export function bars(rows, { unit = '', max } = {}) {
  const W = 1320, rowH = 30, L = 120, R = 260, T = 8;
  const H = T + rows.length * rowH + 8;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'bars', role: 'img', 'aria-label': 'bar chart' });
  const all = rows.flatMap((r) => r.values.map((v) => v.v)).filter((v) => Number.isFinite(v));
  svg.dataset.points = String(all.length);
  const top = max || Math.max(1, ...all);
  rows.forEach((r, i) => {
    const y0 = T + i * rowH;
    svg.append(s('text', { x: L - 8, y: y0 + rowH / 2 + 4, 'text-anchor': 'end', class: 'label' }, r.label));
    const n = r.values.length;
    r.values.forEach((v, j) => {
      if (!Number.isFinite(v.v)) return;
      const hgt = (rowH - 8) / n;
      const rect = s('rect', { class: v.cls, x: L, y: y0 + 4 + j * hgt, height: hgt - 1, width: Math.max(1, (v.v / top) * (W - L - R)) });
      rect.append(s('title', {}, v.title || String(v.v)));
      svg.append(rect);
    });
    if (r.note) svg.append(s('text', { x: W - R + 8, y: y0 + rowH / 2 + 4, class: 'note' }, r.note));
  });
  if (unit) svg.dataset.unit = unit;
  return svg;
}
