// Compares CRDT benchmark results: a table of the headline figures, how far
// the systems' final totals agree, and ratios of the first system (meridian)
// to each of the others.
//
// node report.mjs --results a.json b.json [c.json ...] --totals a.txt b.txt [c.txt ...]
//                 --out crdt_compare.json
// Results and totals files pair up by position; at least two of each.

import { readFileSync, writeFileSync } from 'node:fs';
import { parseCli, single, fail } from './args.mjs';

const USAGE =
  'node report.mjs --results a.json b.json [c.json ...] --totals a.txt b.txt [c.txt ...] --out crdt_compare.json';
const SHOWN_DIFFERENCES = 3;

const COLUMNS = [
  { title: 'system', width: 20, cell: (r) => `${r.system} ${r.version}` },
  { title: 'local ops/s', width: 11, cell: (r) => r.local_ops_per_s.toFixed(0) },
  { title: 'merge ops/s', width: 11, cell: (r) => r.merge_ops_per_s.toFixed(0) },
  { title: 'wire B/op', width: 9, cell: (r) => r.wire_bytes_per_op.toFixed(1) },
  { title: 'state B/cart', width: 12, cell: (r) => r.state_bytes_per_cart.toFixed(1) },
  { title: 'converged', width: 9, cell: (r) => (r.replicas_converged ? 'yes' : 'NO') },
];
// Ratios are first / other: above 1 the first system is faster (throughput)
// or larger (bytes).
const RATIO_FIELDS = ['local_ops_per_s', 'merge_ops_per_s', 'wire_bytes_per_op', 'state_bytes_per_cart'];

// Totals file lines are `CART SKU TOTAL`; returns Map cart -> Map SKU -> total.
function readTotals(path) {
  const carts = new Map();
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (line === '') continue;
    const [cart, sku, total] = line.split(' ');
    if (total === undefined) throw new Error(`${path}: bad line ${JSON.stringify(line)}`);
    const c = Number(cart);
    if (!carts.has(c)) carts.set(c, new Map());
    carts.get(c).set(sku, Number(total));
  }
  return carts;
}

// SKUs whose totals differ in one cart; an absent SKU counts as total 0.
function cartDifferences(a = new Map(), b = new Map()) {
  const skus = [...new Set([...a.keys(), ...b.keys()])].sort();
  return skus
    .map((sku) => ({ sku, a: a.get(sku) ?? 0, b: b.get(sku) ?? 0 }))
    .filter((d) => d.a !== d.b);
}

function compareTotals(nameA, totalsA, nameB, totalsB) {
  const carts = [...new Set([...totalsA.keys(), ...totalsB.keys()])].sort((x, y) => x - y);
  const differing = [];
  for (const cart of carts) {
    const skus = cartDifferences(totalsA.get(cart), totalsB.get(cart));
    if (skus.length > 0) differing.push({ cart, skus });
  }
  return {
    a: nameA,
    b: nameB,
    carts_compared: carts.length,
    carts_differing: differing.length,
    first_differing: differing.slice(0, SHOWN_DIFFERENCES),
  };
}

const ratio = (x, y) => (y === 0 ? null : x / y);

const opts = parseCli(process.argv.slice(2), { usage: USAGE, known: ['results', 'totals', 'out'] });
const resultPaths = opts.results ?? [];
const totalsPaths = opts.totals ?? [];
if (resultPaths.length < 2) fail('--results needs at least two files', USAGE);
if (totalsPaths.length !== resultPaths.length) fail('--totals needs one file per results file', USAGE);
const outPath = single(opts, 'out', USAGE);

const results = resultPaths.map((p) => JSON.parse(readFileSync(p, 'utf8')));
const totals = totalsPaths.map(readTotals);

// Figures are only comparable when every system replayed the same workload.
const warnings = [];
for (const field of ['ops', 'merge_ops', 'carts']) {
  const values = new Set(results.map((r) => r[field]));
  if (values.size > 1) {
    warnings.push(`${field} differs between results (${results.map((r) => `${r.system}=${r[field]}`).join(', ')})`);
  }
}

const agreement = [];
for (let i = 0; i < results.length; i++) {
  for (let j = i + 1; j < results.length; j++) {
    agreement.push(compareTotals(results[i].system, totals[i], results[j].system, totals[j]));
  }
}

const [first, ...others] = results;
const ratios = others.map((other) => ({
  system: first.system,
  versus: other.system,
  ...Object.fromEntries(RATIO_FIELDS.map((f) => [f, ratio(first[f], other[f])])),
}));

const out = [];
out.push(COLUMNS.map((c) => c.title.padStart(c.width)).join('  '));
for (const r of results) out.push(COLUMNS.map((c) => c.cell(r).padStart(c.width)).join('  '));
out.push('', 'totals agreement (replica 0):');
for (const a of agreement) {
  out.push(`  ${a.a} vs ${a.b}: ${a.carts_differing} of ${a.carts_compared} carts differ`);
  for (const d of a.first_differing) {
    out.push(`    cart ${d.cart}: ` + d.skus.map((s) => `${s.sku} ${s.a} vs ${s.b}`).join(', '));
  }
}
out.push('', `ratios ${first.system} / other (throughput: >1 is faster; bytes: <1 is smaller):`);
for (const r of ratios) {
  const cells = RATIO_FIELDS.map((f) => `${f} ${r[f] === null ? 'n/a' : r[f].toFixed(2)}`);
  out.push(`  vs ${r.versus}: ${cells.join(', ')}`);
}
for (const w of warnings) out.push(`warning: ${w}`);
console.log(out.join('\n'));

writeFileSync(
  outPath,
  JSON.stringify(
    {
      results: results.map((r, i) => ({ ...r, results_file: resultPaths[i], totals_file: totalsPaths[i] })),
      agreement,
      ratios,
      warnings,
    },
    null,
    2,
  ) + '\n',
);
