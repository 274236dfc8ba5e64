/**
 * npm run bench:snapshotter:dm — the activation tail on devmapper, in the
 * User-Mode Linux guest (scripts/test-dm/run.sh --exec): 100 concurrent
 * Prepare + Mounts on one committed parent, and a single one, through
 * thinrelay's snapshotter socket; the same through containerd's own
 * devmapper snapshotter (Debian's containerd started in the guest, its
 * snapshots service called by the same gRPC client, and `ctr snapshots
 * prepare` ×100 as an operator would); and bare dmsetup (create_snap message,
 * then `dmsetup create` with the thin table). Every pool is a thin pool of
 * the same size and table on loop devices over the guest's tmpfs.
 * Figures, not assertions; writes bench/snapshotter-dm-results.json.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { runCli } from '../helpers/cli.js';
import { snapshotsClient, type SnapshotsClient } from '../helpers/snapshots-client.js';
import { startSnapshotter } from '../helpers/snapshotter-service.js';
import { until } from '../helpers/until.js';
import { devmapperEnv, poolNameOf, releaseDmStateDir } from '../dm/dm-host.js';

const execFileAsync = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, '..', '..', '..');
const resultsPath = join(repoRoot, 'bench', 'snapshotter-dm-results.json');
const concurrent = Number(process.env.THINRELAY_SNAP_BENCH_N ?? '100');
const singles = Number(process.env.THINRELAY_BENCH_REPS ?? '5');
const volumeBytes = 64 * 1024 ** 2;
const poolSize = '2G';
const parentChain = `sha256:${'b'.repeat(64)}`;

const sh = (file: string, args: string[]): string =>
  execFileSync(file, args, { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } });

/** Figures of one way of getting a device. */
interface Tail {
  /** Single Prepare (+ Mounts): each of `singles` runs, ms. */
  singleMs: number[];
  singleMedianMs: number;
  /** N started together: time from the start to each one's end, ms. */
  p50Ms: number;
  p99Ms: number;
  firstMs: number;
  lastMs: number;
  /** First-to-last: the last one done minus the first one done. */
  spreadMs: number;
  failed: number;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const pct = (sorted: number[], q: number): number =>
  sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)]!;

function tailOf(singleMs: number[], ends: (number | null)[]): Tail {
  const ok = ends.filter((e): e is number => e !== null).sort((a, b) => a - b);
  return {
    singleMs,
    singleMedianMs: median(singleMs),
    p50Ms: pct(ok, 0.5),
    p99Ms: pct(ok, 0.99),
    firstMs: ok[0]!,
    lastMs: ok.at(-1)!,
    spreadMs: ok.at(-1)! - ok[0]!,
    failed: ends.length - ok.length,
  };
}

/** Run `one(i)` `concurrent` times at once; each one's end, ms from the common start (null: failed). */
async function together(one: (i: number) => Promise<unknown>): Promise<(number | null)[]> {
  const t0 = performance.now();
  return Promise.all(
    Array.from({ length: concurrent }, (_, i) =>
      one(i).then(
        () => performance.now() - t0,
        (err: unknown) => {
          console.error(`  #${i} failed: ${String(err)}`);
          return null;
        },
      ),
    ),
  );
}

const began = performance.now();
const progress = (what: string): void =>
  console.error(`  ${((performance.now() - began) / 1000).toFixed(1)} s: ${what}`);

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await fn();
  return performance.now() - t;
}

// ---- pools like thinrelay's -------------------------------------------------------------------

interface PoolShape {
  dataBytes: number;
  metaBytes: number;
  /** The table's words after the two devices: block size, low water mark, features. */
  rest: string[];
}

const sysSize = (devno: string): number =>
  Number(readFileSync(`/sys/dev/block/${devno}/size`, 'utf8').trim()) * 512;

/** The size and table of thinrelay's pool, so the others are the same. */
function shapeOf(pool: string): PoolShape {
  const words = sh('dmsetup', ['table', pool]).trim().split(/\s+/);
  return { metaBytes: sysSize(words[3]!), dataBytes: sysSize(words[4]!), rest: words.slice(5) };
}

interface BenchPool {
  name: string;
  release(): void;
}

