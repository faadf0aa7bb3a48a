// Yjs runner: each (replica, cart) Y.Doc holds a Y.Map `items` whose key
// `${SKU}/${R}` is replica R's running contribution to that SKU. Y.Map is
// last-writer-wins per key, so per-replica keys are what make concurrent
// quantity changes add up; a SKU's total is the sum of its keys.
//
// node run_yjs.mjs --workload FILE --out RESULT.json --totals TOTALS.txt

import * as Y from 'yjs';
import { packageVersion, runBenchmark } from './runner.mjs';

runBenchmark(({ replicas }) => ({
  system: 'yjs',
  version: packageVersion('yjs'),

  createDoc(replica) {
    const doc = new Y.Doc();
    // Fixed client ids make runs (and encoded sizes) reproducible.
    doc.clientID = replica + 1;
    const handle = { replica, doc, items: doc.getMap('items'), lastUpdate: null };
    // Keep only updates from local transactions; applyUpdate also emits 'update'.
    doc.on('update', (update, _origin, _doc, transaction) => {
      if (transaction.local) handle.lastUpdate = update;
    });
    return handle;
  },

  add(handle, sku, n) {
    const key = `${sku}/${handle.replica}`;
    handle.lastUpdate = null;
    handle.items.set(key, (handle.items.get(key) ?? 0) + n);
    return handle.lastUpdate;
  },

  remove(handle, sku) {
    // Drops every `${sku}/` key present locally; those can only be
    // `${sku}/0` .. `${sku}/${replicas - 1}`, so probe them instead of scanning
    // the map. One transaction, so several deletions yield one update (and
    // none at all when no key is present locally).
    handle.lastUpdate = null;
    handle.doc.transact(() => {
      for (let r = 0; r < replicas; r++) {
        const key = `${sku}/${r}`;
        if (handle.items.has(key)) handle.items.delete(key);
      }
    });
    return handle.lastUpdate;
  },

  pack(updates) {
    const payload = Y.mergeUpdates(updates);
    return { payload, bytes: payload.length };
  },

  apply(handle, update) {
    Y.applyUpdate(handle.doc, update);
  },

  totals(handle) {
    const totals = new Map();
    for (const [key, value] of handle.items) {
      const sku = key.slice(0, key.lastIndexOf('/'));
      totals.set(sku, (totals.get(sku) ?? 0) + value);
    }
    return totals;
  },

  stateBytes: (handle) => Y.encodeStateAsUpdate(handle.doc).length,
}));
