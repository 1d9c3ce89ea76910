// The cherga dashboard: a client of the v1 API, nothing more.
//
// Rules this file keeps (the server's CSP backs the first two):
// - every value from the server is rendered with text nodes or attributes
//   (`h()` below), never parsed as HTML (a server test looks for such sinks);
// - no inline script or style: the page loads this file and app.css only;
// - state changes are POST/PUT/DELETE with JSON bodies through `api()`;
// - the token (auth on) lives in sessionStorage and goes out only in the
//   Authorization header, never in a URL.
'use strict';

const TOKEN_KEY = 'cherga.token';
const TRUNCATE = 2000; // characters of a payload or result shown before "show all"
const SPARK_SECONDS = 300; // the throughput charts cover the last five minutes
const DEAD_PAGE = 1000; // dead tasks read per request (the API's most)
const DEAD_MAX_PER_QUEUE = 5000; // dead letters read per queue at most
const PAGE_SIZE = 50;

// ---------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------

/** An element with attributes, listeners (`on…`) and children (text or nodes). */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  appendAll(el, children);
  return el;
}

function setProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.setAttribute('class', value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
}

function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function svg(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(props || {})) el.setAttribute(key, String(value));
  appendAll(el, children);
  return el;
}

function badge(state) {
  return h('span', { class: `badge state-${state}`, 'data-state': state }, state);
}

function time(text) {
  if (!text) return '—';
  const date = new Date(text);
  if (Number.isNaN(date.getTime())) return String(text);
  return date.toLocaleString(undefined, { hour12: false });
}

function ago(text) {
  if (!text) return '';
  const ms = Date.now() - new Date(text).getTime();
  if (!Number.isFinite(ms)) return '';
  const s = Math.round(Math.abs(ms) / 1000);
  const span = s < 90 ? `${s} s` : s < 5400 ? `${Math.round(s / 60)} min` : s < 172800 ? `${Math.round(s / 3600)} h` : `${Math.round(s / 86400)} d`;
  return ms >= 0 ? `${span} ago` : `in ${span}`;
}

/** JSON pretty-printed, cut to TRUNCATE characters with a button for the rest. */
function jsonBlock(value, id) {
  const text = value === undefined ? 'null' : JSON.stringify(value, null, 2);
  const pre = h('pre', { class: 'json', id }, text.length > TRUNCATE ? text.slice(0, TRUNCATE) + '…' : text);
  if (text.length <= TRUNCATE) return pre;
  const more = h('button', {
    onclick: () => { pre.textContent = text; more.remove(); },
  }, `show all (${text.length.toLocaleString()} characters)`);
  return h('div', null, pre, more);
}

function flash(message, bad) {
  const el = document.getElementById('flash');
  el.textContent = message;
  el.className = bad ? 'bad' : '';
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.hidden = true; }, bad ? 8000 : 3000);
}

function setMain(...children) {
  const main = document.getElementById('main');
  main.replaceChildren();
  appendAll(main, children);
}

// ---------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function authHeaders(extra) {
  const headers = Object.assign({ Accept: 'application/json' }, extra || {});
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  return headers;
}

/** Calls the API; answers the JSON body, or throws ApiError. */
/** A request body that is JSON text already, sent as it is. */
class RawJson {
  constructor(text) { this.text = text; }
}

