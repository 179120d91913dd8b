// The console's pages: each exports {title, render(ctx)} and returns its content (DOM nodes).
// ctx: {me: whoami, args: path parts after the page name, query: URLSearchParams, stale()}.

import { api, apiAll, h, table, card, num, litres, pct, utc, age, duration, serverNow, go, download, ApiError } from './app.js';
import { timeChart, trackPlot, bars, pickStep, stepLabel } from './chart.js';

const DAY = 86400000;

function pill(text, cls) {
  return h('span', { class: `pill ${cls}` }, text);
}
function verdictPill(v) {
  return pill(v, { ok: 'good', exception: 'bad', pending: 'warn', 'no-data': 'muted', incomplete: 'incomplete' }[v] || 'muted');
}
function stat(label, value, note, cls) {
  return h('div', { class: `stat ${cls || ''}` }, h('div', { class: 'stat-value' }, value), h('div', { class: 'stat-label' }, label), note ? h('div', { class: 'stat-note' }, note) : null);
}
function explain(...lines) {
  return h('details', { class: 'explain' }, h('summary', {}, 'How these figures are computed'), ...lines.map((l) => h('p', {}, l)));
}
async function siteModel() {
  const [m] = await api('/api/v1/site-model');
  return m || null;
}

// ---- fleet -----------------------------------------------------------------------------------
const fleet = {
  title: 'Fleet of agents',
  async render() {
    const agents = await apiAll('/api/v1/agents');
    const online = agents.filter((a) => a.online).length;
    const backlog = agents.reduce((s, a) => s + (a.backlog_readings || 0), 0);
    const oldest = agents.map((a) => a.oldest_unsent_ms).filter((x) => x !== null && x !== undefined);
    return [
      h('div', { class: 'stats' },
        stat('agents', num(agents.length)),
        stat('online', num(online), null, online ? 'good' : ''),
        stat('offline', num(agents.length - online), null, agents.length - online ? 'bad' : ''),
        stat('readings waiting at the edge', num(backlog), oldest.length ? `oldest unsent ${age(Math.min(...oldest))}` : 'nothing unsent reported')),
      card('Agents', table([
        { label: 'Site', value: (a) => a.site },
        { label: 'Agent', value: (a) => h('strong', {}, a.agent) },
        { label: 'Status', value: (a) => pill(a.online ? 'online' : 'offline', a.online ? 'good' : 'bad') },
        { label: 'Last seen', value: (a) => h('span', { title: utc(a.last_seen_ms, { seconds: true }) }, age(a.last_seen_ms)) },
        { label: 'Backlog (readings)', class: 'num', value: (a) => num(a.backlog_readings) },
        { label: 'Oldest unsent', value: (a) => (a.oldest_unsent_ms ? h('span', { title: utc(a.oldest_unsent_ms) }, duration(serverNow() - a.oldest_unsent_ms)) : '—') },
        { label: 'Version', value: (a) => a.version || '—' },
        { label: 'Config hash', value: (a) => (a.config_hash ? h('code', { title: a.config_hash }, a.config_hash.slice(0, 12)) : '—') },
        { label: 'Buffer', value: (a) => (a.buffer ? h('span', { title: `epoch ${a.buffer.epoch}, created ${utc(a.buffer.created_ms, { seconds: true })}${a.buffer.note ? ` — ${a.buffer.note}` : ''}` }, `${a.buffer.origin}, created ${age(a.buffer.created_ms)}`) : '—') },
        { label: 'Buffer replaced', value: (a) => (a.buffer_replaced_ms ? pill(`replaced ${age(a.buffer_replaced_ms)}`, 'warn') : '—') },
      ], agents, { empty: 'No agents yet: they appear with their first birth message.' })),
      h('p', { class: 'muted' }, 'Online/offline is the agent\'s retained status (its Last Will when the connection is lost); backlog and oldest unsent come from its last heartbeat.'),
    ];
  },
};

// ---- tags ------------------------------------------------------------------------------------
function tagTree(tags, selected) {
  const root = new Map();
  for (const t of tags) {
    const parts = [t.site, t.agent, ...t.name.split('/')];
    let node = root;
    parts.forEach((p, i) => {
      if (i === parts.length - 1) { node.set(`\u0000${t.id}`, t); return; }
      if (!node.has(p)) node.set(p, new Map());
      node = node.get(p);
    });
  }
  const build = (node, depth, path) => h('ul', { class: depth ? 'tree' : 'tree top' }, [...node.entries()].sort((a, b) => a[0].localeCompare(b[0])).map(([k, v]) => {
    if (v instanceof Map) {
      const open = depth < 2 || (selected && `${selected.site}/${selected.agent}/${selected.name}`.startsWith(`${path}${k}/`));
      return h('li', {}, h('details', { open }, h('summary', {}, k), build(v, depth + 1, `${path}${k}/`)));
    }
    const leaf = v.name.split('/').pop();
    return h('li', {}, h('a', { href: `#/tags/${v.id}`, class: selected && selected.id === v.id ? 'leaf active' : 'leaf', title: v.description || v.name }, leaf, v.unit ? h('span', { class: 'unit' }, ` ${v.unit}`) : null));
  }));
  return build(root, 0, '');
}

