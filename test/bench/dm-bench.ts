/**
 * npm run bench:dm: device-mapper figures, measured on a real kernel with
 * device-mapper — User-Mode Linux by default (scripts/test-dm/run.sh --bench),
 * or the qemu TCG guest (scripts/test-dm/qemu.sh --bench). The guest kernel
 * costs a factor over the host's: compare the ratios, and see the factor
 * itself — the same loop-device commands timed in the guest and then on the
 * host (`--host-factor`, which npm run bench:dm runs after the guest).
 * Prints tables and writes bench/dm-results.json. Figures, not assertions.
 *
 * Raw dmsetup parts: mkfs with lazy init on/off on a thin volume, and the
 * unpack of one rootfs tar into ext4 on pools of 128, 256 and 2048-sector
 * blocks (GNU tar and thinrelay's extractor). Pools live on loop devices
 * over the guest's tmpfs, so the "disk" is RAM: what differs is the work the
 * kernel does (block provisioning, zeroing), not a disk's speed.
 */
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import {
  appendFileSync,
  closeSync,
  copyFileSync,
  fstatSync,
  openSync,
  readSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildSampleRootfs } from '../../host-agent/src/demo/sample-rootfs.js';
import { unpackMountOptions } from '../../host-agent/src/sys/mkfs.js';
import { loadConfig } from '../../host-agent/src/config.js';
import { silentLogger } from '../../host-agent/src/log.js';
import { activateImage, findImage } from '../../host-agent/src/ops/image-ops.js';
import { openRuntime } from '../../host-agent/src/runtime.js';
import { DevmapperBackend } from '../../host-agent/src/storage/devmapper/devmapper-backend.js';
import { maxThinId } from '../../host-agent/src/storage/devmapper/device-mapper.js';
import { cliPath } from '../helpers/cli.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { s3EnvFor, startS3Emulator } from '../helpers/s3-emulator.js';
import { devmapperEnv, releaseDmStateDir } from '../dm/dm-host.js';

const execFileAsync = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, '..', '..', '..');
const reps = Number(process.env.THINRELAY_BENCH_REPS ?? '3');
const tarBudgetMiB = Number(process.env.THINRELAY_DM_BENCH_TAR_MIB ?? '32');
const cachedTar =
  process.env.THINRELAY_DM_BENCH_TAR ?? '/var/cache/thinrelay-bench/bookworm-minbase.tar';
const sectorBytes = 512;
const volumeBytes = 2 * 1024 ** 3;
const poolDataBytes = 1536 * 1024 ** 2;
const poolMetaBytes = 64 * 1024 ** 2;
const productionBlockSectors = 256;
const blockSizes = [128, 256, 2048];

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** One line per measurement on stderr, so a long run in the VM shows where it is. */
function progress(what: string, ms: number): void {
  console.error(`  ${what}: ${(ms / 1000).toFixed(2)} s`);
}

