/** Help text (main and per command, from each command's option docs) and did-you-mean. */
import { UsageError } from '../errors.js';
import { usageHint } from './output.js';
import {
  globalDocs,
  globalOptions,
  type Command,
  type OptionDoc,
  type OptionSpec,
} from './command.js';

/** Marks an option without docs; a test keeps every shipped option documented. */
export const undocumented = '(undocumented)';

export function mainHelp(commands: readonly Command[]): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    'thinrelay — S3 image tarballs become ready-to-boot block devices on this host',
    '',
    'Usage: thinrelay [global options] COMMAND [options] [arguments]',
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    `  ${'help'.padEnd(width)}  help COMMAND: its options, variables, defaults and examples`,
    `  ${'version'.padEnd(width)}  print the version`,
    '',
    'Global options (before or after the command):',
    ...optionLines(globalOptions, globalDocs),
    '',
    'Settings: flags win over the environment, which wins over the settings file',
    '(/etc/thinrelay/agent.env, or --config / THINRELAY_CONFIG_FILE), then defaults.',
    "S3 and SQS access is the AWS SDK's own: credentials chain, AWS_REGION, AWS_ENDPOINT_URL_S3.",
    'Exit codes: 0 done, 1 image failed, 2 usage, 3 host not ready, 4 not found,',
    '75 temporary (retry later), 124 timeout, 130 SIGINT, 143 SIGTERM.',
    "Run `thinrelay help COMMAND` for a command's options.",
  ].join('\n');
}

function optionLines(spec: OptionSpec, docs: Record<string, OptionDoc> | undefined): string[] {
  const rows = Object.entries(spec).map(([name, o]) => {
    const doc = docs?.[name];
    const flag =
      (o.short === undefined ? '    ' : `-${o.short}, `) +
      `--${name}` +
      (o.type === 'string' ? ` ${doc?.arg ?? 'VALUE'}` : '');
    const extra = [
      doc?.env === undefined ? undefined : `env ${doc.env}`,
      doc?.default === undefined ? undefined : `default ${doc.default}`,
    ].filter((x) => x !== undefined);
    const text = (doc?.text ?? undocumented) + (extra.length > 0 ? ` [${extra.join('; ')}]` : '');
    return [flag, text] as const;
  });
  const width = Math.max(0, ...rows.map(([f]) => f.length));
  return rows.map(([f, t]) => `  ${f.padEnd(width)}  ${t}`);
}

export function commandHelp(c: Command): string {
  const own = Object.keys(c.options).length > 0;
  return [
    `thinrelay ${c.name} — ${c.summary}`,
    '',
    `Usage: ${c.usage}`,
    ...(own ? ['', 'Options:', ...optionLines(c.options, c.optionDocs)] : []),
    '',
    'Global options:',
    ...optionLines(globalOptions, globalDocs),
    ...(c.examples === undefined || c.examples.length === 0
      ? []
      : ['', 'Examples:', ...c.examples.map((e) => `  ${e}`)]),
  ].join('\n');
}

/**
 * Bare words in `usage` after the command name, per form (forms are
 * separated by ` | ` or a new line): the most positionals it takes.
 */
export function maxPositionalsOf(c: Command): number {
  if (c.maxPositionals !== undefined) return c.maxPositionals;
  let max = 0;
  for (const form of c.usage.split(/\n| \| /)) {
    const words = form.trim().split(/\s+/);
    if (words[0] === 'thinrelay') words.shift();
    if (words[0] === c.name) words.shift();
    let n = 0;
    let afterOption = false;
    for (const w of words) {
      if (w === '|' || w === '') continue;
      const bare = w.replace(/^\[+/, '');
      if (bare.startsWith('-')) {
        afterOption = !w.endsWith(']');
        continue;
      }
      if (!afterOption) n++;
      afterOption = false;
    }
    max = Math.max(max, n);
  }
  return max;
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

/** The closest candidate within a third of the word's length (at least 1, at most 3 edits), or a unique prefix match. */
export function didYouMean(word: string, candidates: readonly string[]): string | undefined {
  const limit = Math.min(3, Math.max(1, Math.floor(word.length / 3)));
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = distance(word, c);
    if (d < bestD) [best, bestD] = [c, d];
  }
  if (best !== undefined && bestD <= limit) return best;
  const prefixed = candidates.filter((c) => c.startsWith(word));
  return word.length >= 2 && prefixed.length === 1 ? prefixed[0] : undefined;
}

/**
 * A missing or mistyped subcommand (`fleet stauts`, `agent deregistr`): a
 * usage error with a did-you-mean among the command's subcommands and its usage.
 */
export function unknownSubcommand(
  command: Pick<Command, 'name' | 'usage'>,
  sub: string | undefined,
  subcommands: readonly string[],
): UsageError {
  if (sub === undefined)
    return new UsageError('USAGE', 'missing subcommand', usageHint(command.usage));
  const guess = didYouMean(sub, subcommands);
  return new UsageError(
    'USAGE',
    `unknown ${command.name} subcommand "${sub}"`,
    `${guess === undefined ? '' : `did you mean "${guess}"? `}${usageHint(command.usage)}`,
  );
}
