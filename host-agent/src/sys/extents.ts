/**
 * Disk space a set of files takes when reflink copies share blocks: each
 * file's own allocation (st_blocks, what `du` adds up) with the extents
 * FIEMAP flags as shared counted once by physical range. FIEMAP is read with
 * filefrag (e2fsprogs, already needed for mkfs.ext4): Node cannot call an
 * ioctl without a native module. Its output is parsed as it streams, so a
 * pool of heavily fragmented volumes never sits in memory as text.
 */
import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { CommandError, spawnFailure } from './exec.js';

export interface SpaceUsage {
  /** Bytes on disk, shared extents counted once. */
  usedBytes: number;
  /** The sum of every file's own allocation: shared extents counted once per file. */
  referencedBytes: number;
  /** Physical bytes in extents flagged shared (each range once). */
  sharedBytes: number;
}

/** statfs f_type of the filesystems where cp --reflink shares extents between files. */
const reflinkFilesystems = new Set([
  0x58465342, // xfs
  0x9123683e, // btrfs
  0xca451a4e, // bcachefs
  0x7461636f, // ocfs2
]);

export function sharesExtents(statfsType: number): boolean {
  return reflinkFilesystems.has(statfsType);
}

/** Paths per filefrag run: far below ARG_MAX for any path length the pool has. */
const filesPerRun = 256;
const fileHeader = /^File size of (.+) is \d+ \(\d+ blocks? of (\d+) bytes\)$/;
// "   3:     2560..    3327:      16408..     17175:    768:       2584: last,shared"
const extentLine = /^\s*\d+:\s*\d+\.\.\s*\d+:\s*(\d+)\.\.\s*\d+:\s*(\d+):/;

interface SharedExtents {
  /** Physical [start, end) byte ranges, as found (overlapping, unsorted). */
  ranges: [number, number][];
  /** Per file: bytes of its extents flagged shared. */
  perFile: Map<string, number>;
}

/** Runs filefrag -v over `files`, keeping only the extents flagged shared. */
async function readSharedExtents(files: readonly string[], into: SharedExtents): Promise<void> {
  const args = ['-v', '-e', '--', ...files];
  const child = spawn('filefrag', args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, LC_ALL: 'C' },
    timeout: 120_000,
  });
  const ended = new Promise<{ code: number | null; error?: Error }>((resolve) => {
    child.once('error', (e) => resolve({ code: null, error: spawnFailure(e, 'filefrag', args) }));
    child.once('close', (code) => resolve({ code }));
  });
  const stderr: string[] = [];
  child.stderr.setEncoding('utf8').on('data', (c: string) => stderr.push(c));
  let file: string | undefined;
  let unit = 0;
  let filesRead = 0;
  for await (const line of createInterface({ input: child.stdout, crlfDelay: Infinity })) {
    if (line.startsWith('File size of ')) {
      const m = fileHeader.exec(line);
      file = m?.[1];
      unit = m === null ? 0 : Number(m[2]);
      filesRead++;
      continue;
    }
    // unknown_loc (delalloc) extents have no physical place yet: never shared.
    if (file === undefined || !line.includes('shared') || line.includes('unknown_loc')) continue;
    const m = extentLine.exec(line);
    if (m === null) continue;
    const start = Number(m[1]) * unit;
    const length = Number(m[2]) * unit;
    into.ranges.push([start, start + length]);
    into.perFile.set(file, (into.perFile.get(file) ?? 0) + length);
  }
  const { code, error } = await ended;
  if (error !== undefined) throw error;
  // A file removed since it was listed fails alone (exit 1): the others were
  // read. A killed run (the timeout) read only some: never a figure.
  if (code === null || (code !== 0 && filesRead === 0)) {
    throw new CommandError(`filefrag -v -e (${files.length} files)`, code, stderr.join(''));
  }
}

/** Length of the union of [start, end) ranges (sorts them in place). */
export function unionLength(ranges: [number, number][]): number {
  ranges.sort((a, b) => a[0] - b[0]);
  let total = 0;
  let end = -1;
  for (const [s, e] of ranges) {
    if (s >= end) {
      total += e - s;
      end = e;
    } else if (e > end) {
      total += e - end;
      end = e;
    }
  }
  return total;
}

/**
 * What `files` take on disk. With `shared` false (a filesystem without
 * reflinks) only st_blocks is read; otherwise files whose extents FIEMAP
 * flags as shared have those extents counted once across all files.
 * Files removed meanwhile count nothing.
 */
export async function spaceUsage(files: readonly string[], shared: boolean): Promise<SpaceUsage> {
  const allocated = new Map<string, number>();
  for (const f of files) {
    try {
      allocated.set(f, statSync(f).blocks * 512);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  let referencedBytes = 0;
  for (const bytes of allocated.values()) referencedBytes += bytes;
  if (!shared || allocated.size === 0)
    return { usedBytes: referencedBytes, referencedBytes, sharedBytes: 0 };
  const found: SharedExtents = { ranges: [], perFile: new Map() };
  const names = [...allocated.keys()];
  for (let i = 0; i < names.length; i += filesPerRun)
    await readSharedExtents(names.slice(i, i + filesPerRun), found);
  const sharedBytes = unionLength(found.ranges);
  let usedBytes = sharedBytes;
  for (const [f, bytes] of allocated) usedBytes += Math.max(0, bytes - (found.perFile.get(f) ?? 0));
  return { usedBytes, referencedBytes, sharedBytes };
}