async function api(method, path, body) {
  const init = { method, headers: authHeaders(), cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = body instanceof RawJson ? body.text : JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the server: ${e.message}`);
  }
  let json = null;
  try { json = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const error = (json && json.error) || {};
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(error.message || 'this server needs a token');
    }
    throw new ApiError(response.status, error.code || 'http', error.message || `HTTP ${response.status}`);
  }
  return json;
}

const q = encodeURIComponent;

// ---------------------------------------------------------------------------
// Who the caller is and what its scopes allow
// ---------------------------------------------------------------------------

let me = null; // the answer of GET /v1/whoami

function patternMatches(pattern, name) {
  const parts = pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\-]/g, '\\$&'));
  return new RegExp(`^${parts.join('.*')}$`).test(name);
}

/** Whether the caller may do `access` (produce, consume, read, admin) on `queue`. */
function allows(access, queue) {
  if (!me) return false;
  if (me.scopes.includes('admin')) return true;
  if (access === 'admin') return false;
  const kinds = access === 'read' ? ['produce', 'consume', 'read'] : [access];
  return me.scopes.some((scope) => {
    const [kind, pattern] = scope.split(/:(.*)/s);
    return kinds.includes(kind) && pattern !== undefined && patternMatches(pattern, queue);
  });
}

// What each action needs, as the API checks it (SECURITY.md).
const NEEDS = {
  retry: 'produce', cancel: 'produce', bulk: 'produce', purge: 'produce', pause: 'admin', settings: 'admin',
};

/** A button shown only when the caller's scopes allow `action` on `queue`. */
function actionButton(action, queue, label, onclick, props) {
  if (!allows(NEEDS[action], queue)) return null;
  return h('button', Object.assign({ 'data-action': action, onclick }, props || {}), label);
}

function renderWho() {
  const who = document.getElementById('who');
  const logout = document.getElementById('logout');
  if (!me) { who.textContent = ''; logout.hidden = true; return; }
  if (!me.auth) { who.textContent = 'auth off (loopback)'; logout.hidden = true; return; }
  who.textContent = `${me.subject || 'token'} · ${me.scopes.join(' ') || 'no scopes'}`;
  logout.hidden = false;
}

function showLogin(reason) {
  me = null;
  renderWho();
  live.stop();
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', placeholder: 'eyJ…', spellcheck: 'false' });
  const submit = async (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    input.value = '';
    await start();
  };
  setMain(h('div', { class: 'card login' },
    h('h1', null, 'Sign in'),
    h('p', { class: 'muted' }, reason || 'This server checks bearer tokens.'),
    h('p', null, 'Paste a token (from ', h('code', null, 'cherga token issue'), '). It stays in this tab only and is sent as a bearer token, never in a URL.'),
    h('form', { id: 'login', onsubmit: submit }, input, h('button', { class: 'primary', type: 'submit' }, 'Use token'))));
  input.focus();
}

// ---------------------------------------------------------------------------
// The event stream: fetch() streaming (EventSource cannot send a header),
// parsed here, resumed with Last-Event-ID after a drop.
// ---------------------------------------------------------------------------

const live = {
  lastId: null,
  controller: null,
  listeners: new Set(),
  running: false,
  generation: 0, // a loop whose generation is past stops

  start() {
    if (this.running) return;
    this.running = true;
    this.loop(++this.generation);
  },

  stop() {
    this.running = false;
    if (this.controller) this.controller.abort();
    this.status(false, 'signed out');
  },

  status(on, text) {
    const el = document.getElementById('live');
    el.className = `live ${on ? 'on' : 'off'}`;
    el.textContent = text;
  },

  async loop(generation) {
    let delay = 500;
    while (this.running && this.generation === generation) {
      this.controller = new AbortController();
      try {
        const headers = authHeaders({ Accept: 'text/event-stream' });
        if (this.lastId !== null) headers['Last-Event-ID'] = this.lastId;
        const response = await fetch('/v1/events', { headers, signal: this.controller.signal, cache: 'no-store', credentials: 'omit' });
        if (response.status === 401) { sessionStorage.removeItem(TOKEN_KEY); showLogin('the token was refused'); return; }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        this.status(true, 'live');
        delay = 500;
        await this.read(response.body);
      } catch (_) {
        // Dropped or refused: say so, wait, resume after the last event seen.
      }
      if (!this.running || this.generation !== generation) return;
      this.status(false, 'disconnected — reconnecting');
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10000);
    }
  },

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        this.dispatch(block);
      }
    }
  },

  dispatch(block) {
    let id = null; let type = 'message'; const data = [];
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'id') id = value;
      else if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
    if (id !== null) this.lastId = id;
    if (type === 'error') { flash(`event stream: ${data.join('\n')}`, true); return; }
    if (!data.length) return;
    let event;
    try { event = JSON.parse(data.join('\n')); } catch (_) { return; }
    if (!event || !event.data) return;
    stats.record(event);
    for (const listener of this.listeners) {
      try { listener(event); } catch (e) { console.error(e); }
    }
  },
};

/** Calls `fn` at most once per `ms`, the last call winning. */
function throttle(fn, ms) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => { timer = null; fn(); }, ms);
  };
}

// ---------------------------------------------------------------------------
// Throughput (from the event stream) and depth (from the counts), per queue
// ---------------------------------------------------------------------------

const stats = {
  seconds: new Map(), // queue → Map(second → {enq, ack})
  depth: new Map(), // queue → [[ms, depth]]

  record(event) {
    const change = event.data.change;
    if (change !== 'enqueued' && change !== 'acked') return;
    const second = Math.floor(Date.now() / 1000);
    let perQueue = this.seconds.get(event.data.queue);
    if (!perQueue) { perQueue = new Map(); this.seconds.set(event.data.queue, perQueue); }
    const slot = perQueue.get(second) || { enq: 0, ack: 0 };
    if (change === 'enqueued') slot.enq += 1; else slot.ack += 1;
    perQueue.set(second, slot);
    if (perQueue.size > SPARK_SECONDS + 60) {
      for (const key of perQueue.keys()) if (key < second - SPARK_SECONDS) perQueue.delete(key);
    }
  },

  sampleDepth(queues) {
    const now = Date.now();
    for (const queue of queues) {
      const c = queue.counts;
      let samples = this.depth.get(queue.name);
      if (!samples) { samples = []; this.depth.set(queue.name, samples); }
      samples.push([now, c.ready + c.scheduled + c.running]);
      while (samples.length && samples[0][0] < now - SPARK_SECONDS * 1000) samples.shift();
    }
  },

  /** Per-second enqueued and acked counts over the last SPARK_SECONDS. */
  series(queue) {
    const perQueue = this.seconds.get(queue) || new Map();
    const now = Math.floor(Date.now() / 1000);
    const enq = []; const ack = [];
    for (let s = now - SPARK_SECONDS + 1; s <= now; s++) {
      const slot = perQueue.get(s);
      enq.push(slot ? slot.enq : 0);
      ack.push(slot ? slot.ack : 0);
    }
    return { enq, ack };
  },
};

function sparkline(queue) {
  const width = 150; const height = 26;
  const { enq, ack } = stats.series(queue);
  const depth = (stats.depth.get(queue) || []);
  const peak = Math.max(1, ...enq, ...ack);
  const line = (values, cls) => svg('polyline', {
    class: cls,
    points: values.map((v, i) => `${(i * width / (values.length - 1)).toFixed(1)},${(height - 1 - v * (height - 2) / peak).toFixed(1)}`).join(' '),
  });
  const parts = [line(enq, 'enq'), line(ack, 'ack')];
  if (depth.length > 1) {
    const start = Date.now() - SPARK_SECONDS * 1000;
    const deepest = Math.max(1, ...depth.map((d) => d[1]));
    parts.push(svg('polyline', {
      class: 'depth',
      points: depth.map(([at, d]) => `${((at - start) * width / (SPARK_SECONDS * 1000)).toFixed(1)},${(height - 1 - d * (height - 2) / deepest).toFixed(1)}`).join(' '),
    }));
  }
  const rate = (values) => (values.slice(-10).reduce((a, b) => a + b, 0) / 10).toFixed(1);
  const title = `last 5 min — enqueued ${rate(enq)}/s, acked ${rate(ack)}/s (10 s average); depth ${depth.length ? depth[depth.length - 1][1] : '?'}`;
  return svg('svg', { class: 'spark', width, height, viewBox: `0 0 ${width} ${height}` }, svg('title', null, title), parts);
}

// ---------------------------------------------------------------------------
// Pages
// ---------------------------------------------------------------------------

const STATES = ['scheduled', 'ready', 'running', 'succeeded', 'dead', 'cancelled'];
let page = { cleanup: () => {} };

function onEvents(listener) {
  live.listeners.add(listener);
  const previous = page.cleanup;
  page.cleanup = () => { previous(); live.listeners.delete(listener); };
}

function onTimer(fn, ms) {
  const timer = setInterval(fn, ms);
  const previous = page.cleanup;
  page.cleanup = () => { previous(); clearInterval(timer); };
}

function errorCard(error) {
  return h('div', { class: 'card error-text', id: 'page-error' }, error.message || String(error));
}

// Overview -------------------------------------------------------------------

const overviewState = { sort: 'name', asc: true, filter: '' };

async function overview() {
  const columns = [['name', 'Queue'], ['paused', 'Paused'], ...STATES.map((s) => [s, s]), ['throughput', 'Last 5 min']];
  const tbody = h('tbody');
  const thead = h('thead');
  const summary = h('span', { class: 'muted' });
  const filter = h('input', { id: 'queue-filter', type: 'search', placeholder: 'filter queues', value: overviewState.filter });
  let queues = [];

  const renderHead = () => {
    thead.replaceChildren(h('tr', null, columns.map(([key, label]) => {
      const sortable = key !== 'throughput';
      const cls = [sortable ? 'sortable' : '', overviewState.sort === key ? 'sorted' : '', overviewState.sort === key && overviewState.asc ? 'asc' : '', STATES.includes(key) ? 'num' : ''].join(' ');
      return h('th', {
        class: cls,
        'data-sort': key,
        onclick: sortable ? () => {
          overviewState.asc = overviewState.sort === key ? !overviewState.asc : key === 'name';
          overviewState.sort = key;
          renderHead(); renderRows();
        } : null,
      }, label);
    })));
  };

  const value = (queue, key) => key === 'name' ? queue.name : key === 'paused' ? Number(queue.settings.paused) : queue.counts[key];

  const renderRows = () => {
    const needle = overviewState.filter.toLowerCase();
    const shown = queues.filter((queue) => queue.name.toLowerCase().includes(needle));
    const key = overviewState.sort;
    shown.sort((a, b) => {
      const x = value(a, key); const y = value(b, key);
      const order = x < y ? -1 : x > y ? 1 : 0;
      return overviewState.asc ? order : -order;
    });
    tbody.replaceChildren(...shown.map((queue) => h('tr', { 'data-queue': queue.name },
      h('td', null, h('a', { href: `#/queue/${q(queue.name)}` }, queue.name)),
      h('td', null, queue.settings.paused ? h('span', { class: 'badge paused' }, 'paused') : ''),
      STATES.map((state) => h('td', { class: `num${queue.counts[state] ? '' : ' zero'}`, 'data-count': state }, queue.counts[state].toLocaleString())),
      h('td', null, sparkline(queue.name)))));
    const total = (state) => queues.reduce((n, queue) => n + queue.counts[state], 0);
    summary.textContent = `${shown.length} of ${queues.length} queues · ${total('ready').toLocaleString()} ready · ${total('running').toLocaleString()} running (leased) · ${total('dead').toLocaleString()} dead`;
  };

  const load = async () => {
    try {
      queues = (await api('GET', '/v1/queues')).queues;
      stats.sampleDepth(queues);
      renderRows();
    } catch (e) { flash(e.message, true); }
  };

  filter.addEventListener('input', () => { overviewState.filter = filter.value; renderRows(); });
  renderHead();
  setMain(
    h('h1', null, 'Queues'),
    h('div', { class: 'toolbar' }, filter, h('span', { class: 'grow' }), summary),
    h('div', { class: 'legend' }, 'charts: ', h('span', { class: 'enq' }, 'enqueued/s'), ' · ', h('span', { class: 'ack' }, 'acked/s'), ' · ', h('span', { class: 'depth' }, 'depth'), ' (since this page opened)'),
    h('table', { id: 'queues' }, thead, tbody));
  await load();
  onEvents(throttle(load, 1000));
  onTimer(renderRows, 5000);
}

