// herald's admin page. Everything goes through the documented admin API
// (api.js) with the operator's token, kept in this tab's sessionStorage and
// sent only in the Authorization header. Live updates come from
// GET /v1/admin/events, read with fetch (EventSource cannot send the
// header). Text from the server is only ever set as textContent, never
// parsed as HTML.

import { api, openStream, readEvents, useToken } from './api.js';
import { chart, perInterval, perSecond } from './charts.js';

const TOKEN_KEY = 'herald.admin.token';
/** Stats points kept for the charts: 2 s apart, so ten minutes. */
const HISTORY = 300;
const RESET_REASONS = ['expired', 'evicted', 'unknown_epoch', 'invalid', 'future'];
const COLORS = ['#1f5fbf', '#b42318', '#a15c00', '#1b7f3b', '#6941c6'];

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  stats: [],
  activity: [],
  flapping: new Map(),
  watching: null,
  view: null,
  devices: { cursor: null, next: null },
  device: null,
  pendingAction: null,
};

// ---------- helpers ----------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child == null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '—';
}

function deviceLink(id) {
  return el('a', { href: `#/devices/${encodeURIComponent(id)}` }, id);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------- sign-in ----------

function showSignIn(message) {
  stopWatching();
  state.token = null;
  useToken(null);
  sessionStorage.removeItem(TOKEN_KEY);
  for (const id of ['overview', 'devices', 'device', 'nav', 'live', 'sign-out']) $(id).hidden = true;
  $('sign-in').hidden = false;
  $('sign-in-error').hidden = !message;
  $('sign-in-error').textContent = message ?? '';
  $('token').value = '';
  $('token').focus();
}

async function signIn(event) {
  event.preventDefault();
  state.token = $('token').value.trim();
  useToken(state.token);
  try {
    await api('GET', '/v1/stats');
  } catch (error) {
    const refused = error.status === 401 || error.status === 403;
    showSignIn(refused ? 'That token was refused.' : `Cannot reach herald: ${error.message}`);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $('sign-in').hidden = true;
  startApp();
}

function startApp() {
  $('nav').hidden = false;
  $('sign-out').hidden = false;
  $('live').hidden = false;
  watch();
  route();
}

// ---------- live feed ----------

function stopWatching() {
  state.watching?.abort();
  state.watching = null;
}

async function watch() {
  stopWatching();
  const control = new AbortController();
  state.watching = control;
  while (!control.signal.aborted) {
    try {
      const response = await openStream('/v1/admin/events', control.signal);
      if (response.status === 401 || response.status === 403) {
        showSignIn('The token is no longer accepted.');
        return;
      }
      setLive(true);
      await readEvents(response.body, handleFeed);
    } catch {
      if (control.signal.aborted) return;
    }
    setLive(false);
    await sleep(2000);
  }
}

function setLive(up) {
  $('live').textContent = up ? 'live' : 'reconnecting';
  $('live').classList.toggle('down', !up);
}

function handleFeed(name, data) {
  const json = JSON.parse(data);
  if (name === 'stats') {
    state.stats.push({ at: Date.now(), ...json });
    if (state.stats.length > HISTORY) state.stats.shift();
    // The views follow what changes without a lifecycle step too
    // (publishes filling buffers), at the pace of the totals.
    if (state.view === 'overview') renderOverview();
    if (state.view === 'devices') refreshDevicesSoon();
    if (state.view === 'device') refreshDeviceSoon();
  } else if (name === 'device') {
    state.activity.unshift({ at: new Date(), ...json });
    state.activity.length = Math.min(state.activity.length, 30);
    if (json.event === 'device.flapping') state.flapping.set(json.device, new Date());
    if (state.view === 'overview') renderOverview();
    if (state.view === 'devices') refreshDevicesSoon();
    if (state.view === 'device' && state.device === json.device) refreshDeviceSoon();
  }
}

// ---------- routing ----------

function route() {
  if (!state.token) return showSignIn();
  const hash = location.hash || '#/overview';
  const match = hash.match(/^#\/devices\/(.+)$/);
  const view = match ? 'device' : hash === '#/devices' ? 'devices' : 'overview';
  state.view = view;
  for (const id of ['overview', 'devices', 'device']) $(id).hidden = id !== view;
  for (const [id, current] of [['nav-overview', view === 'overview'], ['nav-devices', view !== 'overview']]) {
    if (current) $(id).setAttribute('aria-current', 'page');
    else $(id).removeAttribute('aria-current');
  }
  if (view === 'overview') renderOverview();
  if (view === 'devices') loadDevices(null);
  if (view === 'device') {
    state.device = decodeURIComponent(match[1]);
    hideConfirm();
    $('publish-result').textContent = '';
    $('action-result').textContent = '';
    loadDevice();
  }
}

// ---------- overview ----------

function renderOverview() {
  const points = state.stats;
  const last = points.at(-1);
  const cards = $('cards');
  cards.replaceChildren();
  const rate = perSecond(points, 'delivered').at(-1) ?? 0;
  const figures = [
    ['Live streams', last?.streams],
    ['Sessions', last?.sessions],
    ['Buffered events', last?.buffered_events],
    ['Buffered bytes', last == null ? null : bytes(last.buffered_bytes)],
    ['Deliveries / s', last == null ? null : rate.toFixed(rate < 10 ? 1 : 0)],
    ['Kicks (total)', last?.kicks],
  ];
  for (const [label, value] of figures) {
    cards.append(el('div', { class: 'card' },
      el('div', { class: 'value' }, value ?? '…'), el('div', { class: 'label' }, label)));
  }
  chart($('chart-deliveries'), [{ values: perSecond(points, 'delivered'), color: COLORS[0] }], HISTORY);
  chart($('chart-kicks'), [{ values: perInterval(points, 'kicks'), color: COLORS[1] }], HISTORY);
  chart($('chart-resets'), RESET_REASONS.map((reason, i) => ({
    values: perInterval(points, `resets_${reason}`), color: COLORS[i],
  })), HISTORY);
  $('resets-legend').replaceChildren(...RESET_REASONS.map((reason, i) => {
    const swatch = el('span');
    swatch.style.background = COLORS[i];
    return el('li', {}, swatch, reason);
  }));
  const flapping = [...state.flapping.entries()].sort((a, b) => b[1] - a[1]);
  $('flapping').replaceChildren(...(flapping.length ? flapping.map(([device, at]) =>
    el('li', { class: 'flapping' }, deviceLink(device), ` since ${at.toLocaleTimeString()}`))
    : [el('li', { class: 'hint' }, 'None seen since this page opened.')]));
  $('activity').replaceChildren(...(state.activity.length ? state.activity.map((step) =>
    el('li', {}, el('time', {}, step.at.toLocaleTimeString()), `${step.event} `, deviceLink(step.device),
      step.reason ? ` (${step.reason})` : ''))
    : [el('li', { class: 'hint' }, 'Nothing yet.')]));
}

// ---------- device list ----------

let devicesTimer = null;
function refreshDevicesSoon() {
  clearTimeout(devicesTimer);
  devicesTimer = setTimeout(() => loadDevices(state.devices.cursor), 300);
}

async function loadDevices(cursor) {
  state.devices.cursor = cursor;
  const query = new URLSearchParams({ limit: '50' });
  const prefix = $('prefix').value.trim();
  if (prefix) query.set('prefix', prefix);
  if ($('connected').value) query.set('connected', $('connected').value);
  if (cursor) query.set('after', cursor);
  let page;
  try {
    page = await api('GET', `/v1/devices?${query}`);
  } catch (error) {
    if (error.status === 401) return showSignIn('The token is no longer accepted.');
    $('devices-empty').hidden = false;
    $('devices-empty').textContent = error.message;
    return;
  }
  state.devices.next = page.next;
  $('device-rows').replaceChildren(...page.devices.map((d) => {
    const flapping = d.flapping || state.flapping.has(d.device);
    const stream = el('span', { class: `badge ${d.connected ? 'on' : 'off'}` }, d.connected ? 'connected' : 'not connected');
    const name = el('td', {}, deviceLink(d.device), flapping ? el('span', { class: 'badge flap' }, 'flapping') : null);
    return el('tr', { class: flapping ? 'flapping' : '', 'data-device': d.device },
      name, el('td', {}, stream), el('td', {}, d.node ?? '—'), el('td', { class: 'mono' }, d.address ?? '—'),
      el('td', { class: 'mono' }, d.last_event_id ?? '—'), el('td', {}, `${d.buffered_events} (${bytes(d.buffered_bytes)})`),
      el('td', {}, d.kicks));
  }));
  $('devices-empty').hidden = page.devices.length > 0;
  $('devices-empty').textContent = 'No device matches.';
  $('next-page').disabled = !page.next;
  $('first-page').disabled = !cursor;
}

// ---------- one device ----------

let deviceTimer = null;
function refreshDeviceSoon() {
  clearTimeout(deviceTimer);
  deviceTimer = setTimeout(loadDevice, 200);
}

async function loadDevice() {
  const id = state.device;
  const path = `/v1/devices/${encodeURIComponent(id)}`;
  $('device-title').textContent = id;
  let view, buffer;
  try {
    [view, buffer] = await Promise.all([api('GET', path), api('GET', `${path}/buffer?limit=20`)]);
  } catch (error) {
    if (error.status === 401) return showSignIn('The token is no longer accepted.');
    $('device-error').hidden = false;
    $('device-error').textContent = error.code === 'unknown_device'
      ? 'herald holds nothing for this device (no session, no retained event).' : error.message;
    for (const id of ['device-facts', 'device-buffer', 'retained-rows', 'event-rows']) $(id).replaceChildren();
    return;
  }
  if (state.device !== id) return;
  $('device-error').hidden = true;
  const flapping = view.flapping || state.flapping.has(id);
  facts($('device-facts'), [
    ['Stream', view.connected ? 'connected' : 'not connected'],
    ['Connection id', view.connection_id ?? '—'],
    ['Node', view.node ?? '—'],
    ['Address', view.address ?? '—'],
    ['Connected since', when(view.connected_since)],
    ['Last seen', when(view.last_seen)],
    ['Reconnects', view.reconnects],
    ['Kicks', view.kicks],
    ['Resets', view.resets],
    ['Flapping', flapping ? 'yes' : 'no'],
  ]);
  const limits = view.limits;
  facts($('device-buffer'), [
    ['Last event id', view.last_event_id ?? '—'],
    ['Events', meter(view.buffered_events, limits.buffer_events, String)],
    ['Bytes', meter(view.buffered_bytes, limits.buffer_bytes, bytes)],
    ['Retained', meter(view.retained, limits.retained, String)],
  ]);
  $('retained-rows').replaceChildren(...rowsOr(buffer.retained.map((e) =>
    el('tr', {}, el('td', {}, e.event), el('td', { class: 'data' }, e.data))), 2, 'No retained event.'));
  $('event-rows').replaceChildren(...rowsOr(buffer.events.slice().reverse().map((e) =>
    el('tr', {}, el('td', { class: 'mono' }, e.id), el('td', {}, e.event), el('td', { class: 'data' }, e.data))),
  3, 'The buffer is empty.'));
  $('events-incomplete').hidden = buffer.complete;
}

function facts(list, pairs) {
  list.replaceChildren(...pairs.flatMap(([term, value]) => [el('dt', {}, term), el('dd', {}, value)]));
}

function meter(value, max, show) {
  const bar = el('meter', { min: '0', max: String(max), value: String(value), high: String(max * 0.9) });
  return el('span', {}, `${show(value)} of ${show(max)}`, bar);
}

function rowsOr(rows, columns, empty) {
  return rows.length ? rows : [el('tr', {}, el('td', { colspan: String(columns), class: 'hint' }, empty))];
}

async function publish(event) {
  event.preventDefault();
  const form = event.target;
  const data = form.data.value;
  if (form.kind.value === 'json') {
    try {
      JSON.parse(data);
    } catch (error) {
      $('publish-result').textContent = `Not JSON: ${error.message}`;
      return;
    }
  }
  // Sent as text either way, so the stream gets exactly what was typed
  // (a JSON value would be re-encoded by the server).
  const body = { event: form.event.value.trim(), data, retain: form.retain.checked };
  try {
    const reply = await api('POST', `/v1/devices/${encodeURIComponent(state.device)}/events`, body);
    $('publish-result').textContent = `Published ${reply.id}${reply.delivered ? ', delivered to the live stream' : ', buffered'}.`;
    refreshDeviceSoon();
  } catch (error) {
    $('publish-result').textContent = `Refused: ${error.message}`;
  }
}

const ACTIONS = {
  end: { text: 'End this device\'s connection? Its client reconnects at once.', method: 'DELETE', suffix: '/connection' },
  block: { text: 'End this device\'s connection and refuse its reconnects for a while? EventSource stops for good.', method: 'DELETE', suffix: '/connection?reconnect=false' },
  delete: { text: 'Delete this device: its session, buffered and retained events? This cannot be undone.', method: 'DELETE', suffix: '' },
};

function askConfirm(action) {
  state.pendingAction = action;
  $('confirm-text').textContent = ACTIONS[action].text;
  $('confirm').hidden = false;
  $('confirm-no').focus();
}

function hideConfirm() {
  state.pendingAction = null;
  $('confirm').hidden = true;
}

async function runAction() {
  const action = ACTIONS[state.pendingAction];
  const name = state.pendingAction;
  hideConfirm();
  if (!action) return;
  try {
    await api(action.method, `/v1/devices/${encodeURIComponent(state.device)}${action.suffix}`);
    $('action-result').textContent = name === 'delete' ? 'Deleted.' : 'The connection was ended.';
  } catch (error) {
    $('action-result').textContent = `Refused: ${error.message}`;
  }
  refreshDeviceSoon();
}

// ---------- wiring ----------

$('sign-in-form').addEventListener('submit', signIn);
$('sign-out').addEventListener('click', () => showSignIn());
$('device-filter').addEventListener('submit', (event) => event.preventDefault());
$('prefix').addEventListener('input', () => {
  clearTimeout(devicesTimer);
  devicesTimer = setTimeout(() => loadDevices(null), 250);
});
$('connected').addEventListener('change', () => loadDevices(null));
$('next-page').addEventListener('click', () => loadDevices(state.devices.next));
$('first-page').addEventListener('click', () => loadDevices(null));
$('publish-form').addEventListener('submit', publish);
for (const button of document.querySelectorAll('[data-action]')) {
  button.addEventListener('click', () => askConfirm(button.dataset.action));
}
$('confirm-yes').addEventListener('click', runAction);
$('confirm-no').addEventListener('click', hideConfirm);
window.addEventListener('hashchange', route);

useToken(state.token);
if (state.token) startApp();
else showSignIn();
