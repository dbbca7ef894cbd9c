#!/usr/bin/env node
// Tocsin conformance checks driven by the official SAP ANS Node client
// (@sap_oss/alert-notification-client). See README.md in this directory.
//
// Usage: TOCSIN_URL=http://127.0.0.1:8080 node conformance.mjs <events|config>
//
// Output: one `ok - ...` / `not ok - ...` line per check (plus `# ...` diagnostics),
// then a final line `N passed, M failed`. Exit code 0 only if M == 0.

import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';

const require = createRequire(import.meta.url);
const ans = require('@sap_oss/alert-notification-client');
const {
  AlertNotificationClient,
  BasicAuthentication,
  OAuthAuthentication,
  RegionUtils,
  EntityType,
  Severity,
  Category,
  State,
  Predicate,
} = ans;

const USAGE = `Usage: node conformance.mjs <events|config> [--help]

Drives the official @sap_oss/alert-notification-client against a running Tocsin.

Modes:
  events   producer + consumer API: sendEvent, sendEvents, getMatchedEvents,
           getMatchedEvent, getUndeliveredEvents, getUndeliveredEvent.
           Needs a subscription on the server that routes TOCSIN_EVENT_TYPE
           to a STORE action (otherwise nothing is ever "matched"), and one
           that routes TOCSIN_UNDELIVERED_EVENT_TYPE to an action that cannot
           deliver (otherwise nothing is ever "undelivered").
  config   configuration API: create/get/getAll/update/delete for ACTION,
           CONDITION, SUBSCRIPTION, exportConfiguration, importConfiguration.
           WARNING: importConfiguration overwrites the WHOLE configuration; the
           script re-imports the exported configuration (plus its own entities,
           deleted afterwards), but run it against a disposable instance.

Environment:
  TOCSIN_URL            base URL, e.g. http://127.0.0.1:8080 (required)
  TOCSIN_USER           client id / user name (default: "tocsin")
  TOCSIN_PASSWORD       client secret / password (default: "tocsin")
  TOCSIN_AUTH           basic | oauth (default: basic). oauth uses
                        OAuthAuthentication with oAuthTokenUrl=\${TOCSIN_URL}/oauth/token
  TOCSIN_PLATFORM       cf | neo (default: cf) - the URL path prefix
  TOCSIN_EVENT_TYPE     eventType used in events mode (default: ConformanceStore)
  TOCSIN_UNDELIVERED_EVENT_TYPE  eventType of the undeliverable event (default: Unsupported)
  TOCSIN_POLL_TIMEOUT_MS  how long to wait for matched events (default: 15000)
  TOCSIN_TIMEOUT_MS     axios timeout per request (default: 2500, the client's default)
`;

// ---------------------------------------------------------------------------
// tiny TAP-like reporter
// ---------------------------------------------------------------------------
let passed = 0;
let failed = 0;

function ok(name) {
  passed++;
  console.log(`ok - ${name}`);
}
function notOk(name, detail) {
  failed++;
  console.log(`not ok - ${name}${detail ? `: ${oneLine(detail)}` : ''}`);
}
function check(name, cond, detail) {
  if (cond) ok(name);
  else notOk(name, typeof detail === 'function' ? detail() : detail);
  return !!cond;
}
function diag(msg) {
  console.log(`# ${oneLine(msg)}`);
}
function oneLine(s) {
  return String(s).replace(/\s*\n\s*/g, ' ');
}
function trunc(s, n = 600) {
  s = String(s);
  return s.length > n ? `${s.slice(0, n)}…(${s.length} chars)` : s;
}
function show(v) {
  if (v === undefined) return 'undefined';
  if (typeof v === 'string') return JSON.stringify(v);
  try {
    return trunc(JSON.stringify(v));
  } catch {
    return trunc(String(v));
  }
}

/** Describe an axios (or other) error: method, URL, HTTP status and body. */
function describeError(err) {
  if (!err) return 'unknown error';
  const cfg = err.config || {};
  const method = (cfg.method || '?').toUpperCase();
  let url = cfg.url || '';
  if (cfg.baseURL && url && !/^https?:/i.test(url)) {
    url = `${cfg.baseURL.replace(/\/+$/, '')}/${url.replace(/^\/+/, '')}`;
  } else if (!url && cfg.baseURL) {
    url = cfg.baseURL;
  }
  if (cfg.params && Object.keys(cfg.params).length) {
    url += ` params=${JSON.stringify(cfg.params)}`;
  }
  if (err.response) {
    return `HTTP ${err.response.status} ${method} ${url} body=${show(err.response.data)}`;
  }
  if (err.code || err.isAxiosError) {
    return `${err.code || 'request error'} ${method} ${url}: ${err.message}`;
  }
  return err.stack ? err.stack.split('\n').slice(0, 3).join(' | ') : String(err);
}

class Abort extends Error {}

