/**
 * `thinrelay activate IMAGE`, whole process (spawn to exit), in-process
 * against through the service (a standalone `thinrelay snapshotter` on the
 * same state dir), beside the bare work (`cp --reflink` of the sealed volume
 * + `losetup`) and the CLI's floor (`thinrelay version`): one at a time
 * (median of N) and N at once (first, p50, last done). State dir on a fresh
 * xfs (reflink) loop filesystem, as in issue 24's figures. Every device,
 * mount, process and file is released on every way out.
 *
 * Run (root): node dist/test/bench/activate-bench.js  (THINRELAY_BENCH_REPS,
 * THINRELAY_BENCH_CONCURRENT: 10 and 20).
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { buildSampleRootfs } from '../../host-agent/src/demo/sample-rootfs.js';
import { objectName } from '../../host-agent/src/storage/names.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { cliPath, runCli } from '../helpers/cli.js';
import { s3EnvFor, startS3Emulator } from '../helpers/s3-emulator.js';
import { smallFilesystem } from '../helpers/small-fs.js';
import { startSnapshotter } from '../helpers/snapshotter-service.js';

const run = promisify(execFile);
const r1 = (x: number): number => +x.toFixed(1);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export interface Burst {
  firstMs: number;
  p50Ms: number;
  lastMs: number;
}

function burstOf(doneMs: number[]): Burst {
  const s = [...doneMs].sort((a, b) => a - b);
  return { firstMs: r1(s[0]!), p50Ms: r1(s[Math.ceil(s.length / 2) - 1]!), lastMs: r1(s.at(-1)!) };
}

async function main(reps: number, concurrent: number): Promise<Record<string, unknown>> {
  const work = mkdtempSync(join(tmpdir(), 'thinrelay-activate-bench-'));
  const socket = join(work, 'snapshotter.sock');
  const disk = smallFilesystem(8192, 'xfs');
  const { mnt, stateDir } = disk;
  let service: Awaited<ReturnType<typeof startSnapshotter>> | undefined;
  const bareLoops: string[] = [];
  const s3 = await startS3Emulator().catch((err: unknown) => {
    disk.release();
    throw err;
  });
  try {
    await s3.createBucket('bench');
    await s3.putObject('bench', 'images/base.tar', await buildSampleRootfs());
    const env: NodeJS.ProcessEnv = {
      ...s3EnvFor(s3),
      THINRELAY_CONFIG_FILE: 'none',
      THINRELAY_STATE_DIR: stateDir,
      THINRELAY_BACKEND: 'loop',
      THINRELAY_BUCKET: 'bench',
      THINRELAY_RESERVE_BYTES: '0',
      THINRELAY_SNAPSHOTTER_SOCKET: socket,
      THINRELAY_LOG_LEVEL: 'warn',
    };
    const ready = await runCli(['process-image', '--s3-key', 'images/base.tar'], env);
    if (ready.code !== 0) throw new Error(ready.stderr);
    const store = StateStore.open(stateDir, { readonly: true });
    const image = store.images.latestByKey('images/base.tar')!;
    const volume = store.objects.get(
      store.blobs.get(store.images.topBlobId(image.id)!)!.volume_id!,
    )!;
    store.close();
    const sealed = join(stateDir, 'pool', `${objectName('volume', volume.id)}.img`);

    const timed = async (args: string[]): Promise<number> => {
      const t0 = performance.now();
      const r = await runCli(args, env);
      if (r.code !== 0) throw new Error(`${args.join(' ')}: ${r.stderr}`);
      return performance.now() - t0;
    };
    const bare = async (n: number): Promise<number> => {
      const t0 = performance.now();
      const file = join(mnt, `bare-${n}.img`);
      await run('cp', ['--reflink=auto', '--sparse=always', '--', sealed, file]);
      bareLoops.push((await run('losetup', ['--find', '--show', file])).stdout.trim());
      return performance.now() - t0;
    };
    const releaseBare = async (): Promise<void> => {
      for (const dev of bareLoops.splice(0)) await run('losetup', ['-d', dev]);
    };
    const burst = async (one: (i: number) => Promise<number>): Promise<Burst> => {
      execFileSync('sync', ['-f', mnt]);
      const t0 = performance.now();
      const done = await Promise.all(
        Array.from({ length: concurrent }, async (_, i) => {
          await one(i);
          return performance.now() - t0;
        }),
      );
      return burstOf(done);
    };
    const singles = async (one: (i: number) => Promise<number>): Promise<number> => {
      await one(-1); // warm (the compile cache, the page cache)
      const xs: number[] = [];
      for (let i = 0; i < reps; i++) xs.push(await one(i));
      return r1(median(xs));
    };

    const before = loadavg().map((l) => +l.toFixed(2));
    const version = await singles(() => timed(['version']));
    const bareSingle = await singles((i) => bare(1000 + i));
    await releaseBare();
    const bareBurst = await burst((i) => bare(2000 + i));
    await releaseBare();
    const inProcess = await singles(() => timed(['activate', 'images/base.tar', '--in-process']));
    const inProcessBurst = await burst(() =>
      timed(['activate', 'images/base.tar', '--in-process']),
    );
    // No service yet: what a host without one pays for asking (a connect that fails).
    const fallback = await singles(() => timed(['activate', 'images/base.tar']));
    service = await startSnapshotter(socket, { ...env, THINRELAY_LOG_LEVEL: 'info' });
    const viaService = await singles(() => timed(['activate', 'images/base.tar']));
    const viaServiceBurst = await burst(() => timed(['activate', 'images/base.tar']));
    const served = service
      .log()
      .split('\n')
      .filter((l) => l.includes('activation served'));
    return {
      singleMs: { version, bare: bareSingle, inProcess, fallback, viaService },
      [`concurrent${concurrent}`]: {
        bare: bareBurst,
        inProcess: inProcessBurst,
        viaService: viaServiceBurst,
      },
      servedByService: served.length,
      reps,
      machine: `${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB, kernel ${execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim()}, Node ${process.version}, state dir on xfs (reflink) on a loop device`,
      loadAverage: { before, after: loadavg().map((l) => +l.toFixed(2)) },
      cli: cliPath,
    };
  } finally {
    await service?.stop();
    for (const dev of bareLoops) execFileSync('losetup', ['-d', dev]);
    disk.release();
    await s3.stop();
    rmSync(work, { recursive: true, force: true });
  }
}

if (process.argv[1]?.endsWith('activate-bench.js')) {
  const rows = await main(
    Number(process.env.THINRELAY_BENCH_REPS ?? 10),
    Number(process.env.THINRELAY_BENCH_CONCURRENT ?? 20),
  );
  console.log(JSON.stringify(rows, null, 2));
}