// Queue ----------------------------------------------------------------------

async function queuePage(name, params) {
  const state = STATES.includes(params.get('state')) ? params.get('state') : '';
  const cursors = []; // `after` of each page before the current one
  let after = params.get('after') || '';
  let info;
  try {
    info = await api('GET', `/v1/queues/${q(name)}`);
  } catch (e) { setMain(h('h1', null, name), errorCard(e)); return; }

  const head = h('div');
  const oldest = h('span', { class: 'muted', id: 'oldest-ready' });
  const tasksBody = h('tbody');
  const pager = h('div', { class: 'toolbar' });
  const search = h('input', { id: 'task-search', type: 'search', placeholder: 'task id, or a kind / group / key' });
  const searchField = h('select', { id: 'task-search-field', title: 'search the whole queue by' },
    ['kind', 'group', 'key'].map((f) => h('option', { value: f }, f)));
  let searchBy = null; // { field, value }: the server-side search in force
  let tasks = []; let next = null;

  const renderHead = () => {
    const paused = info.settings.paused;
    head.replaceChildren(
      h('h1', null, 'Queue ', h('code', null, info.name), ' ', paused ? h('span', { class: 'badge paused', id: 'paused' }, 'paused') : ''),
      h('div', { class: 'toolbar' },
        actionButton('pause', name, paused ? 'Resume' : 'Pause', async () => {
          try {
            info = await api('PUT', `/v1/queues/${q(name)}`, { paused: !paused });
            flash(info.settings.paused ? 'queue paused' : 'queue resumed');
            renderHead();
          } catch (e) { flash(e.message, true); }
        }, { id: 'pause' }), oldest),
      h('nav', { class: 'tabs' },
        h('a', { href: `#/queue/${q(name)}`, class: state === '' ? 'current' : '' }, 'all'),
        STATES.map((s) => h('a', { href: `#/queue/${q(name)}?state=${s}`, class: state === s ? 'current' : '', 'data-tab': s }, `${s} `, h('span', { class: 'muted' }, info.counts[s].toLocaleString())))));
  };

  const renderTasks = () => {
    tasksBody.replaceChildren(...tasks.map((t) => h('tr', { 'data-task': t.id },
      h('td', null, h('a', { class: 'mono', href: `#/task/${q(t.id)}` }, t.id)),
      h('td', null, t.kind),
      h('td', null, badge(t.state)),
      h('td', { class: 'num' }, `${t.attempts}/${t.max_attempts}`),
      h('td', null, t.group || ''),
      h('td', null, t.idempotency_key || ''),
      h('td', { title: t.lease_expires_at ? `lease expires ${time(t.lease_expires_at)}` : null }, t.worker || ''),
      h('td', { title: time(t.created_at) }, ago(t.created_at)),
      h('td', { class: 'error-text' }, (t.last_error || '').slice(0, 160)))));
    pager.replaceChildren(
      h('button', { id: 'prev', disabled: cursors.length === 0, onclick: () => { after = cursors.pop(); loadTasks(); } }, '← previous'),
      h('button', { id: 'next', disabled: !next, onclick: () => { cursors.push(after); after = next; loadTasks(); } }, 'next →'),
      h('span', { class: 'muted', id: 'page-summary' },
        searchBy ? `${tasks.length} in this page with ${searchBy.field} ${searchBy.value}` : `${tasks.length} in this page`));
  };

  const loadTasks = async () => {
    try {
      const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
      if (state) query.set('state', state);
      if (after) query.set('after', after);
      if (searchBy) query.set(searchBy.field, searchBy.value);
      const list = await api('GET', `/v1/queues/${q(name)}/tasks?${query}`);
      tasks = list.tasks; next = list.next || null;
      renderTasks();
    } catch (e) { flash(e.message, true); }
  };

  // The oldest ready task (lists are oldest first): how long work has waited.
  const loadOldest = async () => {
    try {
      const first = (await api('GET', `/v1/queues/${q(name)}/tasks?state=ready&limit=1`)).tasks[0];
      oldest.textContent = first ? `oldest ready task enqueued ${ago(first.created_at)}` : 'no ready tasks';
    } catch (e) { oldest.textContent = ''; }
  };

  const refresh = async () => {
    try { info = await api('GET', `/v1/queues/${q(name)}`); renderHead(); } catch (e) { flash(e.message, true); }
    await Promise.all([loadTasks(), loadOldest()]);
  };

  search.addEventListener('keydown', async (event) => {
    if (event.key !== 'Enter') return;
    const text = search.value.trim();
    if (/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(text)) { location.hash = `#/task/${q(text)}`; return; }
    // Anything else searches the whole queue, from its first page.
    searchBy = text ? { field: searchField.value, value: text } : null;
    cursors.length = 0; after = '';
    loadTasks();
  });

  setMain(head,
    h('div', { class: 'toolbar' }, searchField, search, h('span', { class: 'muted' }, 'Enter: a task id opens it; other text searches the whole queue by kind, group or idempotency key (empty: all)')),
    h('table', { id: 'tasks' }, h('thead', null, h('tr', null, ['id', 'kind', 'state', 'attempts', 'group', 'key', 'lease holder', 'created', 'last error'].map((c) => h('th', null, c)))), tasksBody),
    pager,
    h('div', { class: 'grid2' }, bulkCard(name, () => info, refresh), settingsCard(name, () => info, (v) => { info = v; renderHead(); })));
  renderHead();
  await Promise.all([loadTasks(), loadOldest()]);
  const throttledRefresh = throttle(refresh, 1000);
  onEvents((event) => { if (event.data.queue === name) throttledRefresh(); });
}

