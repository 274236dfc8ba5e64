/**
 * The snapshots API on the loop backend, on the host, through the socket:
 * a standalone `thinrelay snapshotter` on a state dir on a fresh xfs (reflink)
 * loop filesystem serves Prepare + Mounts of a committed parent (a layer of
 * real files written through the API, as containerd's unpacker does), side by
 * side with the bare path (`cp --reflink=auto --sparse=always` (as thinrelay runs it) of the parent's volume
 * file + `losetup`): one at a time (median), and N at once (first, p50, p99,
 * last, spread), as ratios. The xfs image, its loop device, the service and
 * its socket are released on every way out.
 *
 * Run: npm run bench:snapshotter (as root). `loopRows()` is the loop part;
 * the UML devmapper rows are measured elsewhere and printed beside these.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { cliPath } from '../helpers/cli.js';
import { smallFilesystem } from '../helpers/small-fs.js';
import { snapshotsClient, type WireMount } from '../helpers/snapshots-client.js';

const run = promisify(execFile);
const chainId = `sha256:${'cd'.repeat(32)}`;

export interface LoopBenchOptions {
  /** Single Prepare + Mounts repetitions (median). */
  reps: number;
  /** Prepares at once. */
  concurrent: number;
  /** Rounds of the concurrent burst (the median round by p99 is reported). */
  rounds: number;
}

export interface Burst {
  firstMs: number;
  p50Ms: number;
  p99Ms: number;
  lastMs: number;
  spreadMs: number;
}