/**
 * Run one client call. On success records `ok - name` and returns the value.
 * On failure records `not ok - name: <HTTP status, body>`; if `critical`,
 * throws Abort so that the mode stops (later steps depend on this one).
 */
async function step(name, fn, { critical = false } = {}) {
  try {
    const v = await fn();
    ok(name);
    return v;
  } catch (err) {
    notOk(name, describeError(err));
    if (critical) throw new Abort(name);
    return undefined;
  }
}

/** Run a call that is expected to be rejected with an HTTP status in `statuses`. */
async function expectHttpError(name, statuses, fn) {
  try {
    const v = await fn();
    notOk(name, `expected HTTP ${statuses.join('|')}, request succeeded with ${show(v)}`);
    return undefined;
  } catch (err) {
    const st = err && err.response && err.response.status;
    if (st !== undefined && statuses.includes(st)) {
      ok(`${name} (HTTP ${st})`);
      return err.response;
    }
    notOk(name, `expected HTTP ${statuses.join('|')}, got ${describeError(err)}`);
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const isInt = (v) => Number.isInteger(v);
const isStr = (v) => typeof v === 'string';

function deepEqual(a, b) {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return ka.length === kb.length &&
    ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && deepEqual(a[k], b[k]));
}

/** true if every key of `sub` is in `obj` with a deep-equal value */
function containsAll(obj, sub) {
  return isObj(obj) && Object.keys(sub).every((k) => deepEqual(obj[k], sub[k]));
}

function keysDiff(obj, required, optional = []) {
  if (!isObj(obj)) return `not an object: ${show(obj)}`;
  const keys = Object.keys(obj);
  const missing = required.filter((k) => !keys.includes(k));
  const extra = keys.filter((k) => !required.includes(k) && !optional.includes(k));
  if (!missing.length && !extra.length) return null;
  const parts = [];
  if (missing.length) parts.push(`missing ${missing.join(',')}`);
  if (extra.length) parts.push(`unexpected ${extra.join(',')}`);
  return `${parts.join('; ')} in ${show(obj)}`;
}

// ---------------------------------------------------------------------------
// client construction
// ---------------------------------------------------------------------------
function env(name, dflt) {
  const v = process.env[name];
  return v === undefined || v === '' ? dflt : v;
}

function buildClient({ user, password } = {}) {
  const url = env('TOCSIN_URL').replace(/\/+$/, '');
  const platformName = env('TOCSIN_PLATFORM', 'cf').toLowerCase();
  const platform = platformName === 'neo' ? RegionUtils.Platform.NEO : RegionUtils.Platform.CF;
  // Region(platform, url, mTLSUrl): Basic/OAuth use `url`, certificate/no auth use `mTLSUrl`.
  const region = new RegionUtils.Region(platform, url, url);
  const username = user ?? env('TOCSIN_USER', 'tocsin');
  const pass = password ?? env('TOCSIN_PASSWORD', 'tocsin');
  const authMode = env('TOCSIN_AUTH', 'basic').toLowerCase();
  let authentication;
  if (authMode === 'oauth') {
    authentication = new OAuthAuthentication({
      username,
      password: pass,
      oAuthTokenUrl: `${url}/oauth/token`,
    });
  } else if (authMode === 'basic') {
    authentication = new BasicAuthentication({ username, password: pass });
  } else {
    throw new Error(`TOCSIN_AUTH must be basic or oauth, got ${authMode}`);
  }
  // No retryConfig: the client then installs no retry interceptor at all, so
  // every failure surfaces immediately. (OAuthAuthentication's own token client
  // always retries 3x with 1 s backoff; that is hard-wired in the package.)
  return new AlertNotificationClient({
    region,
    authentication,
    axiosRequestConfig: { timeout: Number(env('TOCSIN_TIMEOUT_MS', '2500')) },
  });
}

// ---------------------------------------------------------------------------
// shape checks
// ---------------------------------------------------------------------------
const PAGE_META_KEYS = ['page', 'pageSize', 'totalPages', 'totalResultsCount'];
const CONSUMER_EVENT_REQUIRED = [
  'id', 'eventType', 'severity', 'category', 'subject', 'body', 'resource',
  'eventTimestamp', 'region', 'regionType', 'metadata',
];
const CONSUMER_EVENT_OPTIONAL = ['priority', 'tags'];
const METADATA_KEYS = ['cacheTime', 'affectedActionId', 'deliveryStatus'];
const RESOURCE_REQUIRED = ['resourceName', 'resourceType'];
const RESOURCE_OPTIONAL = ['resourceInstance', 'tags'];
const SEVERITIES = Object.values(Severity);
const CATEGORIES = Object.values(Category);

/** Checks ConsumerPagedResponse: exactly {responseMetadata{page,pageSize,totalPages,totalResultsCount}, results[]}. */
function checkPaged(label, r, { page, pageSize } = {}) {
  const m = isObj(r) ? r.responseMetadata : undefined;
  const shapeErr = keysDiff(r, ['responseMetadata', 'results']) ||
    (!Array.isArray(r.results) && `results is not an array: ${show(r.results)}`) ||
    keysDiff(m, PAGE_META_KEYS) ||
    (!PAGE_META_KEYS.every((k) => isInt(m[k]) && m[k] >= 0) && `non-integer metadata ${show(m)}`);
  if (!check(`${label}: paged shape {responseMetadata{${PAGE_META_KEYS.join(',')}}, results[]}`, !shapeErr, shapeErr)) {
    return false;
  }
  let good = true;
  const want = [];
  if (page !== undefined) want.push(['page', page]);
  if (pageSize !== undefined) want.push(['pageSize', pageSize]);
  if (want.length) {
    good = check(`${label}: responseMetadata ${want.map(([k, v]) => `${k}=${v}`).join(' ')}`,
      want.every(([k, v]) => m[k] === v), () => show(m)) && good;
  }
  const pagesOk = m.totalResultsCount === 0
    ? m.totalPages === 0 || m.totalPages === 1
    : m.pageSize > 0 && m.totalPages === Math.ceil(m.totalResultsCount / m.pageSize);
  good = check(`${label}: counts consistent (results.length <= pageSize, totalPages == ceil(total/pageSize))`,
    r.results.length <= m.pageSize && r.results.length <= m.totalResultsCount && pagesOk,
    () => `results.length=${r.results.length} responseMetadata=${show(m)}`) && good;
  return good;
}

const ECHO_FIELDS = ['eventType', 'severity', 'category', 'subject', 'body', 'resource', 'eventTimestamp', 'priority'];
function echoMismatch(got, sent) {
  const bad = ECHO_FIELDS.filter((k) => !deepEqual(got[k], sent[k]))
    .map((k) => `${k}: sent ${show(sent[k])}, got ${show(got[k])}`);
  if (!containsAll(got.tags, sent.tags)) bad.push(`tags: sent ${show(sent.tags)}, got ${show(got.tags)}`);
  return bad.length ? bad.join('; ') : null;
}

/** Checks a ConsumerEvent against the documented key set and, optionally, the event it came from. */
function checkConsumerEvent(label, ev, sent, deliveryStatus) {
  check(`${label}: ConsumerEvent has exactly the documented keys`,
    !keysDiff(ev, CONSUMER_EVENT_REQUIRED, CONSUMER_EVENT_OPTIONAL),
    () => keysDiff(ev, CONSUMER_EVENT_REQUIRED, CONSUMER_EVENT_OPTIONAL));
  if (!isObj(ev)) return;
  check(`${label}: id/eventType/subject/body/region/regionType are strings`,
    ['id', 'eventType', 'subject', 'body', 'region', 'regionType'].every((k) => isStr(ev[k])),
    () => show(ev));
  check(`${label}: severity and category are valid enum values`,
    SEVERITIES.includes(ev.severity) && CATEGORIES.includes(ev.category), () => show(ev));
  check(`${label}: eventTimestamp is an integer (epoch seconds)`,
    isInt(ev.eventTimestamp) && ev.eventTimestamp < 1e11, () => show(ev.eventTimestamp));
  check(`${label}: resource has only documented keys`,
    !keysDiff(ev.resource, RESOURCE_REQUIRED, RESOURCE_OPTIONAL),
    () => keysDiff(ev.resource, RESOURCE_REQUIRED, RESOURCE_OPTIONAL));
  const md = ev.metadata;
  check(`${label}: metadata has exactly {${METADATA_KEYS.join(',')}}`,
    !keysDiff(md, METADATA_KEYS), () => keysDiff(md, METADATA_KEYS));
  if (isObj(md)) {
    check(`${label}: metadata.cacheTime is an integer (epoch seconds), affectedActionId a string`,
      isInt(md.cacheTime) && md.cacheTime < 1e11 && isStr(md.affectedActionId), () => show(md));
    if (deliveryStatus) {
      check(`${label}: metadata.deliveryStatus == ${deliveryStatus}`,
        md.deliveryStatus === deliveryStatus, () => show(md.deliveryStatus));
    }
  }
  if (sent) {
    const mm = echoMismatch(ev, sent);
    check(`${label}: echoes the sent ${ECHO_FIELDS.join('/')}/tags`, !mm, mm);
  }
}

/** Checks the ResourceEvent returned by sendEvent/sendEvents against what was sent. */
function checkIngested(label, got, sent) {
  if (!check(`${label}: response is an object with a non-empty string id`,
    isObj(got) && isStr(got.id) && got.id.length > 0, () => show(got))) return false;
  const mm = echoMismatch(got, sent);
  check(`${label}: echoes the sent ${ECHO_FIELDS.join('/')}/tags`, !mm, mm);
  return true;
}

// ---------------------------------------------------------------------------
// events mode
// ---------------------------------------------------------------------------
async function pollMatched(client, params, predicate, timeoutMs) {
  return pollUntil(() => client.getMatchedEvents(params), predicate, timeoutMs);
}

/** Calls `read` until its answer satisfies `predicate` or `timeoutMs` has passed. */
async function pollUntil(read, predicate, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await read(); // errors propagate to step()
    if (predicate(last)) return { found: true, last };
    if (Date.now() >= deadline) return { found: false, last };
    await sleep(500);
  }
}