/** Retry, cancel or purge by filter: POST /v1/queues/{q}/tasks/{action}. */
function bulkCard(name, getInfo, refresh) {
  const actions = ['retry', 'cancel', 'purge'].filter((a) => allows(NEEDS[a === 'purge' ? 'purge' : 'bulk'], name));
  if (!actions.length) return h('div', { class: 'card', id: 'bulk' }, h('h2', null, 'Act on many tasks'), h('p', { class: 'muted' }, 'Your token may not change tasks in this queue.'));
  const stateSelect = h('select', { name: 'state' }, h('option', { value: '' }, 'any state'), STATES.map((s) => h('option', { value: s }, s)));
  const kind = h('input', { name: 'kind', placeholder: 'kind' });
  const group = h('input', { name: 'group', placeholder: 'group' });
  const afterInput = h('input', { name: 'enqueued_after', type: 'datetime-local', step: '1' });
  const beforeInput = h('input', { name: 'enqueued_before', type: 'datetime-local', step: '1' });
  const limit = h('input', { name: 'limit', type: 'number', min: '1', placeholder: 'no limit' });
  const confirmBox = h('div');
  const filterOf = () => {
    const filter = {};
    if (stateSelect.value) filter.state = stateSelect.value;
    if (kind.value.trim()) filter.kind = kind.value.trim();
    if (group.value.trim()) filter.group = group.value.trim();
    if (afterInput.value) filter.enqueued_after = new Date(afterInput.value).toISOString();
    if (beforeInput.value) filter.enqueued_before = new Date(beforeInput.value).toISOString();
    if (limit.value) filter.limit = Number(limit.value);
    return filter;
  };
  const howMany = (filter) => {
    const counts = getInfo().counts;
    const onlyState = Object.keys(filter).every((k) => k === 'state' || k === 'limit');
    if (!onlyState) return null;
    const n = filter.state ? counts[filter.state] : STATES.reduce((sum, s) => sum + counts[s], 0);
    return filter.limit ? Math.min(n, filter.limit) : n;
  };
  const ask = (action) => {
    const filter = filterOf();
    const n = howMany(filter);
    const what = n === null ? 'every task matching this filter' : `${n.toLocaleString()} task${n === 1 ? '' : 's'}`;
    confirmBox.replaceChildren(h('div', { class: 'confirm', id: 'confirm' },
      h('p', null, `${action[0].toUpperCase()}${action.slice(1)} ${what} in ${name}? `, h('code', null, JSON.stringify(filter))),
      h('button', { class: 'danger', id: 'confirm-yes', onclick: async () => {
        confirmBox.replaceChildren();
        try {
          const answer = await api('POST', `/v1/queues/${q(name)}/tasks/${action}`, filter);
          flash(`${action}: ${answer.matched} task${answer.matched === 1 ? '' : 's'} matched`);
          await refresh();
        } catch (e) {
          flash(e.code === 'route_not_found' ? `this server cannot ${action} by filter yet` : e.message, true);
        }
      } }, `Yes, ${action} ${what}`),
      ' ', h('button', { onclick: () => confirmBox.replaceChildren() }, 'No')));
  };
  return h('div', { class: 'card', id: 'bulk' },
    h('h2', null, 'Act on many tasks'),
    h('form', { class: 'bulk', onsubmit: (e) => e.preventDefault() },
      h('label', null, 'state', stateSelect), h('label', null, 'kind', kind), h('label', null, 'group', group),
      h('label', null, 'enqueued after', afterInput), h('label', null, 'enqueued before', beforeInput), h('label', null, 'limit', limit)),
    h('div', { class: 'toolbar' }, actions.map((a) => h('button', { class: a === 'purge' ? 'danger' : '', 'data-action': `bulk-${a}`, onclick: () => ask(a) }, `${a}…`))),
    confirmBox);
}