function makePool(name: string, dir: string, shape: PoolShape): BenchPool {
  const loops: string[] = [];
  const file = (f: string, bytes: number): string => {
    const path = join(dir, f);
    sh('truncate', ['-s', String(bytes), path]);
    const loop = sh('losetup', ['--find', '--show', path]).trim();
    loops.push(loop);
    return loop;
  };
  const meta = file(`${name}.meta`, shape.metaBytes);
  const data = file(`${name}.data`, shape.dataBytes);
  const table = `0 ${shape.dataBytes / 512} thin-pool ${meta} ${data} ${shape.rest.join(' ')}`;
  sh('dmsetup', ['create', name, '--table', table]);
  return {
    name,
    release() {
      for (const d of sh('dmsetup', ['ls'])
        .split('\n')
        .map((l) => l.split(/\s+/)[0] ?? '')
        .filter((d) => d.startsWith(`${name}-`)))
        sh('dmsetup', ['remove', '-f', d]);
      if (
        sh('dmsetup', ['ls'])
          .split('\n')
          .some((l) => l.split(/\s+/)[0] === name)
      )
        sh('dmsetup', ['remove', '-f', name]);
      for (const l of loops) sh('losetup', ['-d', l]);
    },
  };
}

const thinTable = (pool: string, id: number): string =>
  `0 ${volumeBytes / 512} thin /dev/mapper/${pool} ${id}`;

// ---- the three ---------------------------------------------------------------------------------

async function benchThinrelay(work: string): Promise<{ tail: Tail; shape: PoolShape }> {
  const stateDir = mkdtempSync(join(work, 'thinrelay-'));
  const env = { ...devmapperEnv(stateDir), THINRELAY_SNAPSHOTTER_VOLUME_SIZE: '64M' };
  try {
    const created = await runCli(['pool', 'create', '--size', poolSize], env);
    if (created.code !== 0) throw new Error(`pool create: ${created.stderr}`);
    const shape = shapeOf(poolNameOf(stateDir));
    const svc = await startSnapshotter(join(stateDir, 'snapshotter.sock'), {
      ...env,
      THINRELAY_LOG_LEVEL: 'warn',
    });
    try {
      const c = svc.client;
      const layer = `bench/1/${parentChain}`;
      await c.call('Prepare', { key: 'bench/base', parent: '' });
      await c.call('Commit', { name: layer, key: 'bench/base' });
      const prepare = async (key: string): Promise<void> => {
        await c.call('Prepare', { key, parent: layer });
        await c.call('Mounts', { key });
      };
      const singleMs: number[] = [];
      for (let i = 0; i < singles; i++) {
        singleMs.push(await timed(() => prepare(`bench/single${i}`)));
        await c.call('Remove', { key: `bench/single${i}` });
      }
      progress('thinrelay: single Prepares done');
      const ends = await together((i) => prepare(`bench/c${i}`));
      progress('thinrelay: concurrent Prepares done');
      for (let i = 0; i < concurrent; i++)
        await c.call('Remove', { key: `bench/c${i}` }).catch(() => undefined);
      await c.call('Remove', { key: layer });
      return { tail: tailOf(singleMs, ends), shape };
    } finally {
      await svc.stop();
    }
  } finally {
    releaseDmStateDir(stateDir);
  }
}

async function benchBare(work: string, shape: PoolShape): Promise<Tail> {
  const pool = makePool('snapbench-bare', work, shape);
  try {
    const p = pool.name;
    sh('dmsetup', ['message', p, '0', 'create_thin 0']);
    sh('dmsetup', ['create', `${p}-origin`, '--table', thinTable(p, 0)]);
    sh('mkfs.ext4', ['-q', '-E', 'nodiscard', `/dev/mapper/${p}-origin`]);
    sh('dmsetup', ['remove', `${p}-origin`]);
    let next = 1;
    const prepare = async (): Promise<void> => {
      const id = next++;
      await execFileAsync('dmsetup', ['message', p, '0', `create_snap ${id} 0`]);
      await execFileAsync('dmsetup', ['create', `${p}-${id}`, '--table', thinTable(p, id)]);
    };
    const singleMs: number[] = [];
    for (let i = 0; i < singles; i++) singleMs.push(await timed(prepare));
    progress('bare: single done');
    const ends = await together(prepare);
    progress('bare: concurrent done');
    return tailOf(singleMs, ends);
  } finally {
    pool.release();
  }
}

