import * as A from '@automerge/automerge';
const t = performance.now();
try { A.load(new Uint8Array(+process.argv[2] * 1e6)); } catch (e) { console.log('expected:', String(e).slice(0, 60)); }
console.log('prealloc ms', (performance.now() - t).toFixed(0), 'ext MB', (process.memoryUsage().external / 1e6).toFixed(0));
const docs = []; const t2 = performance.now();
for (let i = 0; i < 30000; i++) docs.push(A.init({actor: '01'.repeat(16)}));
console.log('create ms', (performance.now() - t2).toFixed(0), 'ext MB', (process.memoryUsage().external / 1e6).toFixed(0));