/** The queue's settings, editable with admin. */
function settingsCard(name, getInfo, changed) {
  const settings = getInfo().settings;
  const fields = [
    ['max_attempts', 'max attempts', settings.max_attempts],
    ['lease_ms', 'lease (ms)', settings.lease_ms],
    ['concurrency', 'concurrency (empty: no limit)', settings.concurrency],
    ['retention_ms', 'retention of finished (ms)', settings.retention_ms],
    ['dedup_window_ms', 'idempotency window (ms)', settings.dedup_window_ms],
  ];
  const editable = allows('admin', name);
  const inputs = fields.map(([key, , value]) => h('input', { name: key, type: 'number', min: '0', value: value === null ? '' : value, disabled: !editable }));
  const save = async (event) => {
    event.preventDefault();
    const body = {};
    fields.forEach(([key], i) => {
      const text = inputs[i].value.trim();
      if (key === 'concurrency') body[key] = text === '' ? null : Number(text);
      else if (text !== '') body[key] = Number(text);
    });
    try { changed(await api('PUT', `/v1/queues/${q(name)}`, body)); flash('settings saved'); } catch (e) { flash(e.message, true); }
  };
  return h('div', { class: 'card', id: 'settings' },
    h('h2', null, 'Settings'),
    h('form', { class: 'settings', onsubmit: save },
      fields.map(([, label], i) => [h('label', null, label), inputs[i]]),
      editable ? h('button', { type: 'submit', class: 'primary' }, 'Save') : h('span', { class: 'muted' }, 'admin only')),
    h('p', { class: 'muted' }, `backoff ${settings.backoff.initial_ms} ms × ${settings.backoff.multiplier} up to ${settings.backoff.max_ms} ms`));
}

