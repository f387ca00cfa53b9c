// Tally's dashboard page: it calls the management API with the session cookie and shows
// what it answers. It holds no rules of its own: what a role may do is the API's to say,
// and its refusals are shown as they come. Quantities and money stay the API's decimal
// strings; the only arithmetic here is exact (BigInt) addition for per-project totals, and
// floating point is used for drawing alone.
import uPlot from './vendor/uplot/uPlot.esm.js';

const $ = (id) => document.getElementById(id);
// stackBy: per meter, 'project' or the dimension its chart is stacked by.
const state = { org: null, role: null, summary: null, projects: [], page: 'usage', zoomDay: null, stackBy: {} };
// The drawn charts by meter (destroyed before they are drawn again).
const charts = new Map();

// ---- API ----------------------------------------------------------------------------

function cookie(name) {
  for (const part of document.cookie.split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === name) return v.join('=');
  }
  return '';
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  // Every change made with the session cookie repeats the CSRF cookie in this header
  // (the API refuses it with 403 csrf otherwise).
  if (method !== 'GET') headers['X-CSRF-Token'] = cookie('__Host-tally_csrf');
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) {
    const err = data && data.error ? data.error : {};
    throw new ApiError(response.status, err.code || 'http_' + response.status,
      err.message || `the server answered ${response.status}`);
  }
  return data;
}

const orgPath = (rest) => `/v1/orgs/${encodeURIComponent(state.org)}${rest}`;

function showError(e) {
  if (e instanceof ApiError && e.status === 401) {
    signedOut('Your session has ended; sign in again.');
    return;
  }
  const alert = $('alert');
  alert.textContent = e instanceof ApiError ? `${e.message} (${e.status} ${e.code})` : String(e.message || e);
  alert.dataset.code = e instanceof ApiError ? e.code : 'error';
  alert.hidden = false;
}

function clearError() {
  $('alert').hidden = true;
  $('alert').textContent = '';
}

// ---- exact decimals -------------------------------------------------------------------

function parseDec(s) {
  const neg = s.startsWith('-');
  const [i, f = ''] = (neg ? s.slice(1) : s).split('.');
  return { n: BigInt(i + f) * (neg ? -1n : 1n), scale: f.length };
}

function scaled(d, scale) {
  return d.n * 10n ** BigInt(scale - d.scale);
}

function formatDec(n, scale) {
  const neg = n < 0n;
  let s = (neg ? -n : n).toString().padStart(scale + 1, '0');
  if (scale > 0) {
    s = s.slice(0, s.length - scale) + '.' + s.slice(s.length - scale);
    s = s.replace(/0+$/, '').replace(/\.$/, '');
  }
  return (neg ? '-' : '') + s;
}

// Σ terms − Σ minus, exactly.
function decimalSum(terms, minus = []) {
  const all = [...terms, ...minus].map(parseDec);
  const scale = Math.max(0, ...all.map((d) => d.scale));
  let n = 0n;
  all.forEach((d, i) => { n += (i < terms.length ? 1n : -1n) * scaled(d, scale); });
  return formatDec(n, scale);
}