function time(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** A thin pool on two loop devices over sparse files in `work`, made with bare dmsetup. */
class RawPool {
  readonly name: string;
  private readonly loops: string[] = [];
  private readonly thins: string[] = [];
  private created = false;

  constructor(
    private readonly work: string,
    tag: string,
    readonly blockSectors: number,
  ) {
    this.name = `thinrelay-bench-${process.pid}-${tag}-pool`;
  }

  create(): void {
    for (const [file, bytes] of [
      ['meta.img', poolMetaBytes],
      ['data.img', poolDataBytes],
    ] as const) {
      const path = join(this.work, `${this.name}-${file}`);
      writeFileSync(path, '');
      sh('truncate', ['-s', String(bytes), path]);
      this.loops.push(sh('losetup', ['--find', '--show', path]).trim());
    }
    const [meta, data] = this.loops;
    const sectors = poolDataBytes / sectorBytes;
    const lowWater = Math.max(1, Math.floor(sectors / this.blockSectors / 100));
    sh('dmsetup', [
      'create',
      this.name,
      '--table',
      `0 ${sectors} thin-pool ${meta} ${data} ${this.blockSectors} ${lowWater} 1 error_if_no_space`,
    ]);
    this.created = true;
    sh('dmsetup', ['mknodes', this.name]);
  }

  /** create_thin + dmsetup create + mknodes; returns the device node. */
  createThin(id: number): string {
    sh('dmsetup', ['message', this.name, '0', `create_thin ${id}`]);
    return this.activate(id);
  }

  activate(id: number): string {
    const name = `${this.name.replace(/-pool$/, '')}-thin${id}`;
    sh('dmsetup', [
      'create',
      name,
      '--table',
      `0 ${volumeBytes / sectorBytes} thin /dev/mapper/${this.name} ${id}`,
    ]);
    this.thins.push(name);
    sh('dmsetup', ['mknodes', name]);
    return `/dev/mapper/${name}`;
  }

  dataUsedBytes(): number {
    const m = /thin-pool \d+ \d+\/\d+ (\d+)\/\d+ /.exec(sh('dmsetup', ['status', this.name]));
    if (m === null) throw new Error(`unexpected pool status for ${this.name}`);
    return Number(m[1]) * this.blockSectors * sectorBytes;
  }

  destroy(): void {
    for (const t of this.thins.splice(0).reverse()) sh('dmsetup', ['remove', t]);
    if (this.created) sh('dmsetup', ['remove', this.name]);
    this.created = false;
    sh('dmsetup', ['mknodes']);
    for (const l of this.loops.splice(0)) sh('losetup', ['--detach', l]);
    for (const file of ['meta.img', 'data.img']) {
      rmSync(join(this.work, `${this.name}-${file}`), { force: true });
    }
  }
}

function isMountpoint(dir: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === dir);
}

/** A fresh pool with one thin volume: runs `fn`, then releases everything, even on failure. */
function withThinVolume<T>(
  work: string,
  tag: string,
  blockSectors: number,
  fn: (dev: string, pool: RawPool, mnt: string) => T,
): T {
  const pool = new RawPool(work, tag, blockSectors);
  const mnt = join(work, `${tag}-mnt`);
  mkdirSync(mnt, { recursive: true });
  try {
    pool.create();
    return fn(pool.createThin(0), pool, mnt);
  } finally {
    if (isMountpoint(mnt)) sh('umount', [mnt]);
    pool.destroy();
    rmSync(mnt, { recursive: true, force: true });
  }
}

function mkfs(dev: string, lazy: boolean): void {
  const init = lazy ? '1' : '0';
  sh('mkfs.ext4', [
    '-q',
    '-F',
    '-E',
    `nodiscard,lazy_itable_init=${init},lazy_journal_init=${init}`,
    dev,
  ]);
}

type Extractor = 'gnu-tar' | 'thinrelay';

/**
 * Mount, unpack, sync and unmount: the unpack's wall time including the
 * flush. thinrelay's figure is its in-process unpack (as the running agent
 * does it) plus the same flush: Node's start-up in the emulated CPU (seconds)
 * would otherwise swamp the differences between pools.
 */
function unpackInto(dev: string, mnt: string, tar: string, extractor: Extractor): number {
  sh('mount', ['-t', 'ext4', '-o', unpackMountOptions.join(','), dev, mnt]);
  let unpackMs: number;
  if (extractor === 'gnu-tar') {
    unpackMs = time(() => sh('tar', ['--numeric-owner', '--xattrs', '-xpf', tar, '-C', mnt]));
  } else {
    const out = sh(process.execPath, [join(here, 'unpack-child.js'), tar, mnt]);
    unpackMs = (JSON.parse(out) as { ms: number }).ms;
  }
  return (
    unpackMs +
    time(() => {
      sh('sync', ['--file-system', mnt]);
      sh('umount', [mnt]);
    })
  );
}

interface MkfsFigures {
  lazy: boolean;
  mkfsMs: number;
  poolUsedAfterMkfsBytes: number;
  unpackMs: number;
  poolUsedAfterUnpackBytes: number;
}