const RANGES = [['1h', 3600000], ['6h', 6 * 3600000], ['24h', DAY], ['7d', 7 * DAY], ['30d', 30 * DAY]];

const tags = {
  title: 'Tag browser',
  async render(ctx) {
    const all = await apiAll('/api/v1/tags');
    if (!all.length) return card(null, h('p', { class: 'empty' }, 'No tags yet: they are registered from the agents\' birth messages.'));
    const id = Number(ctx.args[0]);
    const sel = all.find((t) => t.id === id) || all.find((t) => /level/.test(t.name)) || all[0];
    const filter = h('input', { type: 'search', placeholder: 'Filter tags…', class: 'filter' });
    const treeBox = h('div', { class: 'tree-box' }, tagTree(all, sel));
    filter.addEventListener('input', () => {
      const q = filter.value.toLowerCase();
      treeBox.replaceChildren(tagTree(all.filter((t) => `${t.site}/${t.agent}/${t.name}`.toLowerCase().includes(q)), sel));
      if (q) for (const d of treeBox.querySelectorAll('details')) d.open = true;
    });
    const [latest] = await api(`/api/v1/latest?tag_id=${sel.id}`);
    const end0 = latest ? latest.ts_ms + 1 : serverNow();
    const to = Number(ctx.query.get('to')) || end0;
    const from = Number(ctx.query.get('from')) || to - DAY;
    const step = pickStep(from, to, 480, Math.max(1000, Math.min(sel.interval_ms || 1000, 3600000)));
    const buckets = await api(`/api/v1/tags/${sel.id}/series?from=${from}&to=${to}&step=${stepLabel(step)}`);
    const zoom = (f, t) => go('tags', [String(sel.id)], { from: f, to: t });
    const chart = timeChart(buckets, { from, to, step, unit: sel.unit, onZoom: zoom });
    const bad = buckets.reduce((s, b) => s + b.bad, 0);
    const count = buckets.reduce((s, b) => s + b.count, 0);
    return h('div', { class: 'split' },
      h('aside', { class: 'card side' }, filter, treeBox),
      h('div', { class: 'main-col' },
        card(`${sel.site} / ${sel.agent} / ${sel.name}`,
          h('div', { class: 'stats small' },
            stat('latest', latest ? (latest.value !== null ? `${num(latest.value, 3)} ${sel.unit || ''}` : latest.text || '—') : '—', latest ? age(latest.ts_ms) : 'no readings yet'),
            stat('quality', latest ? pill(latest.quality, latest.quality === 'good' ? 'good' : 'bad') : '—'),
            stat('poll interval', duration(sel.interval_ms)),
            stat('device', sel.device, sel.kind)),
          h('div', { class: 'toolbar' },
            h('span', { class: 'muted' }, 'Range ending at the latest reading:'),
            RANGES.map(([label, span]) => h('button', { type: 'button', class: to === end0 && to - from === span ? 'seg active' : 'seg', onclick: () => zoom(end0 - span, end0) }, label)),
            h('span', { class: 'muted range' }, `${utc(from)} → ${utc(to)} · drag across the chart to zoom`)),
          count ? chart : h('p', { class: 'empty' }, 'No readings in this range.'),
          h('p', { class: 'legend' }, h('span', { class: 'key line' }), ' average per bucket ', h('span', { class: 'key band' }), ' min–max ', h('span', { class: 'key bad' }), ` bucket with bad-quality readings (${num(bad)} of ${num(count)} readings bad in this range)`))));
  },
};

