/**
 * A tiny structured logger. Library code only ever calls log.*; the CLI picks
 * the sink: JSON lines for machines, short text lines for a terminal.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const rank: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type LogFields = Record<string, unknown>;

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  child(fields: LogFields): Logger;
}

export type LogRecord = { time: string; level: LogLevel; msg: string } & LogFields;

export type LogSink = (record: LogRecord) => void;

/** One JSON object per line. */
export function jsonLineSink(write: (line: string) => void): LogSink {
  return (record) => write(JSON.stringify(record));
}

export function createLogger(
  sink: LogSink | null,
  level: LogLevel = 'info',
  base: LogFields = {},
): Logger {
  const emit = (lvl: LogLevel, msg: string, fields?: LogFields): void => {
    if (sink === null || rank[lvl] < rank[level]) return;
    sink({ ...base, ...fields, time: new Date().toISOString(), level: lvl, msg });
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: (fields) => createLogger(sink, level, { ...base, ...fields }),
  };
}

export const silentLogger: Logger = createLogger(null);