interface ContainerdFigures {
  grpc?: Tail;
  ctr?: { p50Ms: number; p99Ms: number; spreadMs: number; lastMs: number; failed: number };
  error?: string;
  log?: string[];
}

async function benchContainerd(work: string, shape: PoolShape): Promise<ContainerdFigures> {
  const dir = mkdtempSync(join(work, 'containerd-'));
  const pool = makePool('snapbench-ctd', dir, shape);
  const sock = join(dir, 'containerd.sock');
  const config = join(dir, 'config.toml');
  writeFileSync(
    config,
    [
      'version = 2',
      `root = "${dir}/root"`,
      `state = "${dir}/state"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '[grpc]',
      `  address = "${sock}"`,
      '[plugins."io.containerd.snapshotter.v1.devmapper"]',
      `  root_path = "${dir}/devmapper"`,
      `  pool_name = "${pool.name}"`,
      `  base_image_size = "${volumeBytes / 1024 ** 2}MB"`,
      '  async_remove = false',
      '  discard_blocks = false',
      '',
    ].join('\n'),
  );
  mkdirSync(join(dir, 'devmapper'), { recursive: true });
  let log = '';
  const ctd = spawn('containerd', ['--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  ctd.stdout.on('data', (d: Buffer) => (log += d.toString()));
  ctd.stderr.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<void>((resolve) => ctd.on('exit', () => resolve()));
  const devmapperLog = (): string[] =>
    log.split('\n').filter((l) => /devmapper|snapshotter\.v1\.devmapper|pool/i.test(l));
  let client: SnapshotsClient | undefined;
  try {
    await until('containerd socket', () => Promise.resolve(existsSync(sock)), 60_000, 100);
    client = snapshotsClient(sock, 'bench');
    const c = client;
    const sn = 'devmapper';
    // Without a gc root (or a lease) containerd's garbage collector takes the committed parent.
    const labels = { 'containerd.io/gc.root': 'snapshotter-dm-bench' };
    try {
      await c.call('Prepare', { snapshotter: sn, key: 'base', parent: '', labels });
    } catch (err) {
      return { error: `Prepare on containerd's devmapper: ${String(err)}`, log: devmapperLog() };
    }
    await c.call('Commit', { snapshotter: sn, name: 'layer', key: 'base', labels });
    const prepare = async (key: string): Promise<void> => {
      await c.call('Prepare', { snapshotter: sn, key, parent: 'layer', labels });
      await c.call('Mounts', { snapshotter: sn, key });
    };
    const singleMs: number[] = [];
    for (let i = 0; i < singles; i++) {
      singleMs.push(await timed(() => prepare(`single${i}`)));
      await c.call('Remove', { snapshotter: sn, key: `single${i}` });
    }
    progress('containerd: single done');
    const grpcTail = tailOf(singleMs, await together((i) => prepare(`c${i}`)));
    progress('containerd: concurrent (gRPC) done');
    // As an operator would: one `ctr snapshots prepare` process each.
    const ctrEnds = await together((i) =>
      execFileAsync('ctr', [
        '-a',
        sock,
        '-n',
        'bench',
        'snapshots',
        '--snapshotter',
        sn,
        'prepare',
        `ctr${i}`,
        'layer',
      ]),
    );
    const ctrTail = tailOf([0], ctrEnds);
    for (let i = 0; i < concurrent; i++) {
      await c.call('Remove', { snapshotter: sn, key: `c${i}` }).catch(() => undefined);
      await c.call('Remove', { snapshotter: sn, key: `ctr${i}` }).catch(() => undefined);
    }
    await c.call('Remove', { snapshotter: sn, key: 'layer' }).catch(() => undefined);
    return {
      grpc: grpcTail,
      ctr: {
        p50Ms: ctrTail.p50Ms,
        p99Ms: ctrTail.p99Ms,
        spreadMs: ctrTail.spreadMs,
        lastMs: ctrTail.lastMs,
        failed: ctrTail.failed,
      },
    };
  } catch (err) {
    return { error: String(err), log: devmapperLog() };
  } finally {
    client?.close();
    ctd.kill('SIGTERM');
    const timer = setTimeout(() => ctd.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
    for (const m of readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((m) => m.startsWith(dir + '/'))
      .reverse())
      sh('umount', ['-l', m]);
    pool.release();
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---- report ------------------------------------------------------------------------------------

const ms = (x: number): string => `${x.toFixed(0)} ms`;
const ratio = (a: number, b: number): string => (a / b).toFixed(3);

async function main(): Promise<void> {
  const work = mkdtempSync('/tmp/thinrelay-snapbench-');
  try {
    console.error(`thinrelay: ${concurrent} concurrent and ${singles} single Prepare + Mounts`);
    const thinrelay = await benchThinrelay(work);
    console.error('bare dmsetup');
    const bare = await benchBare(work, thinrelay.shape);
    console.error("containerd's devmapper snapshotter");
    const containerd = await benchContainerd(work, thinrelay.shape);
    const results = {
      machine: {
        vm:
          process.env.THINRELAY_DM_VM_DESC ??
          `not under run.sh: kernel ${sh('uname', ['-r']).trim()}`,
        host: process.env.THINRELAY_DM_HOST_DESC ?? 'unknown',
        node: process.version,
        containerd: sh('containerd', ['--version']).trim(),
        pool: `${thinrelay.shape.dataBytes / 1024 ** 3} GiB data, ${thinrelay.shape.metaBytes / 1024 ** 2} MiB metadata, table words ${thinrelay.shape.rest.join(' ')}; loop devices over the guest's tmpfs`,
        volume: `${volumeBytes / 1024 ** 2} MiB thin devices`,
      },
      concurrent,
      singles,
      thinrelay: thinrelay.tail,
      bare,
      containerd,
    };
    writeFileSync(resultsPath, JSON.stringify(results, null, 2) + '\n');
    const t = thinrelay.tail;
    console.log(`\nmachine: ${results.machine.vm}, on ${results.machine.host}`);
    console.log(`pool: ${results.machine.pool}\n`);
    console.log(
      `| ${concurrent} concurrent Prepare + Mounts | p50 | p99 | first | last | spread | failed |`,
    );
    console.log('|---|---|---|---|---|---|---|');
    const row = (name: string, x: Tail): void =>
      console.log(
        `| ${name} | ${ms(x.p50Ms)} | ${ms(x.p99Ms)} | ${ms(x.firstMs)} | ${ms(x.lastMs)} | ${ms(x.spreadMs)} | ${x.failed} |`,
      );
    row('thinrelay (gRPC socket)', t);
    if (containerd.grpc !== undefined) row('containerd devmapper (gRPC)', containerd.grpc);
    if (containerd.ctr !== undefined)
      console.log(
        `| containerd devmapper (ctr ×${concurrent}) | ${ms(containerd.ctr.p50Ms)} | ${ms(containerd.ctr.p99Ms)} | | ${ms(containerd.ctr.lastMs)} | ${ms(containerd.ctr.spreadMs)} | ${containerd.ctr.failed} |`,
      );
    row('bare dmsetup (create_snap + create)', bare);
    console.log(
      `\nsingle Prepare + Mounts, median of ${singles}: thinrelay ${ms(t.singleMedianMs)}, bare dmsetup ${ms(bare.singleMedianMs)} (ratio ${ratio(t.singleMedianMs, bare.singleMedianMs)}, goal ≤ 1.3)` +
        (containerd.grpc !== undefined ? `, containerd ${ms(containerd.grpc.singleMedianMs)}` : ''),
    );
    if (containerd.grpc !== undefined)
      console.log(
        `thinrelay / containerd devmapper: p99 ${ratio(t.p99Ms, containerd.grpc.p99Ms)} (goal ≤ 0.1), spread ${ratio(t.spreadMs, containerd.grpc.spreadMs)} (goal ≤ 0.1)`,
      );
    if (containerd.error !== undefined)
      console.log(
        `containerd devmapper: ${containerd.error}\n${(containerd.log ?? []).join('\n')}`,
      );
    console.log(`\nwritten: ${resultsPath}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
