/**
 * thinrelay: the host agent's command line. Parses global options anywhere,
 * finds the command, checks its options and arguments (with a did-you-mean),
 * runs it and turns its error into one line and an exit code (errors.ts
 * ExitCode: 0 done, 1 image failed, 2 usage, 3 host not ready, 4 not found,
 * 75 temporary, 130/143 interrupted).
 */
import { parseArgs } from 'node:util';
import { applySettingsFile } from '../config.js';
import { ExitCode, UsageError } from '../errors.js';
import { isJournalStream, journalPriority } from '../log.js';
import { build, versionLine } from '../version.js';
import { globalOptions, makeContext, type Command } from './command.js';
import { commandHelp, didYouMean, mainHelp, maxPositionalsOf } from './help.js';
import { errorJson, failureOf, formatError, printJson, usageHint } from './output.js';

function stateDirOf(ctx: { config(): { stateDir: string } } | undefined): string {
  try {
    return ctx?.config().stateDir ?? 'the state dir';
  } catch {
    return 'the state dir';
  }
}

/**
 * Each command's module, loaded when that command runs (or when help lists
 * them all): a command never pays for the other commands' imports. In the
 * order help lists them.
 */
const commandModules: Record<string, () => Promise<Command>> = {
  'process-image': async () => (await import('./commands/process-image.js')).processImageCommand,
  agent: async () => (await import('./commands/agent.js')).agentCommand,
  snapshotter: async () => (await import('./commands/snapshotter.js')).snapshotterCommand,
  images: async () => (await import('./commands/listings.js')).imagesCommand,
  snapshots: async () => (await import('./commands/listings.js')).snapshotsCommand,
  show: async () => (await import('./commands/show.js')).showCommand,
  verify: async () => (await import('./commands/verify.js')).verifyCommand,
  config: async () => (await import('./commands/config.js')).configCommand,
  failed: async () => (await import('./commands/listings.js')).failedCommand,
  activate: async () => (await import('./commands/snapshot-ops.js')).activateCommand,
  deactivate: async () => (await import('./commands/snapshot-ops.js')).deactivateCommand,
  remove: async () => (await import('./commands/snapshot-ops.js')).removeCommand,
  pin: async () => (await import('./commands/pins.js')).pinCommand,
  unpin: async () => (await import('./commands/pins.js')).unpinCommand,
  gc: async () => (await import('./commands/maintenance.js')).gcCommand,
  doctor: async () => (await import('./commands/maintenance.js')).doctorCommand,
  pool: async () => (await import('./commands/pool.js')).poolCommand,
  state: async () => (await import('./commands/maintenance.js')).stateCommand,
  redrive: async () => (await import('./commands/dlq.js')).redriveCommand,
  dlq: async () => (await import('./commands/dlq.js')).dlqCommand,
  fleet: async () => (await import('./commands/fleet.js')).fleetCommand,
};
const commandNames = Object.keys(commandModules);

async function loadCommand(name: string): Promise<Command | undefined> {
  const load = Object.hasOwn(commandModules, name) ? commandModules[name] : undefined;
  const command = await load?.();
  // The table's key and the command's own name must agree (help and errors use the latter).
  if (command !== undefined && command.name !== name)
    throw new Error(`command table: "${name}" loads the "${command.name}" command`);
  return command;
}

async function allCommands(): Promise<Command[]> {
  return Promise.all(commandNames.map((n) => commandModules[n]!()));
}

// The SDK's multi-line "future releases need Node 22" notice would break the
// one-line error contract on every run; the lockfile pins the SDK we tested.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/** Global options that take a value: their value is never the command name. */
const globalValued = new Set(
  Object.entries(globalOptions)
    .filter(([, o]) => o.type === 'string')
    .flatMap(([name, o]) => [`--${name}`, ...(o.short === undefined ? [] : [`-${o.short}`])]),
);

/** The command word may come after global options: take it out, keep the rest in order. */
function splitCommand(argv: readonly string[]): { name: string | undefined; rest: string[] } {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (a.startsWith('-')) {
      if (globalValued.has(a)) i++;
      continue;
    }
    return { name: a, rest: [...argv.slice(0, i), ...argv.slice(i + 1)] };
  }
  return { name: undefined, rest: [...argv] };
}

/** The one error line; on the journal it is an error (priority 3), not info. */
function writeError(line: string): void {
  const prefix = isJournalStream(2) ? `<${journalPriority.error}>` : '';
  process.stderr.write(prefix + line + '\n');
}

/** `--json` anywhere before `--` (also when the rest of the line does not parse). */
let jsonWanted = false;

/** The one error line on stderr; under --json also the error document on stdout. */
function reportError(what: string, err: unknown, exitCode: number): number {
  writeError(formatError(what, err));
  if (jsonWanted) printJson(errorJson(err, exitCode));
  return exitCode;
}

