/**
 * Printing: aligned tables for people, JSON for machines, one-line errors.
 * Every --json prints exactly one JSON document on one line, with camelCase
 * field names (docs/operating-a-host.md: "JSON output").
 */
import { ExitCode, isThinrelayError, errorMessage } from '../errors.js';
import { databaseError } from '../store/db-errors.js';
import { toolFailure } from '../sys/exec.js';
import { normalizeETag } from '../../../schema/etag.js';

/**
 * Text from outside (S3 keys, archive member names, error messages quoting
 * them) made safe for a terminal: control characters (C0, DEL, C1) and
 * bidirectional overrides are shown escaped, never interpreted.
 */
export function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, (c) => {
    const n = c.codePointAt(0)!;
    return n <= 0xff
      ? `\\x${n.toString(16).padStart(2, '0')}`
      : `\\u${n.toString(16).padStart(4, '0')}`;
  });
}

/**
 * JSON for scripts, one convention in every document (docs/operating-a-host.md "JSON output"):
 * an ETag is the field `etag`, its value without S3's quotes (as events and
 * the fleet table carry it), so one script reads `images`, `fleet` and `dlq`
 * output alike and can pass the value to `--etag`.
 */
export function forScripts(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(forScripts);
  if (value === null || typeof value !== 'object') return value;
  const proto = Object.getPrototypeOf(value) as unknown;
  if (proto !== Object.prototype && proto !== null) return value;
  return Object.fromEntries(
    Object.entries(value).map(([k, v]) => {
      const key = k === 'eTag' ? 'etag' : k;
      return [key, key === 'etag' && typeof v === 'string' ? normalizeETag(v) : forScripts(v)];
    }),
  );
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(forScripts(value)) + '\n');
}

/**
 * What a command's thrown error means to the CLI: the error it reports (a
 * state-database fault or a failed system tool is the host's, never "the
 * image failed": exit 3, or 75 when busy) and the exit code. main uses it for
 * every command; the daemon's Activation service uses it to send a failure
 * back as the CLI would have reported it.
 */
export function failureOf(thrown: unknown, stateDir: string): { err: unknown; exitCode: number } {
  const err = databaseError(thrown, stateDir) ?? toolFailure(thrown) ?? thrown;
  return { err, exitCode: isThinrelayError(err) ? err.exitCode : ExitCode.imageFailed };
}

/** Under --json an error is also a document on stdout (the one line still goes to stderr). */
export function errorJson(err: unknown, exitCode: number): Record<string, unknown> {
  return isThinrelayError(err)
    ? { error: { code: err.code, message: err.message, hint: err.hint ?? null }, exitCode }
    : {
        error: {
          code: null,
          message: errorMessage(err),
          hint: 'unexpected; THINRELAY_DEBUG=1 prints the stack',
        },
        exitCode,
      };
}

/** snake_case → camelCase. */
export function camelName(name: string): string {
  return name.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** A database row with camelCase field names (the store's columns are snake_case). */
export function camelKeys<T extends object>(row: T): Record<string, unknown> {
  return Object.fromEntries(Object.entries(row).map(([k, v]) => [camelName(k), v as unknown]));
}

export function printTable(
  headers: readonly string[],
  rows: readonly (readonly unknown[])[],
): void {
  const cells = rows.map((r) =>
    r.map((c) =>
      c === null || c === undefined
        ? '-'
        : printable(
            typeof c === 'object' ? JSON.stringify(c) : String(c as string | number | boolean),
          ),
    ),
  );
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]?.length ?? 0)));
  const line = (r: readonly string[]): string =>
    r
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  const out = [line(headers), ...cells.map(line)];
  process.stdout.write(out.join('\n') + '\n');
}

export function formatBytes(n: number | null): string {
  if (n === null) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(1)} ${units[u]}`;
}

/**
 * A command's usage as an error hint: one line, as every error is (a usage
 * of several lines would print its newlines escaped). Forms are joined by
 * ` | `; a parenthesised note line follows its form.
 */
export function usageHint(usage: string): string {
  const lines = usage
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
  return `usage: ${lines.reduce((acc, l) => (l.startsWith('(') ? `${acc} ${l}` : `${acc} | ${l}`))}`;
}

/** The one line an operator reads: what failed, why (with the reason code), what to do. */
export function formatError(what: string, err: unknown): string {
  if (isThinrelayError(err)) {
    return printable(
      `thinrelay: ${what}: [${err.code}] ${err.message}${err.hint === undefined ? '' : ` — ${err.hint}`}`,
    );
  }
  return printable(
    `thinrelay: ${what}: ${errorMessage(err)} (unexpected; THINRELAY_DEBUG=1 prints the stack)`,
  );
}