function benchMkfs(work: string, tar: string): MkfsFigures[] {
  const runs = new Map<
    boolean,
    { mkfsMs: number[]; unpackMs: number[]; afterMkfs: number; afterUnpack: number }
  >();
  for (const lazy of [true, false])
    runs.set(lazy, { mkfsMs: [], unpackMs: [], afterMkfs: 0, afterUnpack: 0 });
  for (let i = 0; i < reps; i++) {
    for (const lazy of i % 2 === 0 ? [true, false] : [false, true]) {
      const r = runs.get(lazy)!;
      withThinVolume(
        work,
        `mkfs-${lazy ? 'lazy' : 'eager'}${i}`,
        productionBlockSectors,
        (dev, pool, mnt) => {
          const mkfsMs = time(() => mkfs(dev, lazy));
          r.mkfsMs.push(mkfsMs);
          r.afterMkfs = pool.dataUsedBytes();
          const unpackMs = unpackInto(dev, mnt, tar, 'gnu-tar');
          r.unpackMs.push(unpackMs);
          progress(`mkfs lazy_init=${lazy ? 1 : 0}, then GNU tar`, mkfsMs + unpackMs);
          r.afterUnpack = pool.dataUsedBytes();
        },
      );
    }
  }
  return [true, false].map((lazy) => {
    const r = runs.get(lazy)!;
    return {
      lazy,
      mkfsMs: median(r.mkfsMs),
      poolUsedAfterMkfsBytes: r.afterMkfs,
      unpackMs: median(r.unpackMs),
      poolUsedAfterUnpackBytes: r.afterUnpack,
    };
  });
}

interface BlockSizeFigures {
  blockSectors: number;
  gnuTarMs: number;
  thinrelayMs: number;
  poolUsedBytes: number;
}

function benchBlockSizes(work: string, tar: string): BlockSizeFigures[] {
  const key = (bs: number, e: Extractor): string => `${bs}/${e}`;
  const times = new Map<string, number[]>();
  const used = new Map<number, number>();
  for (let i = 0; i < reps; i++) {
    // Rotate the order each round so a slow spell on the host hits every variant alike.
    const sizes = blockSizes.map((_, j) => blockSizes[(i + j) % blockSizes.length]!);
    for (const blockSectors of sizes) {
      const extractors: Extractor[] =
        i % 2 === 0 ? ['gnu-tar', 'thinrelay'] : ['thinrelay', 'gnu-tar'];
      for (const extractor of extractors) {
        withThinVolume(
          work,
          `bs${blockSectors}-${extractor}${i}`,
          blockSectors,
          (dev, pool, mnt) => {
            mkfs(dev, true);
            const ms = unpackInto(dev, mnt, tar, extractor);
            progress(`${blockSectors}-sector pool blocks, ${extractor}`, ms);
            times.set(key(blockSectors, extractor), [
              ...(times.get(key(blockSectors, extractor)) ?? []),
              ms,
            ]);
            used.set(blockSectors, pool.dataUsedBytes());
          },
        );
      }
    }
  }
  return blockSizes.map((blockSectors) => ({
    blockSectors,
    gnuTarMs: median(times.get(key(blockSectors, 'gnu-tar'))!),
    thinrelayMs: median(times.get(key(blockSectors, 'thinrelay'))!),
    poolUsedBytes: used.get(blockSectors)!,
  }));
}

/**
 * A prefix of a tar: whole entries up to `budget` bytes, then the end-of-archive
 * blocks. An extended header (pax x/g, GNU L/K) stays with the entry it
 * describes: the cut is never right after one.
 */