// ---- freshness -------------------------------------------------------------------------------
const freshness = {
  title: 'Data freshness',
  async render(ctx) {
    const [fresh, model] = await Promise.all([apiAll('/api/v1/freshness'), siteModel()]);
    const factor = model ? model.stale_factor : 3;
    const minAge = (model ? model.stale_min_age_s : 60) * 1000;
    // The server applies the stale-tag check's rule on its data clock: fresh = a GOOD reading
    // within the limit (bad-quality readings count as silence).
    const now = fresh.length ? fresh[0].now_ms : serverNow();
    const all = fresh;
    const rows = fresh.map((f) => ({ t: { id: f.tag_id, site: f.site, agent: f.agent, name: f.name }, f, ageMs: f.last_good_ms !== null ? now - f.last_good_ms : null, stale: f.stale, limit: f.limit_ms }));
    const stale = rows.filter((r) => r.stale).sort((a, b) => (b.ageMs ?? Infinity) - (a.ageMs ?? Infinity));
    const gaps = await apiAll(`/api/v1/gaps?from=${now - 30 * DAY}&to=${now + 1}`);
    const uncounted = gaps.filter((g) => g.count === null).length;
    const out = [
      h('div', { class: 'stats' },
        stat('tags', num(all.length)),
        stat('fresh', num(rows.length - stale.length), null, 'good'),
        stat('stale, silent or bad', num(stale.length), `no good reading within max(${factor} × poll interval, ${minAge / 1000} s)`, stale.length ? 'warn' : ''),
        stat('gap records, 30 days', num(gaps.length), `${num(gaps.reduce((s, g) => s + (g.count ?? 0), 0))} readings reported missing${uncounted ? `, plus ${num(uncounted)} gap${uncounted > 1 ? 's' : ''} of unknown count` : ''}`, gaps.length ? 'warn' : '')),
      card('Stale tags', table([
        { label: 'Site', value: (r) => r.t.site },
        { label: 'Tag', value: (r) => h('a', { href: `#/tags/${r.t.id}` }, `${r.t.agent}/${r.t.name}`) },
        { label: 'Last good reading', value: (r) => (r.f.last_good_ms !== null ? h('span', { title: utc(r.f.last_good_ms, { seconds: true }) }, age(r.f.last_good_ms)) : 'none in 7 days') },
        { label: 'Last reading', value: (r) => (r.f.latest_ms !== null ? h('span', { title: utc(r.f.latest_ms, { seconds: true }) }, age(r.f.latest_ms)) : 'never') },
        { label: 'Quality', value: (r) => (r.f.latest_quality ? pill(r.f.latest_quality, r.f.latest_quality === 'good' ? 'good' : 'bad') : '—') },
        { label: 'Limit', value: (r) => duration(r.limit) },
      ], stale.slice(0, 200), { empty: 'Every tag has a good reading within its limit.' }), stale.length > 200 ? h('p', { class: 'muted' }, `… and ${stale.length - 200} more.`) : null),
      card('Gaps reported by the agents (last 30 days)', table([
        { label: 'Site', value: (g) => g.site },
        { label: 'Agent', value: (g) => g.agent },
        { label: 'From', value: (g) => utc(g.from_ms, { seconds: true }) },
        { label: 'Duration', value: (g) => duration(g.to_ms - g.from_ms) },
        { label: 'Tags', class: 'num', value: (g) => num(g.tag_ids.length) },
        { label: 'Readings', class: 'num', value: (g) => (g.count === null ? h('span', { title: 'the agent could not count them' }, 'unknown') : num(g.count)) },
        { label: 'Reason', value: (g) => h('span', { title: g.detail || '' }, pill(g.reason, 'warn')) },
      ], gaps.slice().sort((a, b) => b.from_ms - a.from_ms).slice(0, 200), { empty: 'No gaps reported: every polled reading arrived.' })),
    ];
    if (ctx.me.can_audit) {
      const log = await api('/api/v1/audit?limit=100');
      out.push(h('div', { id: 'audit-log' }, card('Audit log (newest 100 writes)', h('div', { class: 'toolbar' }, h('button', { type: 'button', class: 'secondary', onclick: () => download('/api/v1/audit?format=csv', 'audit.csv') }, 'Export audit CSV')), table([
        { label: 'When', value: (e) => h('span', { title: utc(e.at_ms, { seconds: true }) }, age(e.at_ms)) },
        { label: 'Actor', value: (e) => `${e.actor} (${e.role})` },
        { label: 'Action', value: (e) => h('code', {}, e.action) },
        { label: 'Target', value: (e) => e.target },
        { label: 'Reason', value: (e) => (e.after && e.after.reason) || '—' },
      ], log, { empty: 'No writes yet.' }))));
      const dl = await api('/api/v1/dead-letters?limit=100');
      out.push(h('div', { id: 'dead-letters' }, card('Dead letters (newest 100)', table([
        { label: 'Received', value: (d) => h('span', { title: utc(d.received_ms, { seconds: true }) }, age(d.received_ms)) },
        { label: 'Topic', value: (d) => h('code', {}, d.topic) },
        { label: 'Reason', value: (d) => d.reason },
        { label: 'Bytes', class: 'num', value: (d) => num(d.bytes) },
      ], dl, { empty: 'No dead letters: every message could be used.' }))));
    }
    return out;
  },
};

