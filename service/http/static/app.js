// The chat page at /ui: vanilla JS, no build step, against the public API only (openapi.json).
// No innerHTML anywhere: every piece of data goes in through textContent.
'use strict';

const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(['delivered', 'failed']);
const ui = { session: null, stream: null, messages: new Map() };  // message_id -> entry

function headers(extra) {
  const key = $('api-key').value.trim();
  return Object.assign(key ? { 'X-API-Key': key } : {}, extra || {});
}

function showError(text) {
  $('error').textContent = text || '';
  $('error').hidden = !text;
}

function errorText(data) {  // the API's errors are {"error": <text>, "code": <code>}
  return data && data.error ? `${data.error} (${data.code})` : '';
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { 'Content-Type': 'application/json' } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${errorText(data)}`);
  return data;
}

function guarded(fn) {  // an event handler that reports failures instead of swallowing them
  return (event) => {
    if (event) event.preventDefault();
    showError('');
    Promise.resolve(fn(event)).catch((err) => showError(err.message));
  };
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- sessions ----------------------------------------------------------------------------

async function loadSessions() {
  const data = await api('GET', '/sessions?limit=100');
  const list = $('sessions');
  list.replaceChildren();
  for (const s of data.sessions) {
    const li = el('li');
    li.dataset.uuid = s.uuid;
    li.title = s.uuid;
    li.append(el('span', 'who', `${s.user_id} · ${s.uuid.slice(0, 8)}`),
      el('span', 'st', s.status));
    li.classList.toggle('selected', s.uuid === ui.session);
    list.append(li);
  }
  $('sessions-total').textContent = `(${data.total})`;
}

async function createSession() {
  const created = await api('POST', '/session/create', { user_id: $('user-id').value.trim() });
  await loadSessions();
  select(created.uuid);
}

function setStatus(status) {
  $('status').textContent = status;
  const li = [...$('sessions').children].find((item) => item.dataset.uuid === ui.session);
  if (li) li.querySelector('.st').textContent = status;
}

function select(uuid) {
  if (ui.stream) ui.stream.abort();
  ui.session = uuid;
  ui.messages.clear();
  $('messages').replaceChildren();
  $('session-title').textContent = uuid ? `Session ${uuid}` : 'No session selected';
  for (const li of $('sessions').children) {
    li.classList.toggle('selected', li.dataset.uuid === uuid);
  }
  for (const id of ['sleep', 'wake', 'delete', 'chat-input', 'send']) $(id).disabled = !uuid;
  $('status').textContent = '-';
  $('stream-state').textContent = 'idle';
  if (uuid) {
    ui.stream = new AbortController();
    followEvents(uuid, ui.stream.signal);
  }
}

async function sessionAction(action) {
  const uuid = ui.session;
  if (action === 'delete') {
    await api('DELETE', `/session/${uuid}`);
    select(null);
  } else {
    await api('POST', `/session/${uuid}/${action}`);
  }
  await loadSessions();
}

// ---- messages ----------------------------------------------------------------------------

function entry(messageId, seq) {  // the message's element, made on first sight, kept in seq order
  let e = ui.messages.get(messageId);
  if (!e) {
    const div = el('div', 'message');
    e = { div, text: el('div', 'text'), state: el('span', 'state'), error: el('span', 'error'),
          reply: el('div', 'reply'), attempt: 0, live: false, streamed: false };
    const meta = el('div', 'meta');
    meta.append(e.state, ' ', e.error);
    div.append(e.text, meta, e.reply);
    ui.messages.set(messageId, e);
    $('messages').append(div);
  }
  if (seq !== undefined && seq !== null && e.div.dataset.seq !== String(seq)) {
    e.div.dataset.seq = seq;
    const later = [...$('messages').children].find(
      (d) => d !== e.div && d.dataset.seq && Number(d.dataset.seq) > seq);
    if (later) $('messages').insertBefore(e.div, later);
  }
  return e;
}

function setState(e, state, error) {
  e.state.textContent = state;
  e.div.dataset.state = state;
  e.error.textContent = error || '';
}

function scrollDown() { $('messages').scrollTop = $('messages').scrollHeight; }

// A record from /messages or a chat answer: the stream's word wins unless this one is final.
function applyRecord(m) {
  const e = entry(m.message_id, m.seq);
  if (m.message !== undefined) e.text.textContent = m.message;
  if (e.streamed && !TERMINAL.has(m.state)) return;
  setState(e, m.state, m.error);
  if (m.reply) e.reply.textContent = m.reply.reply;
}

async function loadMessages(uuid) {
  let after = '';
  for (let page = 0; page < 50; page++) {
    const data = await api('GET', `/session/${uuid}/messages?limit=200${after}`);
    if (uuid !== ui.session) return;
    data.messages.forEach(applyRecord);
    if (data.next === null || data.next === undefined || !data.messages.length) break;
    after = `&after=${encodeURIComponent(data.next)}`;
  }
  scrollDown();
}

async function sendChat() {
  const uuid = ui.session;
  const text = $('chat-input').value;
  if (!text.trim()) return;
  const messageId = crypto.randomUUID ? crypto.randomUUID() : `m-${Date.now()}-${Math.random()}`;
  const e = entry(messageId);
  e.text.textContent = text;
  setState(e, 'sending');
  $('chat-input').value = '';
  scrollDown();
  let answer;
  try {
    answer = await api('POST', `/session/${uuid}/chat`, { message: text, message_id: messageId });
  } catch (err) {
    setState(e, 'rejected', err.message);
    throw err;
  }
  if (answer.status === 'processed') {
    applyRecord({ message_id: messageId, state: 'delivered', reply: answer.pod_response });
  } else if (answer.status === 'failed') {
    applyRecord({ message_id: messageId, state: 'failed', error: answer.error });
  } else if (!e.streamed) {
    setState(e, answer.status || 'queued');
  }
  if (!e.div.dataset.seq && uuid === ui.session) await loadMessages(uuid);  // learn its seq
}

// ---- the event stream ----------------------------------------------------------------------

function onEvent(uuid, type, data) {
  if (type === 'status') return setStatus(data.status);
  if (type === 'gap') return scheduleReload(uuid);
  if (!data.message_id) return;
  const e = entry(data.message_id, data.seq);
  e.streamed = true;
  if (!e.text.textContent) scheduleReload(uuid);  // sent elsewhere: its text is in /messages
  if (type === 'message') {
    if (data.state === 'delivering') {  // a new attempt: drop what an earlier one streamed
      Object.assign(e, { attempt: data.attempts, live: true });
      e.reply.textContent = '';
    }
    setState(e, data.state, data.error);
  } else if (type === 'chunk') {
    // An attempt whose start this page did not see (it was selected mid-reply) shows nothing
    // until its final reply: its text so far is not known, only the rest of it.
    if (data.attempt > e.attempt) Object.assign(e, { attempt: data.attempt, live: false });
    if (data.attempt === e.attempt && e.live) e.reply.textContent += data.text;
  } else if (type === 'reply') {
    setState(e, 'delivered');
    e.reply.textContent = (data.reply && data.reply.reply) || '';
  }
  scrollDown();
}

let reloadTimer = null;
function scheduleReload(uuid) {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(() => loadMessages(uuid).catch((err) => showError(err.message)), 200);
}

// Parses text/event-stream frames from a fetch() body: onFrame(id, type, data) per event,
// onRetry(ms) for a `retry:` line.
async function readFrames(body, onFrame, onRetry) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let frame = { id: null, event: '', data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let match;  // a line ends at CRLF, LF or CR (a CR last in the buffer may be half a CRLF)
    while ((match = /\r\n|\r(?!$)|\n/.exec(buffer))) {
      const line = buffer.slice(0, match.index);
      buffer = buffer.slice(match.index + match[0].length);
      if (line === '') {
        if (frame.data.length) onFrame(frame.id, frame.event || 'message', frame.data.join('\n'));
        frame = { id: null, event: '', data: [] };
        continue;
      }
      if (line.startsWith(':')) continue;  // a comment (heartbeat)
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? '' : line.slice(colon + 1);
      if (val.startsWith(' ')) val = val.slice(1);
      if (field === 'id') frame.id = val;
      else if (field === 'event') frame.event = val;
      else if (field === 'data') frame.data.push(val);
      else if (field === 'retry' && /^\d+$/.test(val)) onRetry(Number(val));
    }
  }
}

async function followEvents(uuid, signal) {
  let lastId = null;
  let retry = 250;  // the server may say otherwise with `retry:`
  let backoff = retry;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  while (!signal.aborted) {
    try {
      const extra = { Accept: 'text/event-stream' };
      if (lastId) extra['Last-Event-ID'] = lastId;
      const response = await fetch(`/session/${uuid}/events`, { headers: headers(extra), signal,
                                                              cache: 'no-store' });
      if (!response.ok) {
        const data = await response.json().catch(() => ({}));
        const err = new Error(`GET events: ${response.status} ${errorText(data)}`);
        err.final = response.status === 404 || response.status === 401;
        throw err;
      }
      $('stream-state').textContent = 'connected';
      if ($('error').textContent.startsWith('GET events')) showError('');
      backoff = retry;
      let fresh = !lastId;  // not resumed: what came before the first event is in /messages
      await readFrames(response.body, (id, type, text) => {
        if (signal.aborted) return;
        if (id) lastId = id;
        let data;
        try { data = JSON.parse(text); } catch { return; }
        onEvent(uuid, type, data);
        if (fresh) { fresh = false; loadMessages(uuid).catch((err) => showError(err.message)); }
      }, (ms) => { retry = backoff = ms; });
    } catch (err) {
      if (signal.aborted) return;
      showError(err.message);
      if (err.final) { $('stream-state').textContent = 'closed'; return; }
      backoff = Math.min(backoff * 2, 5000);
    }
    if (signal.aborted) return;
    $('stream-state').textContent = 'reconnecting';
    await sleep(backoff);
  }
}

// ---- wiring --------------------------------------------------------------------------------

function init() {
  const key = $('api-key');
  key.value = sessionStorage.getItem('apiKey') || '';
  key.addEventListener('input', () => sessionStorage.setItem('apiKey', key.value));
  $('key-form').addEventListener('submit', guarded(loadSessions));
  $('create-form').addEventListener('submit', guarded(createSession));
  $('refresh').addEventListener('click', guarded(loadSessions));
  $('chat-form').addEventListener('submit', guarded(sendChat));
  for (const action of ['sleep', 'wake', 'delete']) {
    $(action).addEventListener('click', guarded(() => sessionAction(action)));
  }
  $('sessions').addEventListener('click', (event) => {
    const li = event.target.closest('li[data-uuid]');
    if (li && li.dataset.uuid !== ui.session) select(li.dataset.uuid);
  });
  select(null);
  loadSessions().catch((err) => showError(err.message));
}

document.addEventListener('DOMContentLoaded', init);
