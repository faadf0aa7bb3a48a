// Shared driver for the JS CRDT runners: parses a workload file, replays it
// through a system adapter, times local ops and merges separately, checks
// convergence and writes the result JSON and the totals file.
//
// An adapter is { system, version, createDoc(replica), add(doc, sku, n),
// remove(doc, sku), pack(updates), apply(doc, payload), totals(doc), stateBytes(doc) }:
//   add/remove return the encoded update for that op, or null when the op
//   changed nothing locally (e.g. removing a line this replica never saw);
//   pack returns { payload, bytes } for one cart's updates since the last pack;
//   totals returns a Map SKU -> total quantity.

import { readFileSync, writeFileSync } from 'node:fs';
import { parseCli, single } from './args.mjs';

const USAGE = 'node run_X.mjs --workload FILE --out RESULT.json --totals TOTALS.txt';
const PROGRESS_EVERY_OPS = 20000;

const EV_OP = 0;
const EV_PACK = 1;
const EV_DELIVER = 2;
const OP_ADD = 0; // `a` and `c` are applied identically: add a (signed) amount
const OP_REMOVE = 1;

export function packageVersion(name) {
  const url = new URL(`./node_modules/${name}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(url, 'utf8')).version;
}

// Parses and validates the whole file into typed columns up front so that
// neither parsing nor sanity checks land inside the timed loops.
function parseWorkload(path) {
  const lines = readFileSync(path, 'utf8').split('\n');
  const header = lines[0].match(/^# meridian-cart-workload v1 (.*)$/);
  if (!header) throw new Error(`${path}: not a meridian-cart-workload v1 file`);
  const params = Object.fromEntries(
    header[1].split(' ').map((kv) => {
      const [k, v] = kv.split('=');
      return [k, Number(v)];
    }),
  );

  for (const key of ['replicas', 'carts', 'ops']) {
    if (!(Number.isInteger(params[key]) && params[key] >= 1)) {
      throw new Error(`${path}: header lacks ${key}`);
    }
  }

  const n = lines.length - 1;
  const kind = new Uint8Array(n);
  const replica = new Int32Array(n); // op/pack: acting replica; deliver: destination
  const cart = new Int32Array(n); // op: cart; deliver: message id
  const op = new Uint8Array(n);
  const sku = new Int32Array(n); // index into skuNames
  const amount = new Int32Array(n);
  const skuNames = [];
  const skuIndex = new Map();
  const messageOrigins = []; // origin replica of each packed message, by id
  const unpacked = new Uint8Array(params.replicas); // replica has ops since its last `p`
  let count = 0;
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    if (line === '') continue;
    const f = line.split(' ');
    const e = count++;
    const bad = (why) => new Error(`${path}:${i + 1}: ${why}: ${JSON.stringify(line)}`);
    if (f[0] === 'o') {
      if (!['a', 'c', 'r'].includes(f[3])) throw bad('unknown op');
      kind[e] = EV_OP;
      replica[e] = Number(f[1]);
      cart[e] = Number(f[2]);
      op[e] = f[3] === 'r' ? OP_REMOVE : OP_ADD;
      let s = skuIndex.get(f[4]);
      if (s === undefined) {
        s = skuNames.push(f[4]) - 1;
        skuIndex.set(f[4], s);
      }
      sku[e] = s;
      amount[e] = f[3] === 'r' ? 0 : Number(f[5]);
    } else if (f[0] === 'p') {
      kind[e] = EV_PACK;
      replica[e] = Number(f[1]);
    } else if (f[0] === 'd') {
      kind[e] = EV_DELIVER;
      cart[e] = Number(f[1]);
      replica[e] = Number(f[2]);
    } else {
      throw bad('unknown event');
    }
    if (!(replica[e] >= 0 && replica[e] < params.replicas)) throw bad('replica out of range');
    if (kind[e] === EV_OP) {
      if (!(cart[e] >= 0 && cart[e] < params.carts)) throw bad('cart out of range');
      unpacked[replica[e]] = 1;
    } else if (kind[e] === EV_PACK) {
      messageOrigins.push(replica[e]);
      unpacked[replica[e]] = 0;
    } else {
      if (!(cart[e] < messageOrigins.length)) throw bad('message not packed yet');
      if (messageOrigins[cart[e]] === replica[e]) throw bad('message delivered to its origin');
    }
  }
  if (unpacked.includes(1)) throw new Error(`${path}: ops after a replica's last pack`);
  return { params, count, kind, replica, cart, op, sku, amount, skuNames };
}

const nowNs = () => process.hrtime.bigint();

// Canonical text of a totals map, used both for convergence and the totals file.
function totalsLines(cartId, totals, keepZero) {
  return [...totals.keys()]
    .sort()
    .filter((s) => keepZero || totals.get(s) !== 0)
    .map((s) => `${cartId} ${s} ${totals.get(s)}`);
}

export function runBenchmark(makeAdapter) {
  const opts = parseCli(process.argv.slice(2), {
    usage: USAGE,
    known: ['workload', 'out', 'totals'],
  });
  const workloadPath = single(opts, 'workload', USAGE);
  const outPath = single(opts, 'out', USAGE);
  const totalsPath = single(opts, 'totals', USAGE);

  const w = parseWorkload(workloadPath);
  const { replicas, carts } = w.params;
  const adapter = makeAdapter({ replicas });

  // docs[r][c]: replica r's document for cart c, created on first touch.
  const docs = Array.from({ length: replicas }, () => new Array(carts));
  const docAt = (r, c) => (docs[r][c] ??= adapter.createDoc(r));
  // Per replica: cart -> updates produced since the last pack, and op count.
  const pending = Array.from({ length: replicas }, () => new Map());
  const pendingOps = new Int32Array(replicas);
  const messages = []; // { ops, bytes, carts: [], payloads: [] } by message id

  let ops = 0;
  let localNs = 0n;
  let mergeNs = 0n;
  let mergeOps = 0;
  let wireBytes = 0;
  let nextProgress = PROGRESS_EVERY_OPS;
  const started = nowNs();

  // Local events (o, p) and deliveries (d) come in contiguous runs; each run
  // is timed as a whole so the clock is read twice per run, not per event.
  for (let i = 0, end = 0; i < w.count; i = end) {
    const merging = w.kind[i] === EV_DELIVER;
    while (end < w.count && (w.kind[end] === EV_DELIVER) === merging) end++;

    const t0 = nowNs();
    for (let e = i; e < end; e++) {
      const r = w.replica[e];
      if (w.kind[e] === EV_OP) {
        const c = w.cart[e];
        const doc = docAt(r, c);
        const name = w.skuNames[w.sku[e]];
        const update =
          w.op[e] === OP_REMOVE ? adapter.remove(doc, name) : adapter.add(doc, name, w.amount[e]);
        if (update !== null) {
          const list = pending[r].get(c);
          if (list === undefined) pending[r].set(c, [update]);
          else list.push(update);
        }
        pendingOps[r]++;
      } else if (w.kind[e] === EV_PACK) {
        const message = { ops: pendingOps[r], bytes: 0, carts: [], payloads: [] };
        for (const [c, updates] of pending[r]) {
          const { payload, bytes } = adapter.pack(updates);
          message.carts.push(c);
          message.payloads.push(payload);
          message.bytes += bytes;
        }
        messages.push(message);
        pending[r].clear();
        pendingOps[r] = 0;
      } else {
        const message = messages[w.cart[e]];
        for (let k = 0; k < message.carts.length; k++) {
          adapter.apply(docAt(r, message.carts[k]), message.payloads[k]);
        }
        mergeOps += message.ops;
        wireBytes += message.bytes;
      }
    }
    const elapsed = nowNs() - t0;

    if (merging) {
      mergeNs += elapsed;
    } else {
      localNs += elapsed;
      for (let e = i; e < end; e++) if (w.kind[e] === EV_OP) ops++;
    }
    if (ops >= nextProgress) {
      const wall = Number(nowNs() - started) / 1e9;
      process.stderr.write(`${adapter.system}: ${ops}/${w.params.ops} ops, ${wall.toFixed(1)} s\n`);
      nextProgress += PROGRESS_EVERY_OPS;
    }
  }

  // Convergence: every replica must hold the same SKU -> total map per cart
  // (zero totals included, so a leftover zero line on one side still counts).
  let converged = true;
  for (let c = 0; c < carts && converged; c++) {
    if (docs.every((d) => d[c] === undefined)) continue;
    const texts = docs.map((d) =>
      d[c] === undefined ? '' : totalsLines(c, adapter.totals(d[c]), true).join('\n'),
    );
    converged = texts.every((t) => t === texts[0]);
  }

  const totalsOut = [];
  let touchedCarts = 0;
  let stateBytes = 0;
  for (let c = 0; c < carts; c++) {
    const doc = docs[0][c];
    if (doc === undefined) continue;
    touchedCarts++;
    stateBytes += adapter.stateBytes(doc);
    totalsOut.push(...totalsLines(c, adapter.totals(doc), false));
  }
  writeFileSync(totalsPath, totalsOut.map((l) => l + '\n').join(''));

  const localSeconds = Number(localNs) / 1e9;
  const mergeSeconds = Number(mergeNs) / 1e9;
  const result = {
    system: adapter.system,
    version: adapter.version,
    ops,
    local_seconds: localSeconds,
    local_ops_per_s: ops / localSeconds,
    merge_ops: mergeOps,
    merge_seconds: mergeSeconds,
    merge_ops_per_s: mergeOps / mergeSeconds,
    wire_bytes: wireBytes,
    wire_bytes_per_op: wireBytes / ops,
    state_bytes_per_cart: stateBytes / touchedCarts,
    replicas_converged: converged,
    carts: touchedCarts,
  };
  writeFileSync(outPath, JSON.stringify(result, null, 2) + '\n');

  const wall = Number(nowNs() - started) / 1e9;
  console.log(
    `${result.system} ${result.version}: ${ops} ops; ` +
      `local ${result.local_ops_per_s.toFixed(0)} ops/s (${localSeconds.toFixed(2)} s); ` +
      `merge ${mergeOps} ops at ${result.merge_ops_per_s.toFixed(0)} ops/s (${mergeSeconds.toFixed(2)} s); ` +
      `wire ${result.wire_bytes_per_op.toFixed(1)} B/op; ` +
      `state ${result.state_bytes_per_cart.toFixed(1)} B/cart over ${touchedCarts} carts; ` +
      `converged ${converged ? 'yes' : 'NO'}; wall ${wall.toFixed(1)} s`,
  );
}
