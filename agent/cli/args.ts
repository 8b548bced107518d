// A small flag parser for the subcommands: --name VALUE, --name=VALUE, repeatable flags, booleans,
// and `--` before a command line. Unknown flags are errors that list the known ones.
export interface FlagSpec {
  [name: string]: 'string' | 'strings' | 'boolean';
}

export type Parsed<S extends FlagSpec> = {
  [K in keyof S]?: S[K] extends 'strings' ? string[] : S[K] extends 'boolean' ? boolean : string;
} & { _: string[] };

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export function parseArgs<S extends FlagSpec>(argv: string[], spec: S): Parsed<S> {
  const out: Record<string, unknown> = { _: [] as string[] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      (out._ as string[]).push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('--')) {
      (out._ as string[]).push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const kind = spec[name];
    if (!kind) throw new UsageError(`unknown option --${name} (known: ${Object.keys(spec).map((k) => '--' + k).join(' ')})`);
    if (kind === 'boolean') {
      out[name] = eq < 0 ? true : arg.slice(eq + 1) !== 'false';
      continue;
    }
    const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new UsageError(`--${name} needs a value`);
    if (kind === 'strings') ((out[name] ??= []) as string[]).push(value);
    else out[name] = value;
  }
  return out as Parsed<S>;
}
