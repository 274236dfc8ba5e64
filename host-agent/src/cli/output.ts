/**
 * Printing: aligned tables for people, JSON for machines, one-line errors.
 * Every --json prints exactly one JSON document on one line, with camelCase
 * field names (README: "JSON output").
 */
import { isThinrelayError, errorMessage } from '../errors.js';

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + '\n');
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
        : typeof c === 'object'
          ? JSON.stringify(c)
          : String(c as string | number | boolean),
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

/** The one line an operator reads: what failed, why (with the reason code), what to do. */
export function formatError(what: string, err: unknown): string {
  if (isThinrelayError(err)) {
    return `thinrelay: ${what}: [${err.code}] ${err.message}${err.hint === undefined ? '' : ` — ${err.hint}`}`;
  }
  return `thinrelay: ${what}: ${errorMessage(err)} (unexpected; THINRELAY_DEBUG=1 prints the stack)`;
}