export interface LoopRows {
  singleMs: number;
  singleBareMs: number;
  singleRatio: number;
  burst: Burst;
  burstBare: Burst;
  p99Ratio: number;
  spreadRatio: number;
  concurrent: number;
  machine: string;
  loadAverage: { before: number[]; after: number[] };
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Nearest-rank percentile of completion times. */
function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

function burstOf(doneMs: number[]): Burst {
  const s = [...doneMs].sort((a, b) => a - b);
  const r = (x: number): number => +x.toFixed(1);
  return {
    firstMs: r(s[0]!),
    p50Ms: r(percentile(s, 50)),
    p99Ms: r(percentile(s, 99)),
    lastMs: r(s.at(-1)!),
    spreadMs: r(s.at(-1)! - s[0]!),
  };
}

/** The middle round by p99. */
const middleRound = (rounds: Burst[]): Burst =>
  [...rounds].sort((a, b) => a.p99Ms - b.p99Ms)[Math.floor(rounds.length / 2)]!;

export async function loopRows(o: LoopBenchOptions): Promise<LoopRows> {
  const work = mkdtempSync(join(tmpdir(), 'thinrelay-snapbench-'));
  const socket = join(work, 'snapshotter.sock');
  const disk = smallFilesystem(8192, 'xfs');
  const { mnt, stateDir } = disk;
  const bareDir = join(mnt, 'bare');
  const loops: string[] = [];
  let service: ReturnType<typeof spawn> | undefined;
  const client = () => snapshotsClient(socket);
  let c: ReturnType<typeof client> | undefined;
  try {
    mkdirSync(bareDir);
    let log = '';
    service = spawn(
      process.execPath,
      [cliPath, 'snapshotter', '--state-dir', stateDir, '--backend', 'loop', '--socket', socket],
      {
        env: {
          ...process.env,
          THINRELAY_CONFIG_FILE: 'none',
          THINRELAY_RESERVE_BYTES: '0',
          THINRELAY_SNAPSHOTTER_VOLUME_SIZE: '512M',
          THINRELAY_LOG_LEVEL: 'warn',
        },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    service.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    for (let i = 0; !existsSync(socket); i++) {
      if (i > 600 || service.exitCode !== null)
        throw new Error(`the snapshotter did not start:\n${log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    c = client();
    // The parent: a layer of 2,000 files (32 MiB), committed through the API.
    const base = (await c.call('Prepare', { key: 'bench/base', parent: '' })).mounts as WireMount[];
    const layerMnt = join(work, 'layer');
    mkdirSync(layerMnt);
    execFileSync('mount', ['-o', 'loop', base[0]!.source, layerMnt]);
    try {
      for (let d = 0; d < 20; d++) {
        const dir = join(layerMnt, `d${d}`);
        mkdirSync(dir);
        for (let f = 0; f < 100; f++) writeFileSync(join(dir, `f${f}`), randomBytes(16 * 1024));
      }
    } finally {
      execFileSync('umount', [layerMnt]);
    }
    const parent = `bench/1/${chainId}`;
    await c.call('Commit', { name: parent, key: 'bench/base' });
    // Commit sealed the base's own volume file: the clone's source.
    const parentVolume = base[0]!.source;
    if (!existsSync(parentVolume)) throw new Error(`no sealed parent volume at ${parentVolume}`);

    let seq = 0;
    const prepareMounts = async (): Promise<{ ms: number; key: string }> => {
      const key = `bench/ctr-${++seq}`;
      const t0 = performance.now();
      await c!.call('Prepare', { key, parent });
      await c!.call('Mounts', { key });
      return { ms: performance.now() - t0, key };
    };
    const bare = async (): Promise<{ ms: number; file: string; dev: string }> => {
      const file = join(bareDir, `clone-${++seq}.img`);
      const t0 = performance.now();
      await run('cp', ['--reflink=auto', '--sparse=always', '--', parentVolume, file]);
      const dev = (await run('losetup', ['--find', '--show', file])).stdout.trim();
      loops.push(dev);
      return { ms: performance.now() - t0, file, dev };
    };
    const releaseBare = async (xs: { file: string; dev: string }[]): Promise<void> => {
      for (const x of xs) {
        await run('losetup', ['-d', x.dev]);
        loops.splice(loops.indexOf(x.dev), 1);
        rmSync(x.file);
      }
    };
    const removeAll = async (keys: string[]): Promise<void> => {
      for (const key of keys) await c!.call('Remove', { key });
    };

    const before = loadavg().map((l) => +l.toFixed(2));
    // Warm both paths once.
    await removeAll([(await prepareMounts()).key]);
    await releaseBare([await bare()]);
    const single: number[] = [];
    const singleBare: number[] = [];
    for (let i = 0; i < o.reps; i++) {
      const s = await prepareMounts();
      single.push(s.ms);
      await removeAll([s.key]);
      const b = await bare();
      singleBare.push(b.ms);
      await releaseBare([b]);
    }
    const rounds: Burst[] = [];
    const roundsBare: Burst[] = [];
    for (let r = 0; r < o.rounds; r++) {
      execFileSync('sync', ['-f', mnt]);
      const t0 = performance.now();
      const done = await Promise.all(
        Array.from({ length: o.concurrent }, async () => {
          const x = await prepareMounts();
          return { at: performance.now() - t0, key: x.key };
        }),
      );
      rounds.push(burstOf(done.map((d) => d.at)));
      await removeAll(done.map((d) => d.key));
      execFileSync('sync', ['-f', mnt]);
      const b0 = performance.now();
      const bareDone = await Promise.all(
        Array.from({ length: o.concurrent }, async () => {
          const x = await bare();
          return { ...x, at: performance.now() - b0 };
        }),
      );
      roundsBare.push(burstOf(bareDone.map((d) => d.at)));
      await releaseBare(bareDone);
    }
    const burst = middleRound(rounds);
    const burstBare = middleRound(roundsBare);
    const singleMs = median(single);
    const singleBareMs = median(singleBare);
    return {
      singleMs: +singleMs.toFixed(1),
      singleBareMs: +singleBareMs.toFixed(1),
      singleRatio: +(singleMs / singleBareMs).toFixed(2),
      burst,
      burstBare,
      p99Ratio: +(burst.p99Ms / burstBare.p99Ms).toFixed(2),
      spreadRatio: +(burst.spreadMs / Math.max(burstBare.spreadMs, 0.1)).toFixed(2),
      concurrent: o.concurrent,
      machine: `${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB, kernel ${execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim()}, Node ${process.version}, state dir on xfs (reflink) on a loop device`,
      loadAverage: { before, after: loadavg().map((l) => +l.toFixed(2)) },
    };
  } finally {
    c?.close();
    for (const dev of loops) execFileSync('losetup', ['-d', dev]);
    if (service !== undefined && service.exitCode === null) {
      const exited = new Promise((r) => service!.once('exit', r));
      service.kill('SIGTERM');
      await exited;
    }
    disk.release();
    rmSync(work, { recursive: true, force: true });
  }
}

if (process.argv[1]?.endsWith('snapshotter-loop.js')) {
  const rows = await loopRows({
    reps: Number(process.env.THINRELAY_BENCH_REPS ?? 10),
    concurrent: Number(process.env.THINRELAY_BENCH_CONCURRENT ?? 20),
    rounds: Number(process.env.THINRELAY_BENCH_ROUNDS ?? 3),
  });
  console.log(JSON.stringify(rows, null, 2));
}
