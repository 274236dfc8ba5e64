#!/usr/bin/env node
/**
 * thinrelay: the host agent's command line. Exit codes: 0 done (also
 * "already done"), 1 the image failed (reason recorded), 2 usage or
 * configuration error, 3 host not ready. Expected failures print one line.
 */
import nodeModule from 'node:module';
import { parseArgs } from 'node:util';
import { ExitCode, UsageError, isThinrelayError } from '../errors.js';
import { globalOptions, globalUsage, makeContext, type Command } from './command.js';
import { agentCommand } from './commands/agent.js';
import { dlqCommand, redriveCommand } from './commands/dlq.js';
import { fleetCommand } from './commands/fleet.js';
import { imagesCommand, snapshotsCommand, failedCommand } from './commands/listings.js';
import { gcCommand, doctorCommand, stateCommand } from './commands/maintenance.js';
import { poolCommand } from './commands/pool.js';
import { processImageCommand } from './commands/process-image.js';
import { showCommand } from './commands/show.js';
import { activateCommand, deactivateCommand, removeCommand } from './commands/snapshot-ops.js';
import { formatError } from './output.js';
import { databaseError } from '../store/db-errors.js';

function stateDirOf(ctx: { config(): { stateDir: string } } | undefined): string {
  try {
    return ctx?.config().stateDir ?? 'the state dir';
  } catch {
    return 'the state dir';
  }
}

const commands: readonly Command[] = [
  processImageCommand,
  agentCommand,
  imagesCommand,
  snapshotsCommand,
  showCommand,
  failedCommand,
  activateCommand,
  deactivateCommand,
  removeCommand,
  gcCommand,
  doctorCommand,
  poolCommand,
  stateCommand,
  redriveCommand,
  dlqCommand,
  fleetCommand,
];

function mainHelp(): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    'thinrelay — S3 image tarballs become ready-to-boot block devices on this host',
    '',
    'Usage: thinrelay COMMAND [options]',
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    globalUsage,
    '',
    "S3 access is the AWS SDK's own: credentials chain, AWS_REGION, AWS_ENDPOINT_URL_S3.",
    "Run `thinrelay COMMAND --help` for a command's options.",
  ].join('\n');
}

function commandHelp(c: Command): string {
  return `${c.summary}\n\nUsage: ${c.usage}\n\n${globalUsage}`;
}

// Node ≥ 22 can cache compiled code across runs (the AWS SDK chunk is most of
// process-image's start-up); on Node 20 this is a no-op.
(nodeModule as { enableCompileCache?: () => unknown }).enableCompileCache?.();

// The SDK's multi-line "future releases need Node 22" notice would break the
// one-line error contract on every run; the lockfile pins the SDK we tested.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(mainHelp() + '\n');
    return name === undefined ? ExitCode.usage : ExitCode.ok;
  }
  const command = commands.find((c) => c.name === name);
  if (command === undefined) {
    process.stderr.write(
      formatError(
        'usage',
        new UsageError('USAGE', `unknown command "${name}"`, 'see `thinrelay --help`'),
      ) + '\n',
    );
    return ExitCode.usage;
  }
  let ctx: ReturnType<typeof makeContext> | undefined;
  try {
    const { values, positionals } = parseArgs({
      args: rest,
      options: { ...globalOptions, ...command.options },
      allowPositionals: true,
      strict: true,
    });
    if (values.help === true) {
      process.stdout.write(commandHelp(command) + '\n');
      return ExitCode.ok;
    }
    ctx = makeContext(values as Record<string, string | boolean | undefined>, positionals);
    return await command.run(ctx);
  } catch (thrown) {
    // A state-database fault is the host's, never "the image failed" (exit 3, or 75 when busy).
    const err = databaseError(thrown, stateDirOf(ctx)) ?? thrown;
    const what =
      command.name === 'process-image' && ctx !== undefined
        ? `process-image ${String(ctx.values['s3-key'] ?? '')}`
        : command.name;
    if ((err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') === true) {
      process.stderr.write(
        formatError(
          what,
          new UsageError('USAGE', (err as Error).message, `usage: ${command.usage}`),
        ) + '\n',
      );
      return ExitCode.usage;
    }
    process.stderr.write(formatError(what, err) + '\n');
    if (process.env.THINRELAY_DEBUG === '1' && err instanceof Error)
      process.stderr.write(`${err.stack}\n`);
    return isThinrelayError(err) ? err.exitCode : ExitCode.imageFailed;
  } finally {
    ctx?.close();
  }
}

process.exitCode = await main(process.argv.slice(2));