function tarPrefix(src: string, dst: string, budget: number): void {
  const fd = openSync(src, 'r');
  const header = Buffer.alloc(512);
  let offset = 0;
  let cut = 0;
  try {
    const total = fstatSync(fd).size;
    while (offset + 512 <= total && readSync(fd, header, 0, 512, offset) === 512) {
      if (header.every((b) => b === 0)) break;
      const type = String.fromCharCode(header[156]!);
      const size = parseInt(header.toString('latin1', 124, 136).replace(/\0.*$/, '').trim(), 8);
      if (!Number.isFinite(size)) throw new Error(`${src}: bad tar header at ${offset}`);
      offset += 512 + Math.ceil(size / 512) * 512;
      if (!'xgLK'.includes(type)) {
        if (offset > budget) break;
        cut = offset;
      }
    }
  } finally {
    closeSync(fd);
  }
  execFileSync('head', ['-c', String(cut), src], {
    stdio: ['ignore', openSync(dst, 'w'), 'inherit'],
  });
  appendFileSync(dst, Buffer.alloc(1024));
}

/**
 * The rootfs to unpack, in the guest's tmpfs so 9p reads stay out of the
 * figures: the first THINRELAY_DM_BENCH_TAR_MIB (default 32) MiB of the cached
 * Debian minbase tar (whole: 0), or else a generated sample rootfs.
 */
async function benchTar(work: string): Promise<{ path: string; source: string }> {
  const path = join(work, 'rootfs.tar');
  if (existsSync(cachedTar)) {
    if (tarBudgetMiB === 0) {
      copyFileSync(cachedTar, path);
      return { path, source: cachedTar };
    }
    tarPrefix(cachedTar, path, tarBudgetMiB * 1024 ** 2);
    return { path, source: `the first ${tarBudgetMiB} MiB of ${cachedTar}` };
  }
  writeFileSync(path, await buildSampleRootfs({ payloadBytes: 48 * 1024 ** 2 }));
  return {
    path,
    source: 'generated sample rootfs (host-agent/src/demo/sample-rootfs.ts), 48 MiB payload',
  };
}

// ---- through thinrelay's devmapper backend ------------------------------------------------------

const bucket = 'thinrelay-dm-bench';
const imageKey = 'images/rootfs.tar';
const activationReps = Number(process.env.THINRELAY_DM_BENCH_ACTIVATIONS ?? '7');

interface ProcessImageFigures {
  loopMs: number;
  devmapperMs: number;
  ratio: number;
}

interface ActivationFigures {
  /** ObjectManager createSnapshot + activate, in-process (as `thinrelay activate` and the daemon do). */
  thinrelayMs: number;
  /** create_snap + dmsetup create + dmsetup mknodes, nothing else. */
  bareDmsetupMs: number;
  ratio: number;
  /** The dmsetup commands one thinrelay activation issued (names and ids generalised). */
  thinrelayDmsetupCommands: string[];
}