async function eventsMode(runId) {
  const client = buildClient();
  const eventType = env('TOCSIN_EVENT_TYPE', 'ConformanceStore');
  const pollTimeout = Number(env('TOCSIN_POLL_TIMEOUT_MS', '15000'));
  const correlationId = `tocsin-conf-corr-${runId}`;
  const sourceEventId = `tocsin-conf-src-${runId}`;
  const now = Math.floor(Date.now() / 1000);

  const mkEvent = (suffix, srcId) => ({
    eventType,
    severity: Severity.WARNING,
    category: Category.ALERT,
    subject: `Tocsin conformance ${suffix} ${runId}`,
    body: `Conformance event ${suffix} sent by tests/sap-client (run ${runId}).`,
    resource: {
      resourceName: 'tocsin-conformance',
      resourceType: 'app',
      resourceInstance: '1',
      tags: { env: 'conformance' },
    },
    eventTimestamp: now,
    priority: 5,
    tags: {
      'ans:correlationId': correlationId,
      'ans:sourceEventId': srcId,
      'conformance:run': runId,
    },
  });

  // 1. sendEvent
  const event = mkEvent('single', sourceEventId);
  const sent = await step('sendEvent POST /{platform}/producer/v1/resource-events succeeds',
    () => client.sendEvent(event), { critical: true });
  if (!checkIngested('sendEvent', sent, event)) throw new Abort('sendEvent returned no id');
  const eventId = sent.id;
  diag(`event id ${eventId}, sourceEventId ${sourceEventId}`);

  // 2. sendEvents (batch)
  const batch = [mkEvent('batch-0', `${sourceEventId}-b0`), mkEvent('batch-1', `${sourceEventId}-b1`)];
  const sentBatch = await step('sendEvents POST /{platform}/producer/v1/resource-events-batch succeeds',
    () => client.sendEvents(batch));
  if (sentBatch !== undefined) {
    if (check('sendEvents: response is an array of 2 events', Array.isArray(sentBatch) && sentBatch.length === 2,
      () => show(sentBatch))) {
      sentBatch.forEach((e, i) => checkIngested(`sendEvents[${i}]`, e, batch[i]));
      check('sendEvents: ids are distinct', sentBatch[0].id !== sentBatch[1].id && sentBatch[0].id !== eventId,
        () => show(sentBatch.map((e) => e.id)));
    }
  }

  // 3. invalid events are rejected
  await expectHttpError('sendEvent with an invalid severity is rejected with 400', [400],
    () => client.sendEvent({ ...mkEvent('invalid', `${sourceEventId}-bad`), severity: 'SEVERE' }));
  const missing = mkEvent('missing', `${sourceEventId}-bad2`);
  delete missing.resource;
  const errResp = await expectHttpError('sendEvent without resource is rejected with 400', [400],
    () => client.sendEvent(missing));
  if (errResp) {
    check('error response body is JSON with a string "message"',
      isObj(errResp.data) && isStr(errResp.data.message), () => show(errResp.data));
  }

  // 4. bad credentials
  const badClient = buildClient({ password: `wrong-${runId}` });
  await expectHttpError('getMatchedEvents with wrong credentials is rejected with 401', [401],
    () => badClient.getMatchedEvents({ pageSize: 1 }));

  // 5. poll matched events by sourceEventId
  const hasOurs = (r) => isObj(r) && Array.isArray(r.results) && r.results.some((e) => isObj(e) && e.id === eventId);
  let polled;
  try {
    polled = await pollMatched(client, { sourceEventId }, hasOurs, pollTimeout);
  } catch (err) {
    notOk('getMatchedEvents({sourceEventId}) GET /{platform}/consumer/v1/matched-events', describeError(err));
    throw new Abort('getMatchedEvents failed');
  }
  if (!check(`getMatchedEvents({sourceEventId}) returns the event within ${pollTimeout} ms`, polled.found,
    () => `event ${eventId} not found (is a STORE subscription for eventType=${eventType} configured?); last response ${show(polled.last)}`)) {
    checkPaged('getMatchedEvents({sourceEventId})', polled.last, { page: 0, pageSize: 100 });
    throw new Abort('matched event never showed up');
  }
  const r1 = polled.last;
  checkPaged('getMatchedEvents({sourceEventId})', r1, { page: 0, pageSize: 100 });
  check('getMatchedEvents({sourceEventId}): every result carries that ans:sourceEventId',
    r1.results.every((e) => isObj(e) && isObj(e.tags) && e.tags['ans:sourceEventId'] === sourceEventId),
    () => show(r1.results.map((e) => e && e.tags)));
  const matched = r1.results.find((e) => e.id === eventId);
  checkConsumerEvent('matched event', matched, event, 'MATCHED');

  // 6. eventType filter (combined with sourceEventId so that the result fits one page)
  await step('getMatchedEvents({eventType, sourceEventId})', async () => {
    const r = await client.getMatchedEvents({ eventType, sourceEventId });
    checkPaged('getMatchedEvents({eventType, sourceEventId})', r, { page: 0 });
    check('getMatchedEvents({eventType, sourceEventId}) contains the event', hasOurs(r), () => show(r));
    check('getMatchedEvents({eventType, sourceEventId}): every result has that eventType',
      isObj(r) && Array.isArray(r.results) && r.results.every((e) => e.eventType === eventType), () => show(r));
  });
  await step('getMatchedEvents({eventType: <unknown>, sourceEventId})', async () => {
    const r = await client.getMatchedEvents({ eventType: `NoSuchType${runId}`, sourceEventId });
    checkPaged('getMatchedEvents({eventType: <unknown>})', r, { page: 0 });
    check('getMatchedEvents with a non-matching eventType returns no results',
      isObj(r) && Array.isArray(r.results) && r.results.length === 0 && r.responseMetadata?.totalResultsCount === 0,
      () => show(r));
  });
  await step('getMatchedEvents({eventType}) (eventType only)', async () => {
    const r = await client.getMatchedEvents({ eventType });
    checkPaged('getMatchedEvents({eventType})', r, { page: 0, pageSize: 100 });
    check('getMatchedEvents({eventType}): every result has that eventType',
      isObj(r) && Array.isArray(r.results) && r.results.every((e) => e.eventType === eventType), () => show(r));
  });

  // 7. correlationId filter + paging (3 events share the correlationId if the batch worked)
  if (Array.isArray(sentBatch) && sentBatch.length === 2) {
    const ids = new Set([eventId, ...sentBatch.map((e) => e.id)]);
    const allThere = (r) => isObj(r) && Array.isArray(r.results) &&
      [...ids].every((id) => r.results.some((e) => e.id === id));
    let pc;
    try {
      pc = await pollMatched(client, { correlationId }, allThere, pollTimeout);
    } catch (err) {
      notOk('getMatchedEvents({correlationId})', describeError(err));
    }
    if (pc) {
      check('getMatchedEvents({correlationId}) returns all 3 events of the run', pc.found, () => show(pc.last));
      checkPaged('getMatchedEvents({correlationId})', pc.last, { page: 0 });
      if (pc.found) {
        const b0 = pc.last.results.find((e) => e.id === sentBatch[0].id);
        checkConsumerEvent('matched batch event', b0, batch[0], 'MATCHED');
        const total = pc.last.responseMetadata.totalResultsCount;
        await step('getMatchedEvents({correlationId, page: 1, pageSize: 1})', async () => {
          const r = await client.getMatchedEvents({ correlationId, page: 1, pageSize: 1 });
          checkPaged('getMatchedEvents page 1 size 1', r, { page: 1, pageSize: 1 });
          check('page 1 size 1: exactly one result, totalResultsCount unchanged, totalPages == totalResultsCount',
            isObj(r) && r.results?.length === 1 && r.responseMetadata?.totalResultsCount === total &&
              r.responseMetadata?.totalPages === total,
            () => `expected total ${total}, got ${show(r)}`);
          check('page 1 size 1: the result is one of the run events',
            isObj(r) && Array.isArray(r.results) && r.results.every((e) => isObj(e) && ids.has(e.id)),
            () => show(r));
        });
      }
    }
  }

  // 8. getMatchedEvent(id)
  await step('getMatchedEvent(id) GET /{platform}/consumer/v1/matched-events/{id}', async () => {
    const r = await client.getMatchedEvent(eventId);
    checkPaged('getMatchedEvent(id)', r, { page: 0, pageSize: 100 });
    check('getMatchedEvent(id) contains the event', hasOurs(r), () => show(r));
    check('getMatchedEvent(id): every result has that id',
      isObj(r) && Array.isArray(r.results) && r.results.every((e) => e.id === eventId), () => show(r));
    const e = isObj(r) && Array.isArray(r.results) ? r.results.find((x) => x.id === eventId) : undefined;
    if (e) checkConsumerEvent('getMatchedEvent(id) result', e, event, 'MATCHED');
  });

  // 9. undelivered events: one event of TOCSIN_UNDELIVERED_EVENT_TYPE, which the server must
  // route to an action that cannot deliver, so that these checks always have a result to read.
  const undeliveredType = env('TOCSIN_UNDELIVERED_EVENT_TYPE', 'Unsupported');
  const doomed = { ...mkEvent('undelivered', `${sourceEventId}-undelivered`), eventType: undeliveredType };
  const sentDoomed = await step('sendEvent of an undeliverable event succeeds',
    () => client.sendEvent(doomed), { critical: true });
  const doomedId = sentDoomed.id;
  const hasDoomed = (r) => isObj(r) && Array.isArray(r.results) && r.results.some((e) => isObj(e) && e.id === doomedId);
  let undelivered;
  try {
    undelivered = await pollUntil(() => client.getUndeliveredEvents(), hasDoomed, pollTimeout);
  } catch (err) {
    notOk('getUndeliveredEvents() GET /{platform}/consumer/v1/undelivered-events', describeError(err));
    throw new Abort('getUndeliveredEvents failed');
  }
  if (!check(`getUndeliveredEvents() returns the undeliverable event within ${pollTimeout} ms`, undelivered.found,
    () => `event ${doomedId} not found (is a subscription routing eventType=${undeliveredType} to an action that cannot deliver configured?); last response ${show(undelivered.last)}`)) {
    throw new Abort('undelivered event never showed up');
  }
  const u = undelivered.last;
  checkPaged('getUndeliveredEvents()', u, { page: 0, pageSize: 100 });
  check('getUndeliveredEvents(): every result has metadata.deliveryStatus UNDELIVERED',
    u.results.every((e) => isObj(e) && isObj(e.metadata) && e.metadata.deliveryStatus === 'UNDELIVERED'),
    () => show(u.results.map((e) => e && e.metadata)));
  checkConsumerEvent('undelivered event', u.results.find((e) => e.id === doomedId), doomed, 'UNDELIVERED');
  await step('getUndeliveredEvents({page: 0, pageSize: 1})', async () => {
    const r = await client.getUndeliveredEvents({ page: 0, pageSize: 1 });
    checkPaged('getUndeliveredEvents({pageSize: 1})', r, { page: 0, pageSize: 1 });
    check('getUndeliveredEvents({pageSize: 1}): exactly one result', isObj(r) && r.results?.length === 1, () => show(r));
  });
  await step('getUndeliveredEvent(id) GET /{platform}/consumer/v1/undelivered-events/{id}', async () => {
    const r = await client.getUndeliveredEvent(doomedId);
    checkPaged('getUndeliveredEvent(id)', r, { page: 0, pageSize: 100 });
    check('getUndeliveredEvent(id) contains the event', hasDoomed(r), () => show(r));
    const e = isObj(r) && Array.isArray(r.results) ? r.results.find((x) => x.id === doomedId) : undefined;
    if (e) checkConsumerEvent('getUndeliveredEvent(id) result', e, doomed, 'UNDELIVERED');
  });
  await step('getUndeliveredEvent(id) of a STORE-delivered event', async () => {
    const r = await client.getUndeliveredEvent(eventId);
    checkPaged('getUndeliveredEvent(id) of a delivered event', r, { page: 0, pageSize: 100 });
    check('getUndeliveredEvent(id) for a STORE-delivered event has no results',
      isObj(r) && Array.isArray(r.results) && r.results.length === 0, () => show(r));
  });
}

