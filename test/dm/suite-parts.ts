/**
 * Which part of a long dm test file this guest runs. scripts/test-dm/run.sh
 * cuts the long files into parts (scripts/test-dm/durations.txt) and spreads
 * them over its two guests so both finish together; each guest learns its
 * parts from THINRELAY_DM_PARTS, e.g.
 *   THINRELAY_DM_PARTS='dm-crash.test.js=2,4,6,8,10/10 dm-lifecycle.test.js=1,3/3'
 * A file's units (its top-level describes, in order; the kill -9 sweep's crash
 * points) are numbered from 0, and unit i belongs to part (i mod n) + 1. A file
 * the variable does not name runs whole; a unit outside this guest's parts is
 * not registered at all (it runs, and is reported, in the other guest).
 */
import { describe } from 'node:test';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface FileParts {
  /** The parts (1-based) this guest runs. */
  parts: number[];
  /** How many parts the file is cut into. */
  of: number;
}

/** The parts of `file` (a test file's base name) that THINRELAY_DM_PARTS gives; null = all of it. */
export function partsOf(
  file: string,
  spec = process.env.THINRELAY_DM_PARTS ?? '',
): FileParts | null {
  for (const item of spec.split(/\s+/).filter((s) => s !== '')) {
    const m = /^([^=]+)=(\d+(?:,\d+)*)\/(\d+)$/.exec(item);
    if (m === null)
      throw new Error(
        `THINRELAY_DM_PARTS items must look like dm-crash.test.js=1,3/10, got '${item}'`,
      );
    if (m[1] !== file) continue;
    const of = Number(m[3]);
    const parts = m[2]!.split(',').map(Number);
    if (of < 1 || parts.some((k) => k < 1 || k > of))
      throw new Error(`THINRELAY_DM_PARTS: parts of ${file} must be 1..${of}, got '${item}'`);
    return { parts, of };
  }
  return null;
}

/** Whether unit `index` (0-based) of a file is in this guest's parts. */
export function inParts(parts: FileParts | null, index: number): boolean {
  return parts === null || parts.parts.includes((index % parts.of) + 1);
}

/**
 * `describe` for the top-level describes of the test file at `moduleUrl`
 * (import.meta.url): the n-th call is unit n - 1, registered only in its part.
 */
export function partDescribe(moduleUrl: string): typeof describe {
  const parts = partsOf(basename(fileURLToPath(moduleUrl)));
  let next = 0;
  return ((...args: Parameters<typeof describe>) => {
    const index = next++;
    if (!inParts(parts, index)) return Promise.resolve();
    return describe(...args);
  }) as typeof describe;
}
