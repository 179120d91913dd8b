// FlowSquare ops console: session, router, API calls, error hook and small DOM helpers.
// Plain ES module, no dependencies; served by cloud-ingest under a CSP that allows only 'self'.

// ---- error hook (read by the browser test) ---------------------------------------------------
const errors = (window.__consoleErrors = window.__consoleErrors || []);
window.addEventListener('error', (e) => errors.push(`error: ${e.message} at ${e.filename}:${e.lineno}`));
window.addEventListener('unhandledrejection', (e) => errors.push(`unhandled rejection: ${e.reason && (e.reason.stack || e.reason)}`));
document.addEventListener('securitypolicyviolation', (e) => errors.push(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`));
const consoleError = console.error.bind(console);
console.error = (...args) => {
  errors.push(args.map((a) => (a && a.stack) || String(a)).join(' '));
  consoleError(...args);
};

import { pages } from './pages.js';

// ---- session ---------------------------------------------------------------------------------
const TOKEN_KEY = 'flowsquare.token';
let me = null; // {name, role, can_audit, can_operate, now_ms, clock, clock_speed}
let sync = { server: 0, browser: 0, speed: 1 }; // the server's data clock at a browser instant

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

/** The server's data clock now (ms): every age is computed from it, never from the browser's
 * clock. A simulated clock (the demo) runs `clock_speed` times faster than real time. */
export function serverNow() {
  return Math.round(sync.server + (Date.now() - sync.browser) * sync.speed);
}

/** Raised on 401: the page is left for the login form (not reported as an error). */
export class Unauthorized extends Error {}

/** A problem+json answer other than 401. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(`${status} ${problem.title || ''}: ${problem.detail || ''}`);
    this.status = status;
    this.problem = problem;
  }
}

/** GET an API path; returns its `data` array (or the Response with raw). */
export async function api(path, { raw = false } = {}) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${token()}` }, cache: 'no-store' });
  if (res.status === 401) {
    logout('Your session has ended or the token is not accepted; sign in again.');
    throw new Unauthorized('401');
  }
  if (!res.ok) {
    let p = {};
    try { p = await res.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, p);
  }
  return raw ? res : (await res.json()).data;
}

/**
 * Every row of a paged list: follows `next` (the API's cursor) until the last page. `limit`
 * asks for large pages (fewer round trips); the server caps it per list.
 */
export async function apiAll(path, limit = 10000) {
  const sep = path.includes('?') ? '&' : '?';
  const first = limit ? `${path}${sep}limit=${limit}` : path;
  let rows = [];
  let url = first;
  for (;;) {
    const body = await (await api(url, { raw: true })).json();
    rows = rows.concat(body.data);
    if (!body.next) return rows;
    url = `${first}${first.includes('?') ? '&' : '?'}cursor=${encodeURIComponent(body.next)}`;
  }
}

/** Fetch with the token and save the answer as a file (CSV exports). */
export async function download(path, filename) {
  const res = await api(path, { raw: true });
  const url = URL.createObjectURL(await res.blob());
  const a = h('a', { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function refreshMe() {
  const t0 = Date.now();
  const [w] = await api('/api/v1/whoami');
  const t1 = Date.now();
  sync = { server: w.now_ms, browser: (t0 + t1) / 2, speed: w.clock_speed > 0 ? w.clock_speed : 1 };
  me = w;
  return w;
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  showLogin(message);
}

function showLogin(message) {
  byId('nav').hidden = true;
  byId('who').hidden = true;
  byId('page').replaceChildren();
  byId('login').hidden = false;
  const e = byId('login-error');
  e.hidden = !message;
  e.textContent = message || '';
  document.body.dataset.page = 'login';
  document.body.dataset.state = 'ready';
  byId('token').focus();
}

// ---- DOM helpers -----------------------------------------------------------------------------
export function byId(id) {
  return document.getElementById(id);
}

/** Create an element: h('td', {class: 'num', title: 'x', onclick: f}, 'text', child…). */
export function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

/** A table from column definitions [{label, value: row => text|Node, class}] and rows. */
export function table(columns, rows, { empty = 'No data yet.', rowClass } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { class: c.class }, c.label)))),
      h('tbody', {}, rows.map((r) => h('tr', { class: rowClass ? rowClass(r) : undefined },
        columns.map((c) => h('td', { class: c.class }, c.value(r))))))));
}

export function card(title, ...body) {
  return h('section', { class: 'card' }, title ? h('h2', {}, title) : null, ...body);
}