// ---- helpers ------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'text') node.textContent = v;
    else if (k.startsWith('data-')) node.setAttribute(k, v);
    else if (k === 'onclick') node.addEventListener('click', v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function fillBody(table, rows) {
  const tbody = table.querySelector('tbody');
  tbody.replaceChildren(...rows);
}

function row(...cells) {
  return el('tr', {}, ...cells.map((c) => (c instanceof Node ? el('td', {}, c) : el('td', { text: c ?? '' }))));
}

const iso = (d) => d.toISOString().replace('.000Z', 'Z');

// ---- session ------------------------------------------------------------------------

function signedOut(message) {
  delete document.body.dataset.loaded;
  $('session').hidden = true;
  $('app-view').hidden = true;
  $('sign-in-view').hidden = false;
  if (message) {
    $('alert').textContent = message;
    $('alert').hidden = false;
  }
  $('token').focus();
}

async function signIn(event) {
  event.preventDefault();
  clearError();
  try {
    await api('POST', '/dashboard/sign-in', { token: $('token').value.trim() });
    $('token').value = '';
    await start();
  } catch (e) {
    // A refused token is shown here, not as a lost session.
    $('alert').textContent = `${e.message}${e.status ? ` (${e.status} ${e.code})` : ''}`;
    $('alert').hidden = false;
  }
}

async function signOut() {
  // A refused sign-out (503 sign_out_failed: the session could not be revoked) leaves the
  // user signed in, and says so; only a done one shows the sign-in form.
  try { await api('POST', '/dashboard/sign-out'); } catch (e) { showError(e); return; }
  signedOut('Signed out.');
}

async function start() {
  let mine;
  try {
    mine = await api('GET', '/v1/me/orgs');
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) { signedOut(); return; }
    showError(e);
    return;
  }
  const select = $('org');
  select.replaceChildren(...mine.orgs.map((m) => el('option', { value: m.org.id, text: `${m.org.name} (${m.role})` })));
  $('sign-in-view').hidden = true;
  $('session').hidden = false;
  $('app-view').hidden = false;
  if (mine.orgs.length === 0) {
    showError(new Error('You are not a member of any organization yet.'));
    return;
  }
  const saved = sessionStorage.getItem('tally.org');
  const pick = mine.orgs.find((m) => m.org.id === saved) || mine.orgs[0];
  select.value = pick.org.id;
  await selectOrg(pick.org.id, mine.orgs);
}

async function selectOrg(id, orgs) {
  state.org = id;
  const found = (orgs || []).find((m) => m.org.id === id);
  if (found) state.role = found.role;
  sessionStorage.setItem('tally.org', id);
  state.zoomDay = null;
  // Another org's meters may lack the dimensions a chart was stacked by here.
  state.stackBy = {};
  await showPage(state.page);
}

// ---- pages --------------------------------------------------------------------------

const PAGES = ['usage', 'limits', 'billing', 'manage'];

async function showPage(page) {
  state.page = page;
  clearError();
  for (const p of PAGES) {
    $(`page-${p}`).hidden = p !== page;
    $(`tab-${p}`).setAttribute('aria-selected', String(p === page));
  }
  try {
    if (page === 'usage') await loadUsage();
    if (page === 'limits') await loadLimits();
    if (page === 'billing') await loadBilling();
    if (page === 'manage') await loadManage();
  } catch (e) {
    showError(e);
  }
  // What the page shows now, for the browser test to wait on.
  document.body.dataset.loaded = loadedKey(page);
}

function loadedKey(page) {
  return state.zoomDay && page === 'usage' ? `usage:${state.zoomDay}` : page;
}

// Usage: per meter, a range by day (or one day by hour), stacked by project or by one of
// the meter's dimensions; the table under each chart follows the same choice.

