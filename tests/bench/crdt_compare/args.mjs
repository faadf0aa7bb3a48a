// Minimal command-line parsing shared by the benchmark scripts.
// node:util parseArgs wants `--results a --results b`; the report takes
// `--results a b c`, so every `--flag` here collects the values that follow it.

export function parseCli(argv, { usage, known }) {
  const opts = {};
  let current = null;
  for (const arg of argv) {
    if (arg.startsWith('--')) {
      current = arg.slice(2);
      if (!known.includes(current)) fail(`unknown option --${current}`, usage);
      if (current in opts) fail(`--${current} given twice`, usage);
      opts[current] = [];
    } else if (current === null) {
      fail(`unexpected argument ${arg}`, usage);
    } else {
      opts[current].push(arg);
    }
  }
  return opts;
}

// A single value for `name`, or `fallback` when absent; throws the usage if missing.
export function single(opts, name, usage, fallback) {
  const values = opts[name];
  if (values === undefined) {
    if (fallback === undefined) fail(`--${name} is required`, usage);
    return fallback;
  }
  if (values.length !== 1) fail(`--${name} takes exactly one value`, usage);
  return values[0];
}

// An integer option in [min, max].
export function intOption(opts, name, usage, fallback, min = 1, max = Number.MAX_SAFE_INTEGER) {
  const text = String(single(opts, name, usage, fallback));
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max) {
    fail(`--${name} must be an integer in [${min}, ${max}], got ${text}`, usage);
  }
  return value;
}

export function fail(message, usage) {
  process.stderr.write(`error: ${message}\nusage: ${usage}\n`);
  process.exit(2);
}
