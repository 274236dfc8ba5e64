/**
 * A tiny structured logger. Library code only ever calls log.*; the CLI picks
 * the sink: JSON lines for machines, short text lines for a terminal, and
 * JSON lines with syslog priority prefixes (`<3>` …) when stderr is the
 * journal, so `journalctl -p err` shows the errors.
 */
import { fstatSync } from 'node:fs';

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

/** Longer string fields are cut (with their length): a 250 KB S3 key must not fill the log. */
export const maxFieldChars = 1024;

function bounded(fields: LogFields | undefined): LogFields | undefined {
  if (fields === undefined) return undefined;
  let out: LogFields | undefined;
  for (const [k, v] of Object.entries(fields)) {
    if (typeof v !== 'string' || v.length <= maxFieldChars) continue;
    out ??= { ...fields };
    out[k] = `${v.slice(0, maxFieldChars)}…(${v.length} chars)`;
  }
  return out ?? fields;
}

/** Syslog priorities journald reads from a `<N>` line prefix (SyslogLevelPrefix=yes, the default). */
export const journalPriority: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };

/** JOURNAL_STREAM names the device:inode of the journal stream systemd connected to fds 1/2. */
export function isJournalStream(fd: number, env: NodeJS.ProcessEnv = process.env): boolean {
  const stream = env.JOURNAL_STREAM;
  if (stream === undefined || stream === '') return false;
  try {
    const st = fstatSync(fd);
    return stream === `${st.dev}:${st.ino}`;
  } catch {
    return false;
  }
}

/** JSON lines, each prefixed with its journald priority. */
export function journalLineSink(write: (line: string) => void): LogSink {
  return (record) => write(`<${journalPriority[record.level]}>${JSON.stringify(record)}`);
}

/** Short `level: msg k=v` lines for people at a terminal. */
export function textLineSink(write: (line: string) => void): LogSink {
  return ({ level, msg, time: _time, ...fields }) => {
    const extra = Object.entries(fields).map(
      ([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`,
    );
    write(`${level}: ${msg} ${extra.join(' ')}`.trimEnd());
  };
}

/** The sink for a process's stderr: text on a terminal, prefixed JSON to the journal, else JSON. */
export function stderrSink(
  stream: NodeJS.WriteStream & { fd?: number },
  /** Makes text lines safe for a terminal (control characters escaped). */
  printable: (text: string) => string = (t) => t,
): LogSink {
  const write = (line: string): void => void stream.write(line + '\n');
  if (stream.isTTY) return textLineSink((line) => write(printable(line)));
  if (isJournalStream(stream.fd ?? 2)) return journalLineSink(write);
  return jsonLineSink(write);
}

export function createLogger(
  sink: LogSink | null,
  level: LogLevel = 'info',
  base: LogFields = {},
): Logger {
  const emit = (lvl: LogLevel, msg: string, fields?: LogFields): void => {
    if (sink === null || rank[lvl] < rank[level]) return;
    sink({ ...bounded(base), ...bounded(fields), time: new Date().toISOString(), level: lvl, msg });
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

/**
 * One argument the SDK passed to its logger as text. Its logger middleware
 * passes objects (`{clientName, commandName, input, error, metadata}`):
 * String() of those is "[object Object]", which says nothing.
 */
export function sdkLogText(value: unknown): string {
  if (value instanceof Error) return `${value.name}: ${value.message}`;
  if (typeof value !== 'object' || value === null) return String(value);
  const o = value as Record<string, unknown>;
  if ('commandName' in o || 'error' in o) {
    // The input is left out: it may hold message bodies or keys of any length.
    const err = o.error instanceof Error ? sdkLogText(o.error) : undefined;
    return [o.clientName, o.commandName, err].filter((p) => typeof p === 'string').join(' ');
  }
  try {
    return JSON.stringify(value) ?? Object.prototype.toString.call(value);
  } catch {
    return Object.prototype.toString.call(value); // a cycle
  }
}

/**
 * The AWS SDK's logger interface, forwarding warnings and errors into ours
 * (a client without one prints plain text to the console, which breaks a
 * JSON-lines log), each distinct text once: the SDK repeats some on every
 * request (e.g. a queue URL whose host differs from AWS_ENDPOINT_URL_SQS).
 */
export function sdkLogger(logger: Logger): {
  debug(...content: unknown[]): void;
  info(...content: unknown[]): void;
  warn(...content: unknown[]): void;
  error(...content: unknown[]): void;
} {
  const seen = new Set<string>();
  const once = (level: LogLevel, content: unknown[]): void => {
    const text = content.map(sdkLogText).join(' ');
    if (seen.has(text)) return;
    if (seen.size < 100) seen.add(text);
    logger[level]('AWS SDK ' + level, { detail: text.trim() });
  };
  /**
   * The SDK's logger middleware reports every failed command at error level,
   * but the caller gets the same error thrown and decides what it means: a
   * GetQueueUrl answering QueueDoesNotExist at first start (the agent then
   * creates the queue), a long poll aborted by a drain. Those are not errors;
   * the caller logs the ones that are, with their context. So they go to debug.
   */
  const isCommandFailure = (content: unknown[]): boolean =>
    content.some((c) => typeof c === 'object' && c !== null && 'commandName' in c);
  return {
    debug: () => undefined,
    info: () => undefined,
    warn: (...content) => once('warn', content),
    error: (...content) => once(isCommandFailure(content) ? 'debug' : 'error', content),
  };
}