const COLORS = ['#2563eb', '#db2777', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#dc2626', '#4b5563'];

// The range picked above the charts, in whole UTC days: this month so far (the API's
// default), last month, or a custom first..last day (sent as the API's half-open from..to).
// "This month" is the server's (the summary's period), not the browser's clock. The API
// bounds a range (buckets, months); its refusal is shown as it comes.
function usageRange(period) {
  const kind = $('usage-range').value;
  if (kind === 'last-month') {
    const [y, m] = period.split('-').map(Number);
    const from = new Date(Date.UTC(y, m - 2, 1)).toISOString().slice(0, 10);
    return { kind, from, to: `${period}-01`, label: `last month (${from.slice(0, 7)})` };
  }
  if (kind === 'custom') {
    const from = $('usage-from').value;
    const last = $('usage-to').value;
    if (!from || !last) throw new Error('Pick the first and the last day of the range.');
    const to = new Date(Date.parse(last) + 86400000).toISOString().slice(0, 10);
    return { kind, from, to, label: `${from} to ${last}` };
  }
  return { kind: 'this-month', from: undefined, to: undefined, label: `this month (${period})` };
}

// What the usage page reads now: the picked range, or the zoomed day by hour.
function usageView() {
  const range = usageRange(state.summary.period);
  if (!state.zoomDay) return { range, granularity: 'day', from: range.from, to: range.to };
  const start = Date.parse(state.zoomDay);
  return { range, granularity: 'hour', from: iso(new Date(start)), to: iso(new Date(start + 86400000)) };
}

// One meter's series, split the way its stack choice says: `per_project=true`, or
// `group_by=<dimension>`. An org with more projects than one request splits is refused
// `too_many_projects`: the org's series is drawn unstacked, with the API's reason shown.
async function meterSeries(m, stack, view) {
  const q = new URLSearchParams({ org_id: state.org, meter: m.meter, granularity: view.granularity });
  if (view.from) q.set('from', view.from);
  if (view.to) q.set('to', view.to);
  const split = new URLSearchParams(q);
  split.set(stack === 'project' ? 'per_project' : 'group_by', stack === 'project' ? 'true' : stack);
  try {
    return { org: await api('GET', `/v1/usage?${split}`), stack };
  } catch (e) {
    if (stack !== 'project' || !(e instanceof ApiError) || e.code !== 'too_many_projects') throw e;
    return { org: await api('GET', `/v1/usage?${q}`), stack: 'none', notice: e.message };
  }
}

// The parts a meter's answer is stacked by: each project, or each value of the dimension.
function partsOf({ org, stack }) {
  if (stack === 'project') {
    const byId = new Map((org.projects || []).map((p) => [p.project_id, p.series]));
    // The rest is what the org has in projects the caller does not see (a member's view).
    return { parts: state.projects.map((p) => ({ label: p.name, series: byId.get(p.id) || [] })), rest: 'Other projects' };
  }
  if (stack === 'none') return { parts: [{ label: 'All usage', series: org.series }], rest: 'Other' };
  return { parts: (org.groups || []).map((g) => ({ label: `${stack}=${g.value}`, series: g.series })), rest: `No ${stack}` };
}

async function loadUsage() {
  const [summary, projects] = await Promise.all([
    api('GET', orgPath('/usage/summary')),
    api('GET', orgPath('/projects')),
  ]);
  state.summary = summary;
  state.projects = projects.projects.filter((p) => !p.archived_at);
  const view = usageView();
  $('usage-period').textContent = view.range.label;
  $('usage-zoom').hidden = !state.zoomDay;
  $('usage-day').textContent = state.zoomDay ? state.zoomDay.slice(0, 10) : '';
  document.body.dataset.usageRange = `${view.range.kind}:${view.from ?? ''}/${view.to ?? ''}`;
  for (const c of charts.values()) c.destroy();
  charts.clear();
  const figures = await Promise.all(summary.meters.map(async (m) => {
    // A remembered dimension the meter no longer lists (a new catalogue version) is dropped.
    const chosen = state.stackBy[m.meter];
    const stack = chosen && (m.dimensions || []).includes(chosen) ? chosen : 'project';
    const answer = await meterSeries(m, stack, view);
    return { m, answer };
  }));
  $('usage-meters').replaceChildren(...figures.map(({ m, answer }) => meterFigure(m, answer, view)));
  for (const { m, answer } of figures) drawChart(m, answer, view);
}

// A new stack choice for one meter: only its figure is read and drawn again, and the
// keyboard focus stays on its picker.
async function restack(m, stack) {
  delete document.body.dataset.loaded;
  clearError();
  try {
    const view = usageView();
    const answer = await meterSeries(m, stack, view);
    // Remembered only once the API answered it, so a refused choice cannot blank the tab.
    state.stackBy[m.meter] = stack;
    const old = charts.get(m.meter);
    if (old) old.destroy();
    $(`meter-${m.meter}`).replaceWith(meterFigure(m, answer, view));
    drawChart(m, answer, view);
    $(`meter-${m.meter}-stack`).focus();
  } catch (e) {
    showError(e);
  }
  document.body.dataset.loaded = loadedKey('usage');
}

function buckets(org, granularity) {
  const step = granularity === 'hour' ? 3600000 : 86400000;
  const out = [];
  for (let t = Date.parse(org.from); t < Date.parse(org.to); t += step) out.push(iso(new Date(t)));
  return out;
}

function stacks(answer) {
  // One layer per part with usage, plus whatever the org has outside them (exactly).
  const { parts, rest: restLabel } = partsOf(answer);
  const layers = parts.filter((p) => p.series.length > 0)
    .map((p) => ({ label: p.label, values: new Map(p.series.map((s) => [s.start, s.value])) }));
  const orgValues = new Map(answer.org.series.map((s) => [s.start, s.value]));
  const rest = new Map();
  for (const [start, value] of orgValues) {
    const inParts = layers.map((l) => l.values.get(start)).filter((v) => v !== undefined);
    const other = decimalSum([value], inParts);
    if (other !== '0') rest.set(start, other);
  }
  if (rest.size > 0) layers.push({ label: restLabel, values: rest });
  return { layers, orgValues };
}

// The stack picker of a meter with dimensions: by project, or by one of its dimensions.
function stackPicker(m, stack) {
  const id = `meter-${m.meter}-stack`;
  const select = el('select', { id, 'data-meter': m.meter },
    el('option', { value: 'project', text: 'Project' }),
    ...m.dimensions.map((d) => el('option', { value: d, text: `Dimension: ${d}` })));
  select.value = stack === 'none' ? 'project' : stack;
  select.addEventListener('change', () => restack(m, select.value));
  return el('p', { class: 'stack-by' }, el('label', { for: id, text: 'Stack by ' }), select);
}

function meterFigure(m, answer, view) {
  const { org } = answer;
  const { layers, orgValues } = stacks(answer);
  const { granularity } = view;
  const id = `meter-${m.meter}`;
  const figure = el('figure', { class: 'meter', id, 'aria-labelledby': `${id}-title` });
  // The month so far is the summary's figure; any other span is the exact sum of the
  // API's buckets (decimal strings added as integers, never as floats).
  const month = !state.zoomDay && view.range.kind === 'this-month';
  const total = month ? m.value : decimalSum([...orgValues.values()]);
  const totalLabel = state.zoomDay ? 'Total this day' : month ? 'Total this month' : `Total ${view.range.label}`;
  const by = answer.stack === 'project' ? 'project' : answer.stack === 'none' ? 'nothing (the organization as a whole)' : `its ${answer.stack} dimension`;
  figure.append(el('h3', { id: `${id}-title`, text: m.meter }));
  if (m.dimensions && m.dimensions.length > 0) figure.append(stackPicker(m, answer.stack));
  if (answer.notice) {
    figure.append(el('p', { class: 'notice', role: 'status', id: `${id}-notice`,
      text: `Not stacked by project: ${answer.notice}. Showing the organization's total.` }));
  }
  figure.append(
    el('div', { class: 'chart-row' },
      el('div', { class: 'chart', id: `${id}-chart`, role: 'img', 'aria-label': `${m.meter} by ${granularity}, stacked by ${by}; the table below has the figures` }),
      el('dl', { class: 'totals' },
        el('dt', { text: totalLabel }),
        el('dd', { class: 'total', id: `${id}-total`, 'data-meter': m.meter, text: total }),
        ...layers.flatMap((l) => [el('dt', { text: l.label }), el('dd', { 'data-layer': l.label, text: decimalSum([...l.values.values()]) })]))),
  );
  const head = el('tr', {}, el('th', { scope: 'col', text: granularity === 'hour' ? 'Hour (UTC)' : 'Day (UTC)' }),
    ...layers.map((l) => el('th', { scope: 'col', text: l.label })), el('th', { scope: 'col', text: 'Total' }));
  if (!state.zoomDay) head.append(el('th', { scope: 'col', text: 'Zoom' }));
  const body = buckets(org, granularity).map((start) => {
    const label = granularity === 'hour' ? start.slice(11, 16) : start.slice(0, 10);
    const tr = el('tr', {}, el('th', { scope: 'row', text: label }),
      ...layers.map((l) => el('td', { text: l.values.get(start) ?? '0' })),
      el('td', { text: orgValues.get(start) ?? '0' }));
    if (!state.zoomDay) {
      tr.append(el('td', {}, el('button', {
        type: 'button', class: 'zoom', 'data-day': start, 'aria-label': `Show the hours of ${label}`, text: 'Hours',
        onclick: () => { state.zoomDay = start; showPage('usage'); },
      })));
    }
    return tr;
  });
  const details = el('details', { class: 'table-alt' },
    el('summary', { text: `${m.meter}: the figures as a table` }),
    el('table', {}, el('thead', {}, head), el('tbody', {}, ...body)));
  details.open = true;
  figure.append(details);
  figure.dataset.layers = JSON.stringify(layers.map((l) => l.label));
  figure.dataset.stack = answer.stack;
  return figure;
}

function drawChart(m, answer, view) {
  const { layers } = stacks(answer);
  const target = $(`meter-${m.meter}-chart`);
  const xs = buckets(answer.org, view.granularity);
  const x = xs.map((s) => Date.parse(s) / 1000);
  // Stacked areas: layer i is drawn at the sum of layers 0..i, tallest first, so each
  // lower layer paints over the part of the one above it.
  let running = xs.map(() => 0);
  const cumulative = layers.map((l) => {
    running = running.map((v, i) => v + Number(l.values.get(xs[i]) ?? '0'));
    return running;
  });
  const order = layers.map((_, i) => i).reverse();
  const width = Math.max(260, Math.min(720, target.clientWidth || 320));
  const opts = {
    width,
    height: 200,
    scales: { x: { time: true } },
    legend: { show: true },
    cursor: { drag: { x: false, y: false } },
    series: [{}, ...order.map((i) => ({
      label: layers[i].label,
      stroke: COLORS[i % COLORS.length],
      fill: COLORS[i % COLORS.length] + '55',
      points: { show: false },
    }))],
  };
  const data = [x, ...order.map((i) => cumulative[i])];
  if (layers.length === 0) {
    opts.series.push({ label: 'No usage', stroke: '#9ca3af' });
    data.push(x.map(() => 0));
  }
  charts.set(m.meter, new uPlot(opts, data, target));
}

// Limits: each allowance as a gauge, with the 80 % and 100 % marks and its kind.

async function loadLimits() {
  const summary = await api('GET', orgPath('/usage/summary'));
  $('limits-plan').textContent = `(${summary.plan} plan, ${summary.period})`;
  const gauges = summary.meters.filter((m) => m.included !== undefined && m.included !== null).map((m) => {
    const percent = Number(m.percent_used ?? '0');
    const kind = m.limit ? 'hard' : 'soft';
    const fill = el('div', { class: 'fill' });
    fill.style.width = `${Math.min(100, percent)}%`;
    const gauge = el('div', {
      class: `gauge${percent >= 100 ? ' full' : percent >= 80 ? ' warn' : ''}`,
      role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(Math.min(100, percent)),
      'aria-label': `${m.meter}: ${m.percent_used} % of the allowance used (${kind} limit)`,
      'data-meter': m.meter, 'data-percent': m.percent_used ?? '0', 'data-kind': kind,
    }, fill, el('span', { class: 'mark mark-80', title: '80 %' }), el('span', { class: 'mark mark-100', title: '100 %' }));
    return el('div', { class: 'gauge-box' },
      el('h3', { text: m.meter }), gauge,
      el('p', { text: `${m.value} of ${m.included} (${m.percent_used} %), ${kind} limit${kind === 'hard' ? ': events past it are refused' : ': billed as overage'}` }));
  });
  $('limits-gauges').replaceChildren(...gauges);
  fillBody($('limits-table'), summary.meters.map((m) => row(m.meter, m.value, m.included ?? 'unlimited',
    m.percent_used ? `${m.percent_used} %` : '', m.included ? (m.limit ? 'hard' : 'soft') : '')));
}

// Billing: the upcoming invoice and the closed months.

async function loadBilling() {
  const upcoming = await api('GET', orgPath('/invoices/upcoming'));
  $('upcoming-period').textContent = `(${upcoming.period}, as of ${upcoming.as_of})`;
  $('upcoming-total').textContent = `${upcoming.total} ${upcoming.currency.toUpperCase()}`;
  $('upcoming-projected').textContent = `${upcoming.projected_total} ${upcoming.currency.toUpperCase()}`;
  fillBody($('upcoming-lines'), upcoming.lines.map((l) => row(l.meter, l.quantity, l.included, l.billable, l.amount,
    l.projected_quantity, l.projected_amount)));
  try {
    const past = await api('GET', orgPath('/invoices'));
    fillBody($('invoices'), past.invoices.map((i) => {
      const stripe = i.stripe.hosted_url
        ? el('a', { href: i.stripe.hosted_url, rel: 'noopener noreferrer', target: '_blank', text: i.stripe.status })
        : i.stripe.status;
      return row(i.period, i.plan, `${i.total} ${i.currency.toUpperCase()}`, i.closed_at, stripe);
    }));
  } catch (e) {
    fillBody($('invoices'), [row(e.message)]);
  }
}

// Manage: projects, keys, members, invitations, the security policy, sessions, audit
// trail. Each list the role may not read shows the API's refusal in its place.

async function listInto(table, path, render, full = false) {
  try {
    const data = await api('GET', full ? path : orgPath(path));
    fillBody(table, render(data));
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) throw e;
    fillBody(table, [row(e.message)]);
  }
}