// ---- reconciliation --------------------------------------------------------------------------
const STAGES = ['ship', 'jetty', 'tanks', 'gantry', 'stations'];
const STAGE_LABEL = { ship: 'Ship', jetty: 'Jetty meter', tanks: 'Shore tanks', gantry: 'Gantry', stations: 'Stations' };

/** good within half the tolerance, warn within it, bad beyond. */
function varClass(v) {
  if (v.verdict === 'no-data') return 'muted';
  if (v.verdict === 'incomplete') return 'incomplete';
  if (v.verdict === 'pending') return 'warn';
  if (v.variance_pct === null || v.variance_pct === undefined) return v.verdict === 'exception' ? 'bad' : 'muted';
  const r = Math.abs(v.variance_pct) / v.tolerance_pct;
  return v.verdict === 'exception' || r > 1 ? 'bad' : r > 0.5 ? 'warn' : 'good';
}

function chainRow(product, recs) {
  const by = Object.fromEntries(recs.map((r) => [r.stage, r]));
  const first = by.ship || by.jetty || by.tanks || by.gantry;
  const boxes = [];
  if (first && first.reference_l !== null && (by.ship || by.jetty)) {
    boxes.push(h('div', { class: 'node ref' }, h('div', { class: 'node-title' }, by.ship ? 'B/L' : 'Ship'), h('div', { class: 'node-q' }, litres(first.reference_l))));
  }
  for (const st of STAGES) {
    const r = by[st];
    if (!r) continue;
    boxes.push(h('div', { class: 'arrow' }, '→'));
    const missing = r.coverage && r.coverage.missing.length ? `\n${r.coverage.missing.join('\n')}` : '';
    boxes.push(h('div', { class: `node ${varClass(r)}`, title: `reference ${litres(r.reference_l)} · measured ${litres(r.measured_l)} · tolerance ±${r.tolerance_pct} %${r.coverage ? ` · data ${coveragePct(r)}` : ''}${missing}` },
      h('div', { class: 'node-title' }, STAGE_LABEL[st]),
      h('div', { class: 'node-q' }, litres(r.measured_l)),
      h('div', { class: 'node-v' }, r.verdict === 'incomplete' ? `incomplete · ${coveragePct(r)} data` : r.variance_l !== null ? `${r.variance_l > 0 ? '+' : ''}${num(r.variance_l)} L · ${pct(r.variance_pct)}` : r.verdict),
      h('div', { class: 'node-tol' }, `tolerance ±${r.tolerance_pct} %`)));
  }
  if (boxes[0] && boxes[0].className === 'arrow') boxes.shift();
  const st = by.stations;
  return h('div', { class: 'chain' }, h('div', { class: 'chain-product' }, product), h('div', { class: 'chain-nodes' }, boxes),
    st && st.detail ? h('div', { class: 'chain-note muted' }, `loaded in total ${litres(st.detail.loaded_total_l)}; stations compare confirmed trips only — unconfirmed ${litres(st.detail.unconfirmed_l)}, ${st.detail.pending_epods} ePOD(s) pending, ${st.detail.missing_epods} missing`) : null);
}

/** The data behind a record: share of the expected readings present and what is missing. */
function coveragePct(r) {
  return r.coverage ? `${num(r.coverage.ratio * 100, 1)} %` : '—';
}
function coverageCell(r) {
  const c = r.coverage;
  if (!c) return h('span', { class: 'muted', title: 'No tag inputs (documents only)' }, '—');
  const label = h('span', { class: `v ${c.complete ? 'good' : 'incomplete'}`, title: c.inputs.map((i) => `${i.tag}: ${i.present}/${i.expected} readings`).join('\n') }, `${coveragePct(r)} data`);
  if (!c.missing.length) return label;
  return h('div', {}, label, h('ul', { class: 'coverage-missing' }, c.missing.map((m) => h('li', {}, m))));
}

const varianceCols = [
  { label: 'Reference', class: 'num', value: (r) => litres(r.reference_l) },
  { label: 'Measured', class: 'num', value: (r) => litres(r.measured_l) },
  { label: 'Variance', class: 'num', value: (r) => h('span', { class: `v ${varClass(r)}` }, r.variance_l === null ? '—' : `${num(r.variance_l)} L`) },
  { label: '%', class: 'num', value: (r) => h('span', { class: `v ${varClass(r)}` }, pct(r.variance_pct)) },
  { label: 'Tol. ±%', class: 'num', value: (r) => num(r.tolerance_pct, 2) },
  { label: 'Verdict', value: (r) => verdictPill(r.verdict) },
  { label: 'Data', value: coverageCell },
];

