// Automerge runner: each (replica, cart) document holds a map `items` of
// SKU -> Automerge.Counter, so concurrent increments add up.
//
// node run_automerge.mjs --workload FILE --out RESULT.json --totals TOTALS.txt

import * as Automerge from '@automerge/automerge';
import { packageVersion, runBenchmark } from './runner.mjs';

// Change timestamps are advisory only; a fixed, realistic value keeps runs
// byte-for-byte reproducible without understating the encoded change size.
const CHANGE_OPTIONS = { time: 1700000000 };

// Deterministic 16-byte actor ids: 00.. for the genesis change, 01.., 02.. per replica.
const actorId = (n) => n.toString(16).padStart(2, '0').repeat(16);

// Pre-size Automerge's wasm heap before anything is timed. Holding one document
// per (replica, cart) -- 30,000 for the default workload, ~490 MiB of wasm
// memory -- otherwise makes the heap grow step by step, and in Node 20 that
// growth plus the full GCs it provokes dominated the run: 723 local / 827 merge
// ops/s and 13 minutes, against ~8,000 / ~10,500 ops/s and ~65 s pre-sized.
// Loading a buffer of zeros makes the allocator claim about twice its size,
// then fails (it is not a document) and frees it; the allocator keeps that
// memory and serves every later document from it. A much larger workload
// needs a larger reservation; the symptom of too small a one is that slowdown.
const WASM_RESERVE_BYTES = 512 * 1024 * 1024;
try {
  Automerge.load(new Uint8Array(WASM_RESERVE_BYTES));
} catch (e) {
  if (!(e instanceof RangeError)) throw e;
}

// Every replica starts a cart from the same genesis change that creates
// `items`. If each replica created the map itself, the concurrent puts of the
// root key `items` would conflict and all but one replica's map would be lost.
const genesis = Automerge.change(Automerge.init({ actor: actorId(0) }), CHANGE_OPTIONS, (d) => {
  d.items = {};
});

runBenchmark(() => ({
  system: 'automerge',
  version: packageVersion('@automerge/automerge'),

  createDoc: (replica) => ({ doc: Automerge.clone(genesis, actorId(replica + 1)) }),

  add(handle, sku, n) {
    handle.doc = Automerge.change(handle.doc, CHANGE_OPTIONS, (d) => {
      const counter = d.items[sku];
      if (counter === undefined) d.items[sku] = new Automerge.Counter(n);
      else counter.increment(n);
    });
    return Automerge.getLastLocalChange(handle.doc);
  },

  remove(handle, sku) {
    const before = handle.doc;
    handle.doc = Automerge.change(handle.doc, CHANGE_OPTIONS, (d) => {
      if (d.items[sku] !== undefined) delete d.items[sku];
    });
    // A change with no ops returns the same doc and commits nothing, and
    // getLastLocalChange would hand back the previous change a second time.
    return handle.doc === before ? null : Automerge.getLastLocalChange(handle.doc);
  },

  // Automerge changes are shipped as-is: the message carries the list.
  pack: (changes) => ({ payload: changes, bytes: changes.reduce((sum, c) => sum + c.length, 0) }),

  apply(handle, changes) {
    [handle.doc] = Automerge.applyChanges(handle.doc, changes);
  },

  // Read through toJS (materialised from the wasm backend), not the cached doc
  // object: in 3.5.0 a local increment of a conflicted counter leaves the
  // cached object showing a losing conflict's value while the backend is right.
  totals(handle) {
    const items = Automerge.toJS(handle.doc).items;
    return new Map(Object.keys(items).map((sku) => [sku, items[sku].value]));
  },

  stateBytes: (handle) => Automerge.save(handle.doc).length,
}));