async function loadManage() {
  await Promise.all([
    listInto($('projects'), '/projects', (d) => d.projects.map((p) => row(p.name, p.slug, p.id, p.archived_at ? 'archived' : 'active'))),
    listInto($('keys'), '/keys', (d) => d.keys.map(keyRow)),
    listInto($('members'), '/members', (d) => d.members.map((m) => row(m.user_id, m.role, m.created_at))),
    listInto($('invitations'), '/invitations', (d) => d.invitations.map((i) => row(i.email, i.role, i.expires_at,
      el('button', { type: 'button', text: 'Revoke', onclick: () => mutate('DELETE', `/invitations/${encodeURIComponent(i.id)}`) })))),
    listInto($('audit'), '/audit', (d) => d.records.map((r) => row(r.at, r.actor, `${r.action} (${r.outcome})`, r.resource))),
    loadPolicy(),
    listInto($('my-sessions'), '/v1/sessions', (d) => d.sessions.map((s) => sessionRow(s, false)), true),
    listInto($('org-sessions'), '/sessions', (d) => d.sessions.map((s) => sessionRow(s, true))),
  ]);
}

// The policy as the API has it; a role that may not read it sees the API's refusal.
async function loadPolicy() {
  const note = $('policy-note');
  try {
    const p = await api('GET', orgPath('/security-policy'));
    $('policy-mfa').checked = p.require_mfa;
    $('policy-allowlist').value = p.ip_allowlist.join('\n');
    $('policy-lifetime').value = String(p.session_lifetime_seconds);
    note.textContent = p.updated_at ? `Last changed ${p.updated_at}.` : 'The default policy: no change made yet.';
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) throw e;
    note.textContent = e.message;
  }
  note.hidden = false;
}