async function timeAsync(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

type BackendKind = 'loop' | 'devmapper';

function backendEnv(
  kind: BackendKind,
  stateDir: string,
  base: NodeJS.ProcessEnv,
): NodeJS.ProcessEnv {
  return kind === 'devmapper'
    ? { ...base, ...devmapperEnv(stateDir) }
    : { ...base, THINRELAY_BACKEND: 'loop', THINRELAY_STATE_DIR: stateDir };
}

async function cli(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const t0 = performance.now();
  await execFileAsync(process.execPath, [cliPath, ...args], { env, maxBuffer: 64 * 1024 ** 2 });
  return performance.now() - t0;
}

/** Drop a state dir whatever it holds: the CLI's own teardown, then the last-resort release. */
async function dropStateDir(
  kind: BackendKind,
  stateDir: string,
  env: NodeJS.ProcessEnv,
): Promise<void> {
  try {
    await cli(['pool', 'destroy', '--force'], backendEnv(kind, stateDir, env));
  } finally {
    if (kind === 'devmapper') releaseDmStateDir(stateDir);
    else releaseStateDir(stateDir);
  }
}

/**
 * process-image (download, unpack, snapshot, activate: whole process) on the
 * loop backend and on the devmapper backend, same image, same S3 emulator.
 * Returns the figures and a devmapper state dir holding the processed image.
 */
async function benchProcessImage(
  work: string,
  env: NodeJS.ProcessEnv,
): Promise<{ figures: ProcessImageFigures; dmStateDir: string }> {
  const times: Record<BackendKind, number[]> = { loop: [], devmapper: [] };
  let kept: string | null = null;
  try {
    for (let i = 0; i < reps; i++) {
      for (const kind of (i % 2 === 0
        ? ['loop', 'devmapper']
        : ['devmapper', 'loop']) as BackendKind[]) {
        const stateDir = mkdtempSync(join(work, `state-${kind}-`));
        const benv = backendEnv(kind, stateDir, env);
        let keep = false;
        try {
          if (kind === 'devmapper') await cli(['pool', 'create', '--size', '1G'], benv);
          const ms = await cli(['process-image', '--s3-key', imageKey], benv);
          times[kind].push(ms);
          progress(`process-image on ${kind}`, ms);
          keep = kind === 'devmapper' && i === reps - 1;
        } finally {
          if (keep) kept = stateDir;
          else await dropStateDir(kind, stateDir, env);
        }
      }
    }
  } catch (err) {
    if (kept !== null) await dropStateDir('devmapper', kept, env);
    throw err;
  }
  const loopMs = median(times.loop);
  const devmapperMs = median(times.devmapper);
  return { figures: { loopMs, devmapperMs, ratio: devmapperMs / loopMs }, dmStateDir: kept! };
}

/** The same snapshot + activation with bare dmsetup: what any tool has to issue. */
function bareActivation(
  poolName: string,
  poolDev: string,
  originId: number,
  id: number,
  name: string,
  sectors: number,
): number {
  const ms = time(() => {
    sh('dmsetup', ['message', poolName, '0', `create_snap ${id} ${originId}`]);
    sh('dmsetup', ['create', name, '--table', `0 ${sectors} thin ${poolDev} ${id}`]);
    sh('dmsetup', ['mknodes', name]);
  });
  sh('dmsetup', ['remove', name]);
  sh('dmsetup', ['message', poolName, '0', `delete ${id}`]);
  sh('dmsetup', ['mknodes']);
  return ms;
}

/** Records every dmsetup command the agent runs while `fn` runs (a logging shim first on PATH). */
async function recordDmsetup(work: string, fn: () => Promise<void>): Promise<string[]> {
  const shimDir = join(work, 'dmsetup-shim');
  const logFile = join(shimDir, 'calls.log');
  mkdirSync(shimDir, { recursive: true });
  const real = sh('sh', ['-c', 'command -v dmsetup']).trim();
  writeFileSync(
    join(shimDir, 'dmsetup'),
    `#!/bin/sh\necho "$*" >> ${logFile}\nexec ${real} "$@"\n`,
    { mode: 0o755 },
  );
  writeFileSync(logFile, '');
  const path = process.env.PATH;
  process.env.PATH = `${shimDir}:${path ?? ''}`;
  try {
    await fn();
  } finally {
    process.env.PATH = path;
  }
  return readFileSync(logFile, 'utf8')
    .split('\n')
    .filter((l) => l !== '');
}

async function benchActivation(
  work: string,
  stateDir: string,
  env: NodeJS.ProcessEnv,
): Promise<ActivationFigures> {
  const rt = openRuntime({
    config: loadConfig({}, backendEnv('devmapper', stateDir, env)),
    logger: silentLogger,
  });
  try {
    const backend = rt.objects.backend;
    if (!(backend instanceof DevmapperBackend)) throw new Error('expected the devmapper backend');
    const image = findImage(rt, imageKey);
    const blob = rt.store.blobs.get(rt.store.images.blobIds(image.id)[0]!)!;
    const volume = rt.store.objects.get(blob.volume_id!)!;
    const originId = volume.thin_id!;
    const [major, minor] = sh('dmsetup', [
      'info',
      '-c',
      '--noheadings',
      '-o',
      'major,minor',
      '--separator',
      ':',
      backend.poolName,
    ])
      .trim()
      .split(':');
    const poolDev = `${major}:${minor}`;
    const sectors = volume.size_bytes / sectorBytes;

    const activateAndRelease = async (): Promise<number> => {
      let snapId = 0;
      const ms = await timeAsync(async () => {
        snapId = (await activateImage(rt, imageKey)).snapshot.id;
      });
      const snap = rt.store.objects.get(snapId)!;
      await rt.objects.deactivate(snap);
      await rt.objects.remove(rt.store.objects.get(snapId)!);
      return ms;
    };
    const ours: number[] = [];
    const bare: number[] = [];
    console.error(`  ${activationReps} activations each way…`);
    for (let i = 0; i < activationReps; i++) {
      const bareRun = (): number =>
        bareActivation(
          backend.poolName,
          poolDev,
          originId,
          maxThinId - i,
          `${backend.prefix}bench-bare`,
          sectors,
        );
      if (i % 2 === 0) {
        ours.push(await activateAndRelease());
        bare.push(bareRun());
      } else {
        bare.push(bareRun());
        ours.push(await activateAndRelease());
      }
    }
    const commands = await recordDmsetup(work, async () => {
      await activateAndRelease();
    });
    // Only the activation's commands, not the release's; names and ids generalised.
    const firstRelease = commands.findIndex((c) => c.startsWith('remove'));
    const activation = firstRelease === -1 ? commands : commands.slice(0, firstRelease);
    const thinrelayMs = median(ours);
    const bareDmsetupMs = median(bare);
    return {
      thinrelayMs,
      bareDmsetupMs,
      ratio: thinrelayMs / bareDmsetupMs,
      thinrelayDmsetupCommands: activation.map((c) => c.replaceAll(backend.prefix, '<prefix>')),
    };
  } finally {
    rt.close();
  }
}

async function benchBackends(
  work: string,
  tar: string,
): Promise<{ processImage: ProcessImageFigures; activation: ActivationFigures }> {
  const s3 = await startS3Emulator();
  try {
    await s3.createBucket(bucket);
    await s3.putObject(bucket, imageKey, readFileSync(tar));
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...s3EnvFor(s3),
      THINRELAY_BUCKET: bucket,
      THINRELAY_RESERVE_BYTES: '0',
      THINRELAY_LOG_LEVEL: 'warn',
    };
    const { figures, dmStateDir } = await benchProcessImage(work, env);
    try {
      return { processImage: figures, activation: await benchActivation(work, dmStateDir, env) };
    } finally {
      await dropStateDir('devmapper', dmStateDir, env);
    }
  } finally {
    await s3.stop();
  }
}

