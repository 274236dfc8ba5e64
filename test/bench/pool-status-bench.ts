/**
 * What counting shared extents once costs `thinrelay pool status` on a loop
 * pool on xfs: 20 volumes, one fragmented origin (every other 4 KiB block
 * written: `extents` extents) and 19 reflink copies of it, each with 200 KiB
 * rewritten. Side by side: the built CLI's `pool status --json` (a cold
 * process, FIEMAP read with filefrag), `du -s` of the pool (what an operator
 * would otherwise run: fast, but every shared extent counted in every file),
 * and `filefrag -v -e` alone over the same files (the kernel's FIEMAP work),
 * as ratios; and the same CLI on an empty pool (process start-up alone).
 *
 * Run: npm run build && node dist/test/bench/pool-status-bench.js [extents per file...]
 * Figures, not assertions (but pool status must see the sharing). The xfs
 * image and its loop device are released on every way out.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, writeSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { cliPath } from '../helpers/cli.js';

const counts = process.argv.slice(2).map(Number);
const extentCounts = counts.length > 0 ? counts : [1000, 4000, 32000];
const files = 20;
const reps = 5;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Median wall time of `file args` in ms, its output discarded. */
function timed(file: string, args: string[]): number {
  const ms: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    execFileSync(file, args, { stdio: ['ignore', 'ignore', 'inherit'], maxBuffer: 1 << 30 });
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

const work = mkdtempSync(join(tmpdir(), 'thinrelay-poolstatus-bench-'));
const mnt = join(work, 'mnt');
const rows: Record<string, number | string>[] = [];
let mounted = false;
try {
  const img = join(work, 'xfs.img');
  mkdirSync(mnt);
  execFileSync('truncate', ['-s', '8G', img]);
  execFileSync('mkfs.xfs', ['-q', '-m', 'reflink=1', img]);
  execFileSync('mount', ['-o', 'loop', img, mnt]);
  mounted = true;
  for (const extents of extentCounts) {
    const stateDir = join(mnt, `state-${extents}`);
    const pool = join(stateDir, 'pool');
    mkdirSync(pool, { recursive: true });
    const origin = join(pool, 'vol-00000001.img');
    const fd = openSync(origin, 'w');
    const block = randomBytes(4096);
    ftruncateSync(fd, extents * 8192);
    for (let i = 0; i < extents; i++) writeSync(fd, block, 0, 4096, i * 8192);
    closeSync(fd);
    const paths = [origin];
    for (let n = 2; n <= files; n++) {
      const copy = join(pool, `vol-${String(n).padStart(8, '0')}.img`);
      execFileSync('cp', ['--reflink=auto', '--sparse=always', origin, copy]);
      const c = openSync(copy, 'r+');
      writeSync(c, randomBytes(200 * 1024), 0, 200 * 1024, (n * 64 * 1024) % (extents * 8192));
      closeSync(c);
      paths.push(copy);
    }
    execFileSync('sync', ['-f', mnt]);
    const cli = [cliPath, 'pool', 'status', '--json', '--state-dir', stateDir];
    const status = JSON.parse(execFileSync(process.execPath, cli, { encoding: 'utf8' })) as {
      dataUsedBytes: number;
      dataReferencedBytes: number;
    };
    if (status.dataUsedBytes * 4 > status.dataReferencedBytes)
      throw new Error(`pool status missed the sharing: ${JSON.stringify(status)}`);
    const statusMs = timed(process.execPath, cli);
    const duMs = timed('du', ['-s', pool]);
    const filefragMs = timed('filefrag', ['-v', '-e', ...paths]);
    rows.push({
      extentsPerFile: extents,
      files,
      usedMiB: +(status.dataUsedBytes / 2 ** 20).toFixed(1),
      referencedMiB: +(status.dataReferencedBytes / 2 ** 20).toFixed(1),
      poolStatusMs: Math.round(statusMs),
      duMs: +duMs.toFixed(1),
      filefragMs: Math.round(filefragMs),
      poolStatusOverDu: +(statusMs / duMs).toFixed(1),
      poolStatusOverFilefrag: +(statusMs / filefragMs).toFixed(2),
    });
    execFileSync('rm', ['-rf', stateDir]);
  }
  const empty = join(mnt, 'state-empty');
  mkdirSync(join(empty, 'pool'), { recursive: true });
  const startMs = timed(process.execPath, [
    cliPath,
    'pool',
    'status',
    '--json',
    '--state-dir',
    empty,
  ]);
  console.table(rows);
  console.log(
    JSON.stringify({
      emptyPoolStatusMs: Math.round(startMs),
      machine: `${cpus().length} cores`,
      loadAverage: loadavg().map((l) => +l.toFixed(2)),
    }),
  );
} finally {
  if (mounted) execFileSync('umount', [mnt]);
  execFileSync('rm', ['-rf', work]);
}