const recon = {
  title: 'Reconciliation',
  async render(ctx) {
    const runs = await api('/api/v1/reconciliation/runs?limit=400');
    if (!runs.length) return card(null, h('p', { class: 'empty' }, 'No reconciliation runs yet: the daily run reconciles yesterday at the configured time, or run `cloud-ingest reconcile --date YYYY-MM-DD`.'));
    const dates = [...new Set(runs.map((r) => r.date))].sort().reverse();
    const date = dates.includes(ctx.args[0]) ? ctx.args[0] : dates[0];
    const view = ['chain', 'tanks', 'meters', 'trips'].includes(ctx.args[1]) ? ctx.args[1] : 'chain';
    const ofDay = runs.filter((r) => r.date === date);
    const picked = Number(ctx.query.get('run'));
    const run = ofDay.find((r) => r.id === picked) || ofDay[0];
    const runQ = run.superseded_by !== null && run.superseded_by !== undefined ? `run=${run.id}` : '';
    const runPicker = ofDay.length > 1 ? h('select', { class: 'date', 'aria-label': 'run', onchange: (e) => go('recon', [date, ctx.args[1] || 'chain'], e.target.value === String(ofDay[0].id) ? {} : { run: e.target.value }) },
      ofDay.map((r) => h('option', { value: String(r.id), selected: r.id === run.id }, `run #${r.id}${r.superseded_by ? ` (superseded by #${r.superseded_by})` : ' (current)'}`))) : null;
    const picker = h('select', { class: 'date', 'aria-label': 'day', onchange: (e) => go('recon', [e.target.value, view]) }, dates.map((d) => h('option', { value: d, selected: d === date }, d)));
    const tabs = h('div', { class: 'tabs' }, ['chain', 'tanks', 'meters', 'trips'].map((v) => h('a', { href: `#/recon/${date}/${v}`, class: v === view ? 'tab active' : 'tab' }, { chain: 'Chain per product', tanks: 'Tank balances', meters: 'Meters', trips: 'Trips' }[v])));
    const csvName = view === 'chain' ? '' : `/${view}`;
    const csv = h('button', { type: 'button', class: 'secondary', onclick: () => download(`/api/v1/reconciliation/${date}${csvName}?format=csv${runQ ? `&${runQ}` : ''}`, `reconciliation-${date}-${view}${runQ ? `-run${run.id}` : ''}.csv`) }, `Export ${view} CSV`);
    const history = run.superseded_by ? ` · superseded by run #${run.superseded_by}` : run.supersedes ? ` · supersedes run #${run.supersedes}` : '';
    const path = view === 'chain' ? '' : `/${view}`;
    const recs = await apiAll(`/api/v1/reconciliation/${date}${path}${runQ ? `?${runQ}` : ''}`);
    const incomplete = recs.filter((r) => r.verdict === 'incomplete').length;
    const head = h('div', { class: 'toolbar' }, h('label', {}, 'Day (UTC) ', picker), runPicker, tabs, h('span', { class: 'spacer' }), csv,
      h('span', { class: 'muted' }, `run #${run.id} (${run.trigger}) at ${utc(run.finished_ms)}: ${run.records} records, ${run.exceptions} exceptions, ${run.alerts_opened} alerts opened, ${run.alerts_closed} closed${history}`),
      incomplete ? pill(`${incomplete} incomplete here: data missing, run again when it arrives`, 'incomplete') : null);
    let body;
    if (view === 'chain') {
      const chain = recs.filter((r) => r.kind === 'chain');
      const products = [...new Set(chain.map((r) => r.product))].sort();
      const parcels = recs.filter((r) => r.kind === 'parcel');
      body = [
        card('Ship → tanks → gantry → stations, per product', products.length ? products.map((p) => chainRow(p, chain.filter((r) => r.product === p))) : h('p', { class: 'empty' }, 'No chain records for this day.'),
          h('p', { class: 'legend' }, pill('within ½ tolerance', 'good'), ' ', pill('within tolerance', 'warn'), ' ', pill('outside tolerance', 'bad'), ' ', pill('incomplete data: not judged', 'incomplete'), ' ', pill('no data / pending', 'muted'))),
        card('Parcels closed this day', table([
          { label: 'Parcel', value: (r) => r.place },
          { label: 'Vessel', value: (r) => r.detail.vessel || '—' },
          { label: 'Stage', value: (r) => r.stage },
          { label: 'Product', value: (r) => r.product },
          ...varianceCols,
        ], parcels, { empty: 'No parcel closed this day.' })),
      ];
    } else if (view === 'tanks') {
      body = card('Tank balances: opening + receipts − dispatched − closing', table([
        { label: 'Tank', value: (r) => h('strong', {}, r.place) },
        { label: 'Product', value: (r) => r.product },
        { label: 'Opening', class: 'num', value: (r) => litres(r.detail.opening_l) },
        { label: 'Receipts', class: 'num', value: (r) => litres(r.detail.receipts_l) },
        { label: 'Dispatched', class: 'num', value: (r) => litres(r.detail.dispatched_l) },
        { label: 'Closing', class: 'num', value: (r) => litres(r.detail.closing_l) },
        ...varianceCols,
      ], recs, { empty: 'No tank records for this day.' }));
    } else if (view === 'meters') {
      body = card('Meter checks (batch records vs totalizer) and meter-vs-tank trends', table([
        { label: 'Meter', value: (r) => h('strong', {}, r.place) },
        { label: 'Kind', value: (r) => r.kind },
        { label: 'Product', value: (r) => r.product },
        ...varianceCols,
        { label: 'Detail', value: (r) => (r.kind === 'meter-check' ? `${r.detail.batches} batches, ${r.detail.basis}` : r.detail.ucl_pct !== null && r.detail.ucl_pct !== undefined ? `limits ${num(r.detail.lcl_pct, 3)} … ${num(r.detail.ucl_pct, 3)} %` : 'building baseline') },
      ], recs, { empty: 'No meter records for this day.' }));
    } else {
      body = card('Trips loaded this day', table([
        { label: 'Truck / BOL', value: (r) => h('a', { href: `#/trucks/${date}/${encodeURIComponent(r.detail.bol)}` }, r.place) },
        { label: 'Check', value: (r) => (r.stage === 'station-gauge' ? 'station gauge (TLS-350 vs ePOD)' : r.stage) },
        { label: 'Station', value: (r) => r.detail.station || '—' },
        { label: 'Product', value: (r) => r.product },
        { label: 'Delivered', value: (r) => utc(r.detail.delivered_ms) },
        ...varianceCols,
      ], recs, { empty: 'No trips for this day.' }));
    }
    return [head, body];
  },
};

// ---- trucks ----------------------------------------------------------------------------------
const trucks = {
  title: 'Trucks',
  async render(ctx) {
    const model = await siteModel();
    if (!model || !model.trucks.length) return card(null, h('p', { class: 'empty' }, 'No trucks in the site model yet ([[reconcile.trucks]] in the configuration).'));
    const runs = await api('/api/v1/reconciliation/runs?limit=400');
    const dates = [...new Set(runs.map((r) => r.date))].sort().reverse();
    if (!dates.length) return card(null, h('p', { class: 'empty' }, `No trips yet: ${model.trucks.length} truck(s) configured; trips appear once a day is reconciled.`));
    const date = dates.includes(ctx.args[0]) ? ctx.args[0] : dates[0];
    const trips = (await apiAll(`/api/v1/reconciliation/${date}/trips`)).filter((r) => r.stage === 'transit' && r.detail && r.detail.bol);
    const picker = h('select', { class: 'date', 'aria-label': 'day', onchange: (e) => go('trucks', [e.target.value]) }, dates.map((d) => h('option', { value: d, selected: d === date }, d)));
    if (!trips.length) return [h('div', { class: 'toolbar' }, h('label', {}, 'Day (UTC) ', picker)), card(null, h('p', { class: 'empty' }, 'No trips on this day.'))];
    const bol = ctx.args[1];
    const trip = trips.find((t) => t.detail.bol === bol) || trips.find((t) => t.verdict === 'exception' && t.detail.delivered_ms) || trips.find((t) => t.detail.delivered_ms) || trips[0];
    const d = trip.detail;
    const end = d.delivered_ms || (d.loaded_ms ? d.loaded_ms + 6 * 3600000 : serverNow());
    const start = d.loaded_ms || end - 6 * 3600000;
    let track = null;
    let note = null;
    try {
      [track] = await api(`/api/v1/track?truck=${encodeURIComponent(d.truck)}&from=${start - 600000}&to=${end + 600000}`);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) throw e;
      note = `Truck ${d.truck} has no GPS tags in the site model.`;
    }
    const unscheduled = track ? track.stops.filter((s) => !s.place) : [];
    const list = table([
      { label: 'Trip', value: (r) => h('a', { href: `#/trucks/${date}/${encodeURIComponent(r.detail.bol)}`, class: 'trip-link' }, h('strong', {}, r.detail.truck), h('br'), h('span', { class: 'muted' }, r.detail.bol)) },
      { label: 'Station', value: (r) => r.detail.station || '—' },
      { label: 'Transit', class: 'num', value: (r) => h('span', { class: `v ${varClass(r)}` }, pct(r.variance_pct)) },
      { label: '', value: (r) => verdictPill(r.verdict) },
    ], trips, { rowClass: (r) => (r === trip ? 'selected' : '') });
    return [
      h('div', { class: 'toolbar' }, h('label', {}, 'Day (UTC) ', picker), h('span', { class: 'muted' }, `${trips.length} trips`)),
      h('div', { class: 'split wide-side' },
        h('aside', { class: 'card side trips' }, list),
        h('div', { class: 'main-col' },
          card(`${d.truck} · ${d.bol}${d.station ? ` → ${d.station}` : ''}`,
            h('div', { class: 'stats small' },
              stat('loaded', d.loaded_ms ? utc(d.loaded_ms) : '—'),
              stat('delivered', d.delivered_ms ? utc(d.delivered_ms) : 'no ePOD'),
              stat('transit variance', pct(trip.variance_pct), `${litres(trip.variance_l)} · tolerance ±${trip.tolerance_pct} %`, varClass(trip)),
              stat('stops', track ? num(track.stops.length) : '—', unscheduled.length ? `${unscheduled.length} outside known places` : 'none unscheduled', unscheduled.length ? 'bad' : '')),
            note ? h('p', { class: 'empty' }, note) : track && track.fixes.length ? trackPlot(track, model.places) : h('p', { class: 'empty' }, 'No GPS fixes for this trip.'),
            h('p', { class: 'legend' }, h('span', { class: 'key start' }), ' loaded ', h('span', { class: 'key end' }), ' last fix ', h('span', { class: 'key station' }), ' station ', h('span', { class: 'key place' }), ' known place ', h('span', { class: 'key stop' }), ' unscheduled stop · local projection, no map tiles'),
            track && track.stops.length ? table([
              { label: 'Stop from', value: (s) => utc(s.from_ms) },
              { label: 'Minutes', class: 'num', value: (s) => num(s.minutes) },
              { label: 'Where', value: (s) => (s.place ? s.place : pill('outside every known place', 'bad')) },
              { label: 'Position', value: (s) => `${num(s.lat, 5)}, ${num(s.lon, 5)}` },
            ], track.stops) : null))),
    ];
  },
};

// ---- KPIs ------------------------------------------------------------------------------------
const kpis = {
  title: 'Terminal KPIs',
  async render() {
    const [k] = await api('/api/v1/kpis');
    if (!k) return card(null, h('p', { class: 'empty' }, 'No data yet: configure the [reconcile] site model (tanks and strapping tables) to see stock and endurance.'));
    const how = explain(
      'Gross stock is the gross observed volume (GOV) and net stock the net standard volume (NSV, at the tank\'s base temperature) from the latest good reading of each gauge tag (level, temperature, observed density, free water) through the tank\'s strapping table and API MPMS 11.1 — the same computation the reconciliation uses for a tank stock.',
      `Ready stock is the NSV above the tank's minimum operating level (min_operating_level_mm in the site model): NSV at the gauged level minus NSV at that level with the same temperature and density. A tank receiving a discharge now counts 0. Tanks whose readings are older than ${k.gauge_max_age_s} s are marked stale but counted.`,
      `Endurance is the ready stock of a product divided by its average daily loaded volume: the NSV of the gantry batch records of the last ${k.rate_days} days ÷ ${k.rate_days}. Figures as of ${utc(k.now_ms)} (server time).`);
    if (!k.tanks.length) return [card(null, h('p', { class: 'empty' }, 'No tanks in the site model.')), how];
    const cards = h('div', { class: 'stats' }, k.products.map((p) => stat(`${p.product}: days of endurance`,
      p.endurance_days === null ? '—' : num(p.endurance_days, 1),
      `ready ${litres(p.ready_l)} · loading ${litres(p.daily_rate_l)}/day${p.tanks_without_data ? ` · ${p.tanks_without_data} tank(s) without data` : ''}`,
      p.endurance_days === null ? '' : p.endurance_days < 3 ? 'bad' : p.endurance_days < 7 ? 'warn' : 'good')));
    const chart = bars(k.tanks.map((t) => ({
      label: `${t.tank} · ${t.product}`,
      note: t.ready_l === null ? t.status : `${num(t.ready_l / 1000)} m³ ready${t.status === 'ok' ? '' : ` · ${t.status}`}`,
      values: [
        { v: t.gov_l, cls: 'gross', title: `gross ${litres(t.gov_l)}` },
        { v: t.nsv_l, cls: 'net', title: `net ${litres(t.nsv_l)}` },
        { v: t.ready_l, cls: 'ready', title: `ready ${litres(t.ready_l)}` },
      ],
    })), { unit: 'L' });
    return [
      cards,
      card('Stock per tank', chart, h('p', { class: 'legend' }, h('span', { class: 'key gross' }), ' gross (GOV) ', h('span', { class: 'key net' }), ' net (NSV) ', h('span', { class: 'key ready' }), ' ready (NSV above the minimum operating level)'),
        table([
          { label: 'Tank', value: (t) => h('strong', {}, t.tank) },
          { label: 'Product', value: (t) => t.product },
          { label: 'Level', class: 'num', value: (t) => (t.level_mm === null ? '—' : `${num(t.level_mm)} mm`) },
          { label: 'Gross (GOV)', class: 'num', value: (t) => litres(t.gov_l) },
          { label: 'Net (NSV)', class: 'num', value: (t) => litres(t.nsv_l) },
          { label: 'Min. level', class: 'num', value: (t) => `${num(t.min_operating_level_mm)} mm` },
          { label: 'Ready', class: 'num', value: (t) => litres(t.ready_l) },
          { label: 'Gauged', value: (t) => (t.reading_ms ? h('span', { title: utc(t.reading_ms) }, age(t.reading_ms)) : '—') },
          { label: 'Status', value: (t) => pill(t.status, { ok: 'good', stale: 'warn', receiving: 'warn', 'no-data': 'muted' }[t.status]) },
        ], k.tanks)),
      card('Per product', table([
        { label: 'Product', value: (p) => h('strong', {}, p.product) },
        { label: 'Tanks', value: (p) => p.tanks.join(', ') },
        { label: 'Gross (GOV)', class: 'num', value: (p) => litres(p.gov_l) },
        { label: 'Net (NSV)', class: 'num', value: (p) => litres(p.nsv_l) },
        { label: 'Ready', class: 'num', value: (p) => litres(p.ready_l) },
        { label: `Loaded, ${k.rate_days} d`, class: 'num', value: (p) => litres(p.loaded_l) },
        { label: 'Per day', class: 'num', value: (p) => litres(p.daily_rate_l) },
        { label: 'Endurance', class: 'num', value: (p) => (p.endurance_days === null ? 'no loading' : `${num(p.endurance_days, 1)} d`) },
      ], k.products)),
      how,
    ];
  },
};

// ---- alerts ----------------------------------------------------------------------------------
const alerts = {
  title: 'Alerts',
  async render(ctx) {
    const state = ['open', 'closed', 'all'].includes(ctx.args[0]) ? ctx.args[0] : 'open';
    const rows = await api(`/api/v1/alerts?limit=500${state === 'all' ? '' : `&state=${state}`}`);
    const kinds = {};
    for (const a of rows) kinds[a.kind] = (kinds[a.kind] || 0) + 1;
    return [
      h('div', { class: 'toolbar' }, h('div', { class: 'tabs' }, ['open', 'closed', 'all'].map((s) => h('a', { href: `#/alerts/${s}`, class: s === state ? 'tab active' : 'tab' }, s))),
        h('span', { class: 'muted' }, Object.entries(kinds).map(([k, n]) => `${k} ${n}`).join(' · '))),
      card(null, table([
        { label: 'Opened', value: (a) => h('span', { title: utc(a.opened_ms, { seconds: true }) }, age(a.opened_ms)) },
        { label: 'Kind', value: (a) => pill(a.kind, a.state === 'open' ? 'bad' : 'muted') },
        { label: 'Site', value: (a) => a.site },
        { label: 'Where', value: (a) => a.place },
        { label: 'Day', value: (a) => (/^\d{4}-\d\d-\d\d$/.test(a.date) ? h('a', { href: `#/recon/${a.date}` }, a.date) : a.date) },
        { label: 'What happened', value: (a) => a.message },
        { label: 'State', value: (a) => (a.state === 'open' ? 'open' : `closed ${a.closed_reason ? `(${a.closed_reason})` : ''}`) },
      ], rows, { empty: state === 'open' ? 'No open alerts.' : 'No alerts yet.' })),
    ];
  },
};

export const pages = { fleet, tags, freshness, recon, trucks, kpis, alerts };