// ---- the same commands on the host and in the guest: the UML/host factor -----------------------

interface CommonFigures {
  /** `node -e 0`, whole process. */
  nodeStartMs: number;
  /** 200 × spawnSync('true'): process creation, which UML pays most for. */
  spawn200Ms: number;
  /** mkfs.ext4 (lazy init, as thinrelay runs it) of a 2 GiB sparse file on a loop device. */
  mkfsLoopMs: number;
  /** GNU tar of the bench rootfs into that ext4, mount to unmount. */
  untarLoopMs: number;
}

const commonRows: [keyof CommonFigures, string][] = [
  ['nodeStartMs', '`node -e 0`'],
  ['spawn200Ms', '200 × spawnSync(`true`)'],
  ['mkfsLoopMs', 'mkfs.ext4 of a 2 GiB file on a loop device'],
  ['untarLoopMs', 'GNU tar unpack into ext4 on a loop device'],
];

/**
 * Commands that run alike on the host (which has no device-mapper) and in
 * the guest, over loop devices on a tmpfs (/dev/shm) in both, so what
 * differs is the kernel: their ratio is the guest's cost factor.
 */
function benchCommon(tar: string): CommonFigures {
  const work = mkdtempSync('/dev/shm/thinrelay-dm-bench-common-');
  const runs: Record<keyof CommonFigures, number[]> = {
    nodeStartMs: [],
    spawn200Ms: [],
    mkfsLoopMs: [],
    untarLoopMs: [],
  };
  try {
    const img = join(work, 'fs.img');
    const mnt = join(work, 'mnt');
    mkdirSync(mnt);
    for (let i = 0; i < reps; i++) {
      runs.nodeStartMs.push(time(() => sh(process.execPath, ['-e', '0'])));
      runs.spawn200Ms.push(
        time(() => {
          for (let j = 0; j < 200; j++) spawnSync('true');
        }),
      );
      writeFileSync(img, '');
      sh('truncate', ['-s', String(volumeBytes), img]);
      const loop = sh('losetup', ['--find', '--show', img]).trim();
      try {
        runs.mkfsLoopMs.push(time(() => mkfs(loop, true)));
        runs.untarLoopMs.push(unpackInto(loop, mnt, tar, 'gnu-tar'));
      } finally {
        if (isMountpoint(mnt)) sh('umount', [mnt]);
        sh('losetup', ['--detach', loop]);
        rmSync(img, { force: true });
      }
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const figures = {} as CommonFigures;
  for (const [k] of commonRows) figures[k] = median(runs[k]);
  progress(
    'commands common to host and guest',
    commonRows.reduce((sum, [k]) => sum + figures[k], 0),
  );
  return figures;
}

const resultsPath = join(repoRoot, 'bench', 'dm-results.json');

/**
 * `dm-bench.js --host-factor`, on the host after the guest's run (npm run
 * bench:dm does both): the common commands again, here, and the guest/host
 * factor of each, added to bench/dm-results.json.
 */
async function hostFactor(): Promise<void> {
  const results = JSON.parse(readFileSync(resultsPath, 'utf8')) as {
    machine: Record<string, string>;
    common?: CommonFigures;
    hostFactor?: unknown;
  };
  const guest = results.common;
  if (guest === undefined)
    throw new Error(
      `${resultsPath} has no guest figures: run npm run bench:dm (not just --host-factor)`,
    );
  const work = mkdtempSync('/dev/shm/thinrelay-dm-bench-host-');
  let host: CommonFigures;
  try {
    host = benchCommon((await benchTar(work)).path);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const factors = {} as CommonFigures;
  for (const [k] of commonRows) factors[k] = guest[k] / host[k];
  results.hostFactor = {
    host: `${sh('nproc', []).trim()} × ${/model name\s*: (.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '?'}, kernel ${sh('uname', ['-r']).trim()}`,
    loadAverage: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
    hostFigures: host,
    guestOverHost: factors,
  };
  writeFileSync(resultsPath, JSON.stringify(results, null, 2) + '\n');
  console.log(
    `\nthe same commands in the guest (${results.machine.vm}) and on its host; median of ${reps}\n`,
  );
  console.log('| command | guest | host | guest / host |\n|---|---|---|---|');
  for (const [k, label] of commonRows)
    console.log(`| ${label} | ${s(guest[k])} | ${s(host[k])} | ${factors[k].toFixed(1)} |`);
  console.log(`\nwritten: ${resultsPath}`);
}

function machine(): Record<string, string> {
  return {
    vm:
      process.env.THINRELAY_DM_VM_DESC ?? `not under run.sh: kernel ${sh('uname', ['-r']).trim()}`,
    host: process.env.THINRELAY_DM_HOST_DESC ?? 'unknown',
    backing: 'loop devices over files on the guest tmpfs',
    node: process.version,
    tar: sh('tar', ['--version']).split('\n')[0] ?? '',
    mkfs: spawnSync('mkfs.ext4', ['-V'], { encoding: 'utf8' }).stderr.split('\n')[0] ?? '',
  };
}

const s = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
const mib = (b: number): string => `${(b / 1024 ** 2).toFixed(0)} MiB`;

function printTable(r: {
  machine: Record<string, string>;
  input: { source: string; tarBytes: number; entries: number };
  mkfs: MkfsFigures[];
  blockSizes: BlockSizeFigures[];
  backend: { processImage: ProcessImageFigures; activation: ActivationFigures } | { error: string };
}): void {
  console.log(
    `\nrootfs: ${r.input.source}, ${mib(r.input.tarBytes)} tar, ${r.input.entries} entries; median of ${reps}`,
  );
  console.log(`machine: ${r.machine.vm}, on ${r.machine.host}; ${r.machine.backing}\n`);
  const lazy = r.mkfs.find((m) => m.lazy)!;
  const eager = r.mkfs.find((m) => !m.lazy)!;
  console.log('| measure | this | versus | ratio |\n|---|---|---|---|');
  console.log(
    `| mkfs.ext4 on a 2 GiB thin volume: lazy init on vs off | ${s(lazy.mkfsMs)} (pool ${mib(lazy.poolUsedAfterMkfsBytes)}) | ${s(eager.mkfsMs)} (pool ${mib(eager.poolUsedAfterMkfsBytes)}) | ${(lazy.mkfsMs / eager.mkfsMs).toFixed(2)} |`,
  );
  console.log(
    `| GNU tar unpack after mkfs: lazy init on vs off | ${s(lazy.unpackMs)} | ${s(eager.unpackMs)} | ${(lazy.unpackMs / eager.unpackMs).toFixed(2)} |`,
  );
  if ('error' in r.backend) {
    console.log(
      `| activation, process-image via the devmapper backend | failed: ${r.backend.error} | | |`,
    );
  } else {
    const { activation: a, processImage: p } = r.backend;
    console.log(
      `| activation (snapshot + activate, in-process) vs bare create_snap + create + mknodes (target ≤ 1.2) | ${s(a.thinrelayMs)} | ${s(a.bareDmsetupMs)} | ${a.ratio.toFixed(2)} |`,
    );
    console.log(
      `| process-image (whole process): devmapper vs loop backend | ${s(p.devmapperMs)} | ${s(p.loopMs)} | ${p.ratio.toFixed(2)} |`,
    );
  }
  const base = r.blockSizes.find((b) => b.blockSectors === productionBlockSectors)!;
  for (const b of r.blockSizes) {
    console.log(
      `| unpack, pool blocks ${b.blockSectors} sectors (${(b.blockSectors * sectorBytes) / 1024} KiB) vs ${productionBlockSectors}: GNU tar | ${s(b.gnuTarMs)} (pool ${mib(b.poolUsedBytes)}) | ${s(base.gnuTarMs)} | ${(b.gnuTarMs / base.gnuTarMs).toFixed(2)} |`,
    );
    console.log(
      `| the same, thinrelay's extractor (in-process) | ${s(b.thinrelayMs)} | ${s(base.thinrelayMs)} | ${(b.thinrelayMs / base.thinrelayMs).toFixed(2)} |`,
    );
  }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0)
    throw new Error('the dm bench needs root: run it with npm run bench:dm');
  const work = mkdtempSync('/tmp/thinrelay-dm-bench-');
  try {
    const tar = await benchTar(work);
    const entries = sh('tar', ['-tf', tar.path])
      .split('\n')
      .filter((l) => l !== '').length;
    const commonFigures = benchCommon(tar.path);
    const mkfsFigures = benchMkfs(work, tar.path);
    const blockSizeFigures = benchBlockSizes(work, tar.path);
    let backendFigures: Awaited<ReturnType<typeof benchBackends>> | { error: string };
    try {
      backendFigures = await benchBackends(work, tar.path);
    } catch (err) {
      // The raw figures stand on their own; the failure is reported, and the exit status says so.
      console.error('the devmapper backend part failed:', err);
      backendFigures = { error: err instanceof Error ? err.message : String(err) };
      process.exitCode = 1;
    }
    const results = {
      date: new Date().toISOString(),
      machine: machine(),
      input: { source: tar.source, tarBytes: statSync(tar.path).size, entries },
      repetitions: reps,
      activationRepetitions: activationReps,
      volumeBytes,
      mkfs: mkfsFigures,
      blockSizes: blockSizeFigures,
      backend: backendFigures,
      common: commonFigures,
    };
    mkdirSync(dirname(resultsPath), { recursive: true });
    writeFileSync(resultsPath, JSON.stringify(results, null, 2) + '\n');
    printTable(results);
    console.log(`\nwritten: ${resultsPath}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

if (process.argv.includes('--host-factor')) await hostFactor();
else await main();