// ---------------------------------------------------------------------------
// config mode
// ---------------------------------------------------------------------------
function checkListMeta(label, r) {
  let good = check(`${label}: list response has {results, metadata}`,
    isObj(r) && Array.isArray(r.results) && isObj(r.metadata), () => show(r));
  if (!good) return undefined;
  const m = r.metadata;
  // The Node client types the count as totalResultsCount; the Java client (strict
  // parser) reads totalCount. Require exactly one of them, report which.
  const countKey = 'totalCount' in m ? 'totalCount' : 'totalResultsCount';
  const d = keysDiff(m, ['page', 'pageSize', 'totalPages', countKey]);
  good = check(`${label}: metadata has exactly {page,pageSize,totalPages,${countKey}}`, !d, d) && good;
  good = check(`${label}: metadata values are non-negative integers`,
    ['page', 'pageSize', 'totalPages', countKey].every((k) => isInt(m[k]) && m[k] >= 0), () => show(m)) && good;
  if (countKey !== 'totalCount') diag(`${label}: metadata uses ${countKey}, the Java client expects totalCount`);
  return good ? m[countKey] : undefined;
}

async function findInAll(client, type, name) {
  // Page through getAll until `name` shows up (pageSize 100).
  let page = 0;
  for (;;) {
    const r = await client.getAll(type, { page, pageSize: 100 });
    if (!isObj(r) || !Array.isArray(r.results) || !isObj(r.metadata)) return { found: false, r };
    const hit = r.results.find((e) => isObj(e) && e.name === name);
    if (hit) return { found: true, hit, r, page };
    page++;
    if (page >= (r.metadata.totalPages || 0) || page > 1000) return { found: false, r };
  }
}

