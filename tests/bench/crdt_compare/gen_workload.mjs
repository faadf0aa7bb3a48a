// Deterministic shopping-cart workload generator shared by the C++ and JS runners.
//
// node gen_workload.mjs --out FILE [--replicas 3] [--carts 10000] [--ops 200000]
//                       [--round 1000] [--skus 200] [--seed 42]
//
// Format (one event per line):
//   # meridian-cart-workload v1 replicas=.. carts=.. ops=.. round=.. skus=.. seed=..
//   o R C a SKU N   replica R adds N >= 1 units of SKU to cart C
//   o R C c SKU D   replica R changes the quantity of SKU in cart C by D (D in {+1,+2,-1})
//   o R C r SKU     replica R removes the SKU line from cart C
//   p R             replica R packs everything it produced since its previous `p`
//                   into one message; message ids are 0,1,2,... in `p` order
//   d M R           deliver message M to replica R (never its origin)
//
// Every round of `round` ops ends with one `p` per replica followed by the
// delivery of each of those messages to every other replica, in a seeded
// random order: replicas share one view at the start of each round, while
// deliveries within a round interleave arbitrarily.

import { writeFileSync } from 'node:fs';
import { parseCli, single, intOption } from './args.mjs';

const USAGE =
  'node gen_workload.mjs --out FILE [--replicas 3] [--carts 10000] [--ops 200000] ' +
  '[--round 1000] [--skus 200] [--seed 42]';

// Op mix; change/remove need a line in the cart, so the realised mix leans
// slightly further towards adds (an empty cart always gets an add).
const ADD_SHARE = 0.55;
const CHANGE_SHARE = 0.25;
// Zipf exponent for SKU popularity: a handful of SKUs dominate, as in real carts.
const ZIPF_S = 1.0;
const CHANGE_DELTAS = [1, 2, -1];

// mulberry32: tiny, fast, well-distributed 32-bit PRNG; the same seed must
// reproduce the same file on every machine, which Math.random cannot give.
function mulberry32(seed) {
  let a = seed >>> 0;
  return function next() {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Returns a sampler of SKU indices in [0, skus) with P(k) proportional to 1/(k+1)^s.
function zipfSampler(skus, rand) {
  const cumulative = new Float64Array(skus);
  let sum = 0;
  for (let k = 0; k < skus; k++) {
    sum += 1 / Math.pow(k + 1, ZIPF_S);
    cumulative[k] = sum;
  }
  return function sample() {
    const target = rand() * sum;
    let lo = 0;
    let hi = skus - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (cumulative[mid] > target) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  };
}

const pick = (rand, n) => Math.floor(rand() * n);
const skuName = (k) => `sku-${String(k).padStart(4, '0')}`;

function generate({ replicas, carts, ops, round, skus, seed }) {
  const rand = mulberry32(seed);
  const sampleSku = zipfSampler(skus, rand);
  // Reference model: one global view of each cart (SKU index -> quantity), used
  // only to decide which change/remove ops make sense. It ignores replication
  // lag on purpose: a replica may act on a line another replica added
  // concurrently, which is exactly the conflict the CRDTs must resolve.
  const model = new Array(carts);
  const lines = [
    `# meridian-cart-workload v1 replicas=${replicas} carts=${carts} ops=${ops} ` +
      `round=${round} skus=${skus} seed=${seed}`,
  ];
  let nextMessage = 0;

  for (let done = 0; done < ops; ) {
    const roundEnd = Math.min(ops, done + round);
    for (; done < roundEnd; done++) {
      const r = pick(rand, replicas);
      const c = pick(rand, carts);
      const u = rand();
      const cart = (model[c] ??= new Map());
      if (u < ADD_SHARE || cart.size === 0) {
        const sku = sampleSku();
        const n = 1 + pick(rand, 3);
        cart.set(sku, (cart.get(sku) ?? 0) + n);
        lines.push(`o ${r} ${c} a ${skuName(sku)} ${n}`);
        continue;
      }
      // Map iteration order is insertion order, so this choice is deterministic.
      const present = [...cart.keys()];
      const sku = present[pick(rand, present.length)];
      if (u < ADD_SHARE + CHANGE_SHARE) {
        // Never take the modelled quantity below 1: reaching 0 is a remove.
        const qty = cart.get(sku);
        const allowed = CHANGE_DELTAS.filter((d) => qty + d >= 1);
        const d = allowed[pick(rand, allowed.length)];
        cart.set(sku, qty + d);
        lines.push(`o ${r} ${c} c ${skuName(sku)} ${d > 0 ? '+' : ''}${d}`);
      } else {
        cart.delete(sku);
        lines.push(`o ${r} ${c} r ${skuName(sku)}`);
      }
    }

    const deliveries = [];
    for (let r = 0; r < replicas; r++) {
      const message = nextMessage++;
      lines.push(`p ${r}`);
      for (let dest = 0; dest < replicas; dest++) {
        if (dest !== r) deliveries.push(`d ${message} ${dest}`);
      }
    }
    // Fisher-Yates shuffle with the seeded PRNG.
    for (let i = deliveries.length - 1; i > 0; i--) {
      const j = pick(rand, i + 1);
      [deliveries[i], deliveries[j]] = [deliveries[j], deliveries[i]];
    }
    lines.push(...deliveries);
  }
  return lines.join('\n') + '\n';
}

const opts = parseCli(process.argv.slice(2), {
  usage: USAGE,
  known: ['out', 'replicas', 'carts', 'ops', 'round', 'skus', 'seed'],
});
const out = single(opts, 'out', USAGE);
const params = {
  replicas: intOption(opts, 'replicas', USAGE, 3),
  carts: intOption(opts, 'carts', USAGE, 10000),
  ops: intOption(opts, 'ops', USAGE, 200000),
  round: intOption(opts, 'round', USAGE, 1000),
  skus: intOption(opts, 'skus', USAGE, 200, 1, 10000), // names are sku-0000..sku-9999
  seed: intOption(opts, 'seed', USAGE, 42, 0, 0xffffffff),
};
writeFileSync(out, generate(params));