// Task -----------------------------------------------------------------------

async function taskPage(id) {
  let task;
  const body = h('div');
  const eventsList = h('tbody');
  const seen = new Set();

  const addEvent = (event) => {
    if (seen.has(event.id)) return;
    seen.add(event.id);
    const d = event.data;
    eventsList.append(h('tr', { 'data-event': event.id },
      h('td', { class: 'num mono' }, event.id),
      h('td', null, time(event.time)),
      h('td', null, d.change, d.payload_edited ? h('span', { class: 'muted' }, ' (new payload)') : null),
      h('td', null, d.from ? badge(d.from) : '', ' → ', d.to ? badge(d.to) : ''),
      h('td', { class: 'num' }, d.attempt)));
  };

  const render = () => {
    const t = task;
    const queue = t.queue;
    const buttons = [];
    if (t.state === 'dead') {
      buttons.push(actionButton('retry', queue, 'Retry', async () => {
        try { task = await api('POST', `/v1/tasks/${q(t.id)}/retry`, {}); flash('sent back to ready'); render(); } catch (e) { flash(e.message, true); }
      }, { class: 'primary', id: 'retry' }));
    }
    if (t.state === 'scheduled' || t.state === 'ready') {
      buttons.push(actionButton('cancel', queue, 'Cancel', async () => {
        try { task = await api('DELETE', `/v1/tasks/${q(t.id)}`); flash('cancelled'); render(); } catch (e) { flash(e.message, true); }
      }, { class: 'danger', id: 'cancel' }));
    }
    const editor = h('div', { id: 'fix' });
    if (t.state === 'dead' && allows('produce', queue)) {
      buttons.push(h('button', { id: 'edit-payload', onclick: () => {
        const area = h('textarea', { id: 'payload-edit', spellcheck: 'false' }, JSON.stringify(t.payload, null, 2));
        editor.replaceChildren(h('div', { class: 'card' },
          h('h2', null, 'Fix the payload, then retry'),
          h('p', { class: 'muted' }, 'The new payload replaces the old one; the edit is recorded in the attempt history.'),
          area,
          h('div', { class: 'toolbar' }, h('button', { class: 'primary', id: 'retry-with-payload', onclick: async () => {
            try { JSON.parse(area.value); } catch (e) { flash(`not JSON: ${e.message}`, true); return; }
            // The text as typed, once checked: parsing and writing it again
            // would round numbers beyond a double's precision.
            const request = new RawJson(`{"payload":${area.value}}`);
            try { task = await api('POST', `/v1/tasks/${q(t.id)}/retry`, request); flash('retried with the new payload'); render(); } catch (e) { flash(e.message, true); }
          } }, 'Retry with this payload'), h('button', { onclick: () => editor.replaceChildren() }, 'Close'))));
      } }, 'Edit payload & retry…'));
    }
    const field = (label, ...value) => [h('dt', null, label), h('dd', null, ...value)];
    const history = t.history || [];
    body.replaceChildren(
      h('h1', null, 'Task ', h('code', { id: 'task-id' }, t.id), ' ', h('span', { id: 'task-state' }, badge(t.state))),
      h('div', { class: 'toolbar' }, buttons),
      editor,
      h('div', { class: 'grid2' },
        h('div', { class: 'card' }, h('dl', { class: 'fields' },
          field('queue', h('a', { href: `#/queue/${q(queue)}` }, queue)),
          field('kind', t.kind),
          field('state', t.state),
          field('attempts', `${t.attempts} of ${t.max_attempts}`),
          field('priority', t.priority),
          field('group', t.group || '—'),
          field('idempotency key', t.idempotency_key || '—'),
          field('run at', time(t.run_at), ' ', h('span', { class: 'muted' }, ago(t.run_at))),
          field('created', time(t.created_at)),
          field('updated', time(t.updated_at)),
          field('finished', time(t.finished_at)),
          field('lease holder', t.state === 'running' ? (t.worker || '(unnamed worker)') : '—'),
          field('lease expires', t.lease_expires_at ? [time(t.lease_expires_at), ' ', h('span', { class: 'muted' }, ago(t.lease_expires_at))] : '—'),
          field('last error', t.last_error ? h('span', { class: 'error-text' }, t.last_error) : '—'))),
        h('div', { class: 'card' }, h('h2', null, 'Attempts'),
          history.length ? h('ol', { class: 'timeline', id: 'history' }, history.map((a) => [h('li', { class: `outcome-${a.outcome}` },
            h('strong', null, `#${a.attempt} `), badge(a.outcome), ' ', a.worker ? h('span', null, 'by ', h('code', null, a.worker), ' ') : '',
            h('span', { class: 'muted' }, time(a.started_at), a.finished_at ? ` → ${time(a.finished_at)} (${((new Date(a.finished_at) - new Date(a.started_at)) / 1000).toFixed(2)} s)` : ' → now'),
            a.error ? h('div', { class: 'error-text' }, a.error) : ''),
            // After the attempt it followed: the attempts after it ran with the new payload.
            a.payload_edit ? h('li', { class: 'payload-edit', 'data-edited-after': a.attempt },
              h('strong', null, 'payload edited'), ' by ', a.payload_edit.by === null ? h('span', { class: 'muted' }, '(no token subject)') : h('code', { class: 'edited-by' }, a.payload_edit.by),
              ' ', h('span', { class: 'muted' }, time(a.payload_edit.at))) : null])) : h('p', { class: 'muted' }, 'not leased yet'))),
      h('h2', null, 'Payload'), jsonBlock(t.payload, 'payload'),
      h('h2', null, 'Result'), jsonBlock(t.result, 'result'),
      h('h2', null, 'Events'),
      h('table', { id: 'events' }, h('thead', null, h('tr', null, ['#', 'time', 'change', 'state', 'attempt'].map((c) => h('th', null, c)))), eventsList));
  };

  const load = async () => {
    try { task = await api('GET', `/v1/tasks/${q(id)}`); render(); } catch (e) { setMain(h('h1', null, 'Task ', h('code', null, id)), errorCard(e)); return false; }
    return true;
  };
  setMain(body);
  if (!await load()) return;
  const reload = throttle(load, 300);
  onEvents((event) => { if (event.data.task_id === id) { addEvent(event); reload(); } });
  try {
    const page = await api('GET', `/v1/events?task=${q(id)}&after=0&limit=1000`);
    page.events.forEach(addEvent);
  } catch (e) { flash(`events: ${e.message}`, true); }
}