async function configMode(runId) {
  const client = buildClient();
  const actionName = `tocsin-conf-action-${runId}`;
  const condName = `tocsin-conf-cond-${runId}`;
  const cond2Name = `tocsin-conf-cond2-${runId}`;
  const subName = `tocsin-conf-sub-${runId}`;
  const matchType = `ConformanceConfig${runId}`;
  const created = []; // [type, name] for cleanup

  const action = {
    name: actionName,
    type: 'STORE',
    state: State.ENABLED,
    description: 'Tocsin conformance STORE action',
    labels: ['conformance'],
    properties: {},
  };
  const condition = {
    name: condName,
    propertyKey: 'eventType',
    predicate: Predicate.EQUALS,
    propertyValue: matchType,
    description: 'Tocsin conformance condition',
    labels: ['conformance'],
    mandatory: false,
  };
  const subscription = {
    name: subName,
    state: State.ENABLED,
    description: 'Tocsin conformance subscription',
    labels: ['conformance'],
    actions: [actionName],
    conditions: [condName],
  };
  const strip = (o) => {
    const c = { ...o };
    delete c.properties; // servers may normalise empty properties
    return c;
  };

  try {
    // --- create
    for (const [type, data] of [[EntityType.ACTION, action], [EntityType.CONDITION, condition],
      [EntityType.SUBSCRIPTION, subscription]]) {
      const lower = type.toLowerCase();
      const r = await step(`create(${type}) POST /{platform}/configuration/v1/${lower}`,
        () => client.create(type, data), { critical: true });
      created.push([type, data.name]);
      check(`create(${type}) returns the entity with its fields`, containsAll(r, strip(data)),
        () => `sent ${show(data)}, got ${show(r)}`);
      check(`create(${type}) returns a server-generated string id`, isObj(r) && isStr(r.id) && r.id.length > 0,
        () => show(r));
    }
    await expectHttpError('create(ACTION) with a duplicate name is rejected with 4xx',
      [400, 409, 422], () => client.create(EntityType.ACTION, action));

    // --- get
    for (const [type, data] of [[EntityType.ACTION, action], [EntityType.CONDITION, condition],
      [EntityType.SUBSCRIPTION, subscription]]) {
      const lower = type.toLowerCase();
      await step(`get(${type}, name) GET /{platform}/configuration/v1/${lower}/{name}`, async () => {
        const r = await client.get(type, data.name);
        check(`get(${type}) returns the stored entity`, containsAll(r, strip(data)),
          () => `expected ${show(data)}, got ${show(r)}`);
      });
    }
    await expectHttpError('get(ACTION, <unknown name>) is rejected with 404', [404],
      () => client.get(EntityType.ACTION, `tocsin-conf-nonexistent-${runId}`));

    // --- getAll with paging
    for (const [type, data] of [[EntityType.ACTION, action], [EntityType.CONDITION, condition],
      [EntityType.SUBSCRIPTION, subscription]]) {
      const lower = type.toLowerCase();
      await step(`getAll(${type}) GET /{platform}/configuration/v1/${lower}`, async () => {
        const r = await client.getAll(type);
        if (checkListMeta(`getAll(${type})`, r) !== undefined) {
          check(`getAll(${type}) default page 0 / pageSize 100`,
            r.metadata.page === 0 && r.metadata.pageSize === 100, () => show(r.metadata));
        }
        const f = await findInAll(client, type, data.name);
        check(`getAll(${type}, {page, pageSize: 100}) lists ${data.name}`, f.found, () => show(f.r));
        const p = await client.getAll(type, { page: 0, pageSize: 1 });
        const count = checkListMeta(`getAll(${type}, {page: 0, pageSize: 1})`, p);
        if (count !== undefined) {
          const m = p.metadata;
          check(`getAll(${type}, {page: 0, pageSize: 1}) returns 1 result, pageSize 1, totalPages == count`,
            p.results.length === 1 && m.page === 0 && m.pageSize === 1 && m.totalPages === count,
            () => show(p));
        }
      });
    }

    // --- update condition
    const updatedCondition = { ...condition, propertyValue: `${matchType}Updated`, description: 'updated by conformance' };
    await step('update(CONDITION) PUT /{platform}/configuration/v1/condition/{name}', async () => {
      const r = await client.update(EntityType.CONDITION, updatedCondition);
      check('update(CONDITION) returns the updated entity', containsAll(r, updatedCondition),
        () => `sent ${show(updatedCondition)}, got ${show(r)}`);
      const g = await client.get(EntityType.CONDITION, condName);
      check('get(CONDITION) after update shows the new propertyValue/description', containsAll(g, updatedCondition),
        () => show(g));
    });

    // --- export
    const exported = await step('exportConfiguration GET /{platform}/configuration/v1/configuration',
      () => client.exportConfiguration(), { critical: true });
    const isConfig = (c) => isObj(c) && ['actions', 'conditions', 'subscriptions'].every((k) => Array.isArray(c[k]));
    if (!check('exportConfiguration returns {actions[], conditions[], subscriptions[]}', isConfig(exported),
      () => show(exported))) throw new Abort('export shape');
    const byName = (arr, n) => arr.find((e) => isObj(e) && e.name === n);
    check('export contains the action', containsAll(byName(exported.actions, actionName), strip(action)),
      () => show(byName(exported.actions, actionName)));
    check('export contains the updated condition', containsAll(byName(exported.conditions, condName), updatedCondition),
      () => show(byName(exported.conditions, condName)));
    check('export contains the subscription', containsAll(byName(exported.subscriptions, subName), subscription),
      () => show(byName(exported.subscriptions, subName)));

    // --- import (round-trip the export, modified)
    const cond2 = {
      name: cond2Name,
      propertyKey: 'severity',
      predicate: Predicate.EQUALS,
      propertyValue: 'FATAL',
      description: 'added by import',
      labels: ['conformance'],
    };
    const modified = JSON.parse(JSON.stringify(exported));
    const ma = byName(modified.actions, actionName);
    if (ma) ma.description = 'modified by import';
    modified.conditions.push(cond2);
    const ms = byName(modified.subscriptions, subName);
    if (ms) ms.conditions = [condName, cond2Name];
    created.push([EntityType.CONDITION, cond2Name]);
    const imported = await step('importConfiguration POST /{platform}/configuration/v1/configuration',
      () => client.importConfiguration(modified));
    if (imported !== undefined) {
      if (check('importConfiguration returns {actions[], conditions[], subscriptions[]}', isConfig(imported),
        () => show(imported))) {
        check('import response contains the new condition', !!byName(imported.conditions, cond2Name),
          () => show(imported.conditions));
      }
      await step('get entities after import', async () => {
        const a = await client.get(EntityType.ACTION, actionName);
        check('get(ACTION) after import shows the modified description', isObj(a) && a.description === 'modified by import',
          () => show(a));
        const c2 = await client.get(EntityType.CONDITION, cond2Name);
        check('get(CONDITION) after import returns the imported condition', containsAll(c2, cond2), () => show(c2));
        const s = await client.get(EntityType.SUBSCRIPTION, subName);
        check('get(SUBSCRIPTION) after import references both conditions',
          isObj(s) && Array.isArray(s.conditions) && [condName, cond2Name].every((n) => s.conditions.includes(n)),
          () => show(s));
      });
      const after = await step('exportConfiguration after import', () => client.exportConfiguration());
      if (isConfig(after)) {
        check('export after import has the same number of entities as the imported configuration',
          after.actions.length === modified.actions.length && after.conditions.length === modified.conditions.length &&
            after.subscriptions.length === modified.subscriptions.length,
          () => `imported ${modified.actions.length}/${modified.conditions.length}/${modified.subscriptions.length}, ` +
            `exported ${after.actions.length}/${after.conditions.length}/${after.subscriptions.length}`);
      }
    }

    // --- delete (subscription first, then conditions, then the action)
    for (const [type, name] of [[EntityType.SUBSCRIPTION, subName], [EntityType.CONDITION, condName],
      [EntityType.CONDITION, cond2Name], [EntityType.ACTION, actionName]]) {
      const lower = type.toLowerCase();
      const d = await step(`delete(${type}, ${name.replace(runId, '<run>')}) DELETE /{platform}/configuration/v1/${lower}/{name}`,
        async () => {
          await client.delete(type, name);
          return true;
        });
      if (d) {
        const i = created.findIndex(([t, n]) => t === type && n === name);
        if (i >= 0) created.splice(i, 1);
        await expectHttpError(`get(${type}) after delete is rejected with 404`, [404], () => client.get(type, name));
      }
    }
  } finally {
    // best-effort cleanup of anything left behind (not counted)
    for (const [type, name] of created.reverse()) {
      try {
        await client.delete(type, name);
        diag(`cleanup: deleted ${type} ${name}`);
      } catch {
        /* ignore */
      }
    }
  }
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------
async function main() {
  const args = process.argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(USAGE);
    return 0;
  }
  const mode = args[0];
  if (!['events', 'config'].includes(mode)) {
    process.stderr.write(`error: mode must be "events" or "config"\n\n${USAGE}`);
    return 2;
  }
  if (!env('TOCSIN_URL')) {
    process.stderr.write(`error: TOCSIN_URL is not set\n\n${USAGE}`);
    return 2;
  }
  const runId = `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
  diag(`@sap_oss/alert-notification-client ${require('@sap_oss/alert-notification-client/package.json').version}, ` +
    `mode ${mode}, url ${env('TOCSIN_URL')}, auth ${env('TOCSIN_AUTH', 'basic')}, run ${runId}`);
  try {
    if (mode === 'events') await eventsMode(runId);
    else await configMode(runId);
  } catch (err) {
    if (err instanceof Abort) diag(`aborted after critical failure: ${err.message}`);
    else notOk('unexpected exception', err && err.stack ? err.stack : String(err));
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed === 0 ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.log(`not ok - fatal: ${oneLine(err && err.stack ? err.stack : err)}`);
    console.log(`${passed} passed, ${failed + 1} failed`);
    process.exitCode = 1;
  },
);
