/** The shape of a CLI command and what every command gets. */
import type { ParseArgsConfig } from 'node:util';
import { loadConfig, type AgentConfig } from '../config.js';
import { UsageError } from '../errors.js';
import { createLogger, stderrSink, type Logger, type LogLevel } from '../log.js';
import { openRuntime, type Runtime, type RuntimeOptions } from '../runtime.js';
import { printable, usageHint } from './output.js';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

/** What `help COMMAND` says about one option. */
export interface OptionDoc {
  /** What it does, in a few words. */
  text: string;
  /** The value's placeholder in help (string options), e.g. KEY. */
  arg?: string;
  /** The environment variable that sets it when the flag is absent. */
  env?: string;
  /** The value used when neither flag nor variable is given. */
  default?: string;
}

export interface CommandContext {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
  json: boolean;
  config(): AgentConfig;
  logger: Logger;
  /** Open store and backend; closed by main when the command ends. */
  runtime(extra?: Omit<RuntimeOptions, 'config' | 'logger'>): Runtime;
}

export interface Command {
  name: string;
  summary: string;
  usage: string;
  options: OptionSpec;
  /** Help text per option (key: the option's name); `help COMMAND` prints them. */
  optionDocs?: Record<string, OptionDoc>;
  /** Command lines that work as written; `help COMMAND` prints them. */
  examples?: readonly string[];
  /**
   * How many positional arguments the command takes at most (more is a usage
   * error). Absent: counted from `usage` (bare words after the command name).
   */
  maxPositionals?: number;
  run(ctx: CommandContext): Promise<number>;
}

export const globalOptions: OptionSpec = {
  'state-dir': { type: 'string' },
  backend: { type: 'string' },
  config: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
};

export const globalDocs: Record<string, OptionDoc> = {
  'state-dir': {
    text: 'state directory (database, pool files, mountpoints)',
    arg: 'DIR',
    env: 'THINRELAY_STATE_DIR',
    default: '/var/lib/thinrelay',
  },
  backend: {
    text: 'storage backend: loop or devmapper',
    arg: 'NAME',
    env: 'THINRELAY_BACKEND',
    default: 'loop',
  },
  config: {
    text: 'settings file (KEY=VALUE lines, as the systemd unit reads it); "none" skips it',
    arg: 'FILE',
    env: 'THINRELAY_CONFIG_FILE',
    default: '/etc/thinrelay/agent.env',
  },
  json: { text: 'print one JSON document (camelCase fields) on stdout instead of text' },
  help: { text: 'print help (also: thinrelay help COMMAND)' },
  version: { text: 'print the version (also: thinrelay version)' },
};

function stderrLogger(): Logger {
  const level =
    (process.env.THINRELAY_LOG_LEVEL as LogLevel | undefined) ??
    (process.stderr.isTTY ? 'warn' : 'info');
  return createLogger(stderrSink(process.stderr, printable), level);
}

export function makeContext(
  values: CommandContext['values'],
  positionals: string[],
): CommandContext & { close(): void } {
  let config: AgentConfig | undefined;
  const opened: Runtime[] = [];
  const logger = stderrLogger();
  const ctx = {
    values,
    positionals,
    json: values.json === true,
    logger,
    config(): AgentConfig {
      config ??= loadConfig({
        stateDir: values['state-dir'] as string | undefined,
        bucket: values.bucket as string | undefined,
        backend: values.backend as string | undefined,
      });
      return config;
    },
    runtime(extra: Omit<RuntimeOptions, 'config' | 'logger'> = {}): Runtime {
      const rt = openRuntime({ config: ctx.config(), logger, ...extra });
      opened.push(rt);
      return rt;
    },
    close(): void {
      for (const rt of opened) rt.close();
    },
  };
  return ctx;
}

export function requirePositional(ctx: CommandContext, what: string, usage: string): string {
  const v = ctx.positionals[0];
  if (v === undefined) throw new UsageError('USAGE', `missing ${what}`, usageHint(usage));
  return v;
}