function usageError(what: string, message: string, hint: string): number {
  return reportError(what, new UsageError('USAGE', message, hint), ExitCode.usage);
}

/** node:util's parse errors, said the way the rest of the CLI says things. */
function parseErrorMessage(err: Error, known: readonly string[]): [string, string] {
  const opt = /'(-[^' ]+)/.exec(err.message)?.[1];
  const code = (err as { code?: string }).code;
  if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && opt !== undefined) {
    const guess = didYouMean(
      opt.replace(/^-+/, ''),
      known.filter((k) => k.length > 1),
    );
    return [`unknown option ${opt}`, guess === undefined ? '' : `did you mean --${guess}? `];
  }
  if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && opt !== undefined) {
    return /argument missing|ambiguous/.test(err.message)
      ? [`option ${opt} needs a value`, '']
      : [`option ${opt} takes no value`, ''];
  }
  return [err.message, ''];
}

/** The version line, or under --json one document: {version, commit, node, platform}. */
function printVersion(json: boolean): void {
  if (!json) process.stdout.write(versionLine() + '\n');
  else
    printJson({
      version: build.version,
      commit: build.commit,
      node: process.version,
      platform: `${process.platform} ${process.arch}`,
    });
}

function unknownCommand(name: string): number {
  const guess = didYouMean(name, commandNames);
  return usageError(
    'usage',
    `unknown command "${name}"`,
    `${guess === undefined ? '' : `did you mean "${guess}"? `}see \`thinrelay help\``,
  );
}

export async function main(argv: string[]): Promise<number> {
  // `thinrelay -v` alone: what people try first (not a global flag: commands may want -v).
  if (argv.length === 1 && argv[0] === '-v') argv = ['--version'];
  const end = argv.indexOf('--');
  jsonWanted = (end === -1 ? argv : argv.slice(0, end)).includes('--json');
  const { name, rest } = splitCommand(argv);
  const command = name === undefined ? undefined : await loadCommand(name);
  if (name !== undefined && name !== 'help' && name !== 'version' && command === undefined)
    return unknownCommand(name);

  const options = { ...globalOptions, ...command?.options };
  let values: Record<string, string | boolean | undefined>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: rest,
      options,
      allowPositionals: true,
      strict: true,
    }) as { values: Record<string, string | boolean | undefined>; positionals: string[] });
  } catch (err) {
    if ((err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') !== true) throw err;
    const [message, guess] = parseErrorMessage(err as Error, Object.keys(options));
    return usageError(
      command?.name ?? 'usage',
      message,
      `${guess}see \`thinrelay help${command === undefined ? '' : ` ${command.name}`}\``,
    );
  }

  if (name === 'version' || (values.version === true && command === undefined)) {
    printVersion(values.json === true);
    return ExitCode.ok;
  }
  if (name === 'help' || command === undefined) {
    const topic = name === 'help' ? positionals[0] : undefined;
    if (topic === undefined) {
      // Bare `thinrelay` is a usage error (help on stderr); asking for help is not.
      const asked = name === 'help' || values.help === true;
      (asked ? process.stdout : process.stderr).write(mainHelp(await allCommands()) + '\n');
      return asked ? ExitCode.ok : ExitCode.usage;
    }
    const about = await loadCommand(topic);
    if (about === undefined) return unknownCommand(topic);
    process.stdout.write(commandHelp(about) + '\n');
    return ExitCode.ok;
  }
  if (values.help === true) {
    process.stdout.write(commandHelp(command) + '\n');
    return ExitCode.ok;
  }
  if (values.version === true) {
    printVersion(values.json === true);
    return ExitCode.ok;
  }
  const max = maxPositionalsOf(command);
  if (positionals.length > max) {
    return usageError(
      command.name,
      `unexpected argument${positionals.length - max > 1 ? 's' : ''}: ${positionals.slice(max).join(' ')}`,
      usageHint(command.usage),
    );
  }

  let ctx: ReturnType<typeof makeContext> | undefined;
  try {
    applySettingsFile(process.env, values.config as string | undefined);
    ctx = makeContext(values, positionals);
    return await command.run(ctx);
  } catch (thrown) {
    // A state-database fault is the host's, never "the image failed" (exit 3, or 75 when busy).
    const { err, exitCode: code } = failureOf(thrown, stateDirOf(ctx));
    const what =
      command.name === 'process-image'
        ? `process-image ${String(values['s3-key'] ?? '')}`
        : command.name;
    reportError(what, err, code);
    if (process.env.THINRELAY_DEBUG === '1' && err instanceof Error)
      process.stderr.write(`${err.stack}\n`);
    return code;
  } finally {
    ctx?.close();
  }
}

process.exitCode = await main(process.argv.slice(2));
