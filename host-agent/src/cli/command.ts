/** The shape of a CLI command and what every command gets. */
import type { ParseArgsConfig } from 'node:util';
import { loadConfig, type AgentConfig } from '../config.js';
import { UsageError } from '../errors.js';
import { createLogger, jsonLineSink, type Logger, type LogLevel } from '../log.js';
import { openRuntime, type Runtime, type RuntimeOptions } from '../runtime.js';
import { printable } from './output.js';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

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
  run(ctx: CommandContext): Promise<number>;
}

export const globalOptions: OptionSpec = {
  'state-dir': { type: 'string' },
  backend: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

export const globalUsage = `Global options:
  --state-dir DIR   state directory (THINRELAY_STATE_DIR, default /var/lib/thinrelay)
  --backend NAME    loop | devmapper (THINRELAY_BACKEND, default loop)
  --json            machine-readable output
  -h, --help        this help`;

function stderrLogger(): Logger {
  const level =
    (process.env.THINRELAY_LOG_LEVEL as LogLevel | undefined) ??
    (process.stderr.isTTY ? 'warn' : 'info');
  if (process.stderr.isTTY) {
    // People at a terminal get short lines, not JSON.
    return createLogger(({ level: lvl, msg, time, ...fields }) => {
      const extra = Object.entries(fields).map(
        ([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`,
      );
      process.stderr.write(printable(`${lvl}: ${msg} ${extra.join(' ')}`) + '\n');
    }, level);
  }
  return createLogger(
    jsonLineSink((line) => process.stderr.write(line + '\n')),
    level,
  );
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
  if (v === undefined) throw new UsageError('USAGE', `missing ${what}`, `usage: ${usage}`);
  return v;
}