// ---- formatting ------------------------------------------------------------------------------
const nf = (d) => new Intl.NumberFormat('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
export function num(x, digits = 0) {
  if (x === null || x === undefined || Number.isNaN(x)) return '—';
  // No "-0" for a value that rounds to zero.
  return nf(digits).format(Math.abs(x) < 0.5 * 10 ** -digits ? 0 : x);
}
export function litres(x) {
  return x === null || x === undefined ? '—' : `${num(x)} L`;
}
export function pct(x, digits = 3) {
  return x === null || x === undefined ? '—' : `${x > 0 ? '+' : ''}${num(x, digits)} %`;
}
export function utc(ms, { seconds = false } = {}) {
  if (ms === null || ms === undefined) return '—';
  const s = new Date(ms).toISOString();
  return `${s.slice(0, 10)} ${s.slice(11, seconds ? 19 : 16)} UTC`;
}
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
  const neg = ms < 0;
  let s = Math.round(Math.abs(ms) / 1000);
  let out;
  if (Math.abs(ms) < 1000) out = `${Math.round(Math.abs(ms))} ms`;
  else if (s < 60) out = `${s} s`;
  else if (s < 3600) out = `${Math.floor(s / 60)} min ${s % 60 ? `${s % 60} s` : ''}`.trim();
  else if (s < 86400) out = `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  else out = `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  return neg ? `in ${out}` : out;
}
/** "3 h 5 min ago", from the server's clock. */
export function age(ms) {
  if (ms === null || ms === undefined) return 'never';
  const d = serverNow() - ms;
  return d < 0 ? `${duration(-d)} ahead` : `${duration(d)} ago`;
}

// ---- router ----------------------------------------------------------------------------------
let generation = 0;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, qs] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || 'fleet', args: parts.slice(1), query: new URLSearchParams(qs || '') };
}

/** Change the hash (a new navigation). */
export function go(name, args = [], query = {}) {
  const qs = new URLSearchParams(query).toString();
  location.hash = `#/${[name, ...args].map(encodeURIComponent).join('/')}${qs ? `?${qs}` : ''}`;
}

async function render() {
  const gen = ++generation;
  if (!token()) return showLogin();
  const { name, args, query } = parseHash();
  const page = pages[name] || pages.fleet;
  document.body.dataset.state = 'loading';
  document.body.dataset.page = pages[name] ? name : 'fleet';
  const view = byId('page');
  try {
    await refreshMe();
    if (gen !== generation) return;
    byId('login').hidden = true;
    byId('nav').hidden = false;
    byId('who').hidden = false;
    byId('who-name').textContent = me.name;
    byId('who-role').textContent = me.role;
    for (const a of byId('nav').querySelectorAll('a')) {
      a.classList.toggle('active', a.dataset.page === document.body.dataset.page);
    }
    const st = byId('server-time');
    st.textContent = me.clock === 'simulated'
      ? `SIMULATED clock (×${me.clock_speed}): ${utc(me.now_ms)} · times are UTC · every time and age is on the simulator's clock`
      : `Server time ${utc(me.now_ms)} · times are UTC · ages are from the server's clock`;
    st.dataset.clock = me.clock || 'real';
    const root = h('div', { class: 'page', id: `page-${document.body.dataset.page}` });
    root.append(h('p', { class: 'loading' }, 'Loading…'));
    view.replaceChildren(root);
    document.title = `${page.title} · FlowSquare console`;
    const ctx = { me, args, query, root, stale: () => gen !== generation };
    const content = await page.render(ctx);
    if (gen !== generation) return;
    root.replaceChildren(h('h1', {}, page.title), ...[content].flat(Infinity));
    document.body.dataset.state = 'ready';
  } catch (e) {
    if (gen !== generation || e instanceof Unauthorized) return;
    console.error(`page ${name}:`, e);
    view.replaceChildren(h('div', { class: 'page' }, h('h1', {}, page.title),
      h('p', { class: 'error' }, `Could not load this page: ${e.message}`)));
    document.body.dataset.state = 'error';
  }
}

function start() {
  byId('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const t = byId('token').value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    byId('token').value = '';
    try {
      await refreshMe();
    } catch (e) {
      if (!(e instanceof Unauthorized)) showLogin(`Sign-in failed: ${e.message}`);
      return;
    }
    render();
  });
  byId('logout').addEventListener('click', () => logout(''));
  window.addEventListener('hashchange', render);
  render();
}

start();