// Dead letters ---------------------------------------------------------------

async function deadPage() {
  setMain(h('h1', null, 'Dead letters'), h('p', { class: 'muted' }, 'Loading…'));
  let queues;
  try { queues = (await api('GET', '/v1/queues')).queues; } catch (e) { setMain(h('h1', null, 'Dead letters'), errorCard(e)); return; }
  const dead = [];
  let cut = false;
  for (const queue of queues.filter((qq) => qq.counts.dead > 0)) {
    let after = '';
    for (let read = 0; read < DEAD_MAX_PER_QUEUE;) {
      const query = new URLSearchParams({ state: 'dead', limit: String(DEAD_PAGE) });
      if (after) query.set('after', after);
      let list;
      try { list = await api('GET', `/v1/queues/${q(queue.name)}/tasks?${query}`); } catch (e) { flash(e.message, true); break; }
      dead.push(...list.tasks);
      read += list.tasks.length;
      if (!list.next) break;
      after = list.next;
      if (read >= DEAD_MAX_PER_QUEUE) cut = true;
    }
  }
  const groups = new Map();
  for (const task of dead) {
    const key = task.last_error || '(no error)';
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(task);
  }
  const rows = new Map(); // task id → its state cell, updated live

  const retry = async (task) => {
    try {
      const answer = await api('POST', `/v1/tasks/${q(task.id)}/retry`, {});
      setRowState(task.id, answer.state);
      return true;
    } catch (e) { flash(`${task.id}: ${e.message}`, true); return false; }
  };
  const setRowState = (id, state) => {
    const row = rows.get(id);
    if (!row) return;
    row.cell.replaceChildren(badge(state));
    row.tr.setAttribute('data-state', state);
    if (row.button) row.button.disabled = state !== 'dead';
  };

  const cards = [...groups.entries()].sort((a, b) => b[1].length - a[1].length).map(([error, tasks]) => {
    const retryable = tasks.filter((t) => allows('produce', t.queue));
    const queuesOf = [...new Set(tasks.map((t) => t.queue))];
    const tbody = h('tbody', null, tasks.map((t) => {
      const cell = h('td', { class: 'state' }, badge(t.state));
      const button = actionButton('retry', t.queue, 'Retry', async () => { button.disabled = true; if (!await retry(t)) button.disabled = false; }, { 'data-retry': t.id });
      const tr = h('tr', { 'data-task': t.id, 'data-state': t.state },
        h('td', null, h('a', { class: 'mono', href: `#/task/${q(t.id)}` }, t.id)),
        h('td', null, h('a', { href: `#/queue/${q(t.queue)}?state=dead` }, t.queue)),
        h('td', null, t.kind),
        h('td', { class: 'num' }, t.attempts),
        h('td', { title: time(t.finished_at) }, ago(t.finished_at)),
        cell,
        h('td', null, button, ' ', allows('produce', t.queue) ? h('a', { href: `#/task/${q(t.id)}` }, 'fix payload…') : ''));
      rows.set(t.id, { tr, cell, button });
      return tr;
    }));
    const retryAll = retryable.length ? h('button', { class: 'primary', 'data-retry-group': error, onclick: async () => {
      retryAll.disabled = true;
      let n = 0;
      for (const t of retryable) if (rows.get(t.id).tr.getAttribute('data-state') === 'dead' && await retry(t)) n += 1;
      flash(`${n} task${n === 1 ? '' : 's'} sent back to ready`);
    } }, `Retry all ${retryable.length}`) : null;
    return h('div', { class: 'card dead-group' },
      h('div', { class: 'group-head' }, h('strong', null, `${tasks.length}×`), h('span', { class: 'error-text' }, error), h('span', { class: 'muted' }, queuesOf.join(', ')), retryAll),
      h('table', null, h('thead', null, h('tr', null, ['id', 'queue', 'kind', 'attempts', 'died', 'state', ''].map((c) => h('th', null, c)))), tbody));
  });

  setMain(h('h1', null, 'Dead letters'),
    h('p', { class: 'muted' }, `${dead.length.toLocaleString()} dead task${dead.length === 1 ? '' : 's'} in ${groups.size} group${groups.size === 1 ? '' : 's'} by error`, cut ? ` (at most ${DEAD_MAX_PER_QUEUE} per queue shown)` : ''),
    cards.length ? cards : h('div', { class: 'card muted', id: 'no-dead' }, 'No dead letters.'));
  onEvents((event) => { if (rows.has(event.data.task_id) && event.data.to) setRowState(event.data.task_id, event.data.to); });
}

// ---------------------------------------------------------------------------
// Routing: #/ · #/queue/NAME?state=S · #/task/ID · #/dead
// ---------------------------------------------------------------------------

async function route() {
  if (!me) return;
  page.cleanup();
  page = { cleanup: () => {} };
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll('header nav a')) {
    a.classList.toggle('current', (parts[0] || 'overview') === a.dataset.nav || (parts[0] === undefined && a.dataset.nav === 'overview'));
  }
  document.body.dataset.page = parts[0] || 'overview';
  if (parts[0] === 'queue' && parts[1]) await queuePage(parts[1], params);
  else if (parts[0] === 'task' && parts[1]) await taskPage(parts[1]);
  else if (parts[0] === 'dead') await deadPage();
  else await overview();
  document.body.dataset.ready = String(Date.now());
}

async function start() {
  try {
    me = await api('GET', '/v1/whoami');
  } catch (e) {
    if (e.status !== 401) setMain(errorCard(e));
    return;
  }
  renderWho();
  live.start();
  await route();
}

document.addEventListener('DOMContentLoaded', () => {
  window.addEventListener('hashchange', route);
  document.getElementById('logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('Token forgotten.');
  });
  start();
});