function savePolicy(event) {
  event.preventDefault();
  const allowlist = $('policy-allowlist').value.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  mutate('PUT', '/security-policy', {
    require_mfa: $('policy-mfa').checked,
    ip_allowlist: allowlist,
    session_lifetime_seconds: Number($('policy-lifetime').value),
  });
}

// One session: yours (revoked through /v1/sessions) or a member's (through the org).
function sessionRow(s, ofOrg) {
  const label = s.current ? 'Sign out this session' : 'Revoke';
  const button = el('button', {
    type: 'button', 'data-action': 'revoke-session', 'data-session': s.id, text: label,
    'aria-label': `${label} opened ${s.created_at}`,
    onclick: () => (ofOrg
      ? mutate('DELETE', `/sessions/${encodeURIComponent(s.id)}`)
      : mutateAt('DELETE', `/v1/sessions/${encodeURIComponent(s.id)}`)),
  });
  const from = s.ip ?? '';
  const tr = ofOrg
    ? row(s.user_id + (s.current ? ' (this session)' : ''), s.created_at, s.expires_at, from, button)
    : row(s.created_at + (s.current ? ' (this session)' : ''), s.expires_at, from, s.user_agent ?? '', button);
  tr.dataset.session = s.id;
  return tr;
}

function keyRow(k) {
  const revoked = Boolean(k.revoked_at);
  const actions = el('span', { class: 'actions' });
  if (!revoked) {
    actions.append(
      el('button', { type: 'button', 'data-action': 'rotate', 'data-key': k.id, text: 'Rotate', 'aria-label': `Rotate ${k.name}`,
        onclick: () => mutate('POST', `/keys/${encodeURIComponent(k.id)}/rotate`, {}, (r) => showSecret(r.key)) }),
      el('button', { type: 'button', 'data-action': 'revoke', 'data-key': k.id, text: 'Revoke', 'aria-label': `Revoke ${k.name}`,
        onclick: () => mutate('POST', `/keys/${encodeURIComponent(k.id)}/revoke`) }));
  }
  const tr = row(k.name, k.display_prefix, k.scopes.join(', '), revoked ? 'revoked' : 'active', actions);
  tr.dataset.key = k.id;
  tr.dataset.state = revoked ? 'revoked' : 'active';
  return tr;
}

function showSecret(secret) {
  $('key-secret-value').textContent = secret;
  $('key-secret').hidden = false;
  $('key-secret-done').focus();
}

async function mutate(method, path, body, then) {
  return mutateAt(method, orgPath(path), body, then);
}

async function mutateAt(method, path, body, then) {
  clearError();
  try {
    const result = await api(method, path, body);
    if (then) then(result);
    await loadManage();
  } catch (e) {
    showError(e);
  }
}

// ---- wiring -------------------------------------------------------------------------

function wire() {
  $('sign-in-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', signOut);
  $('org').addEventListener('change', () => selectOrg($('org').value));
  for (const p of PAGES) $(`tab-${p}`).addEventListener('click', () => showPage(p));
  $('usage-back').addEventListener('click', () => { state.zoomDay = null; showPage('usage'); });
  $('usage-range').addEventListener('change', () => { $('usage-custom').hidden = $('usage-range').value !== 'custom'; });
  $('usage-controls').addEventListener('submit', (e) => {
    e.preventDefault();
    state.zoomDay = null;
    delete document.body.dataset.loaded;
    showPage('usage');
  });
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    mutate('POST', '/keys', { name: $('key-name').value.trim() }, (r) => { $('key-name').value = ''; showSecret(r.key); });
  });
  $('key-secret-done').addEventListener('click', () => {
    // The secret leaves the page: it is never shown again.
    $('key-secret-value').textContent = '';
    $('key-secret').hidden = true;
  });
  $('project-form').addEventListener('submit', (e) => {
    e.preventDefault();
    mutate('POST', '/projects', { name: $('project-name').value.trim(), slug: $('project-slug').value.trim() });
  });
  $('policy-form').addEventListener('submit', savePolicy);
  $('invite-form').addEventListener('submit', (e) => {
    e.preventDefault();
    mutate('POST', '/invitations', { email: $('invite-email').value.trim(), role: $('invite-role').value });
  });
}

wire();
start();
