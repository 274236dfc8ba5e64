/**
 * The `layers` section of `npm run bench` (issue 10 §7), run by bench.ts:
 * two container images built with umoci on one 200 MiB base (the cached
 * bookworm minbase tar), each with its own 5 MiB app layer, uploaded to the
 * S3 emulator behind the link proxy and processed one after the other by the
 * built CLI. Side by side: the second image's process-image time and pool
 * growth against the first's, on a loop pool on an xfs image (reflink) and on
 * an ext4 image (no reflink); the bytes fetched for the second image against
 * its archive's size (as the agent reports them, and as counted on the link);
 * process-image of one image against `umoci raw unpack` of the same image
 * into a fresh ext4, the trees compared entry by entry. Figures, not
 * assertions: whatever the code does is what is measured. Every loop device,
 * mount and filesystem image made here is released on every way out, Ctrl-C
 * included.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import {
  createReadStream,
  existsSync,
  readFileSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  statfsSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { makeExt4, unpackMountOptions } from '../../host-agent/src/sys/mkfs.js';
import { cliPath } from '../helpers/cli.js';
import { logLines } from '../helpers/log-lines.js';
import { Children } from './children.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { startLinkProxy } from '../helpers/link-proxy.js';
import { buildSharedBaseImages, type SharedBaseImages } from '../helpers/oci-fixtures.js';
import { devmapperEnv, releaseDmStateDir } from '../dm/dm-host.js';
import { s3EnvFor, startS3Emulator } from '../helpers/s3-emulator.js';
import { compareTrees } from '../helpers/tree-compare.js';

const MiB = 1024 ** 2;
/** Each scratch filesystem holding a pool (sparse: only what is written costs disk). */
const scratchBytes = 8 * 1024 ** 3;
/** umoci's target: the size thinrelay gives a volume for an archive this big. */
const umociVolumeBytes = 1536 * MiB;
/** The link every image crosses: S3's per-connection rate, 2 ms each way (as the e2e rows). */
const link = { bytesPerSecond: 25e6, latencyMs: 2, name: '25 MB/s per connection, 2 ms' };

type PoolFs = 'xfs' | 'ext4';
/** docker-archive+zstd: the docker archive compressed whole, which the host must spool whole. */
type ArchiveFormat = 'docker-archive' | 'oci-archive' | 'docker-archive+zstd';

/** One process-image run, whole process. */
export interface ImageRun {
  ms: number;
  /** Blocks the pool's filesystem gained (statfs, after sync): reflink-shared extents count once. */
  poolGrowthBytes: number;
  /** What `thinrelay pool status` says the pool gained (on loop: shared extents counted once too). */
  poolStatusGrowthBytes: number;
  /** Response bytes (HTTP headers included) that crossed the link for this run. */
  linkBytes: number;
  /** Bytes fetched from S3 as the agent itself reports them; null: it reports none. */
  reportedBytes: number | null;
  /** The pipeline's steps as the agent logged them done, in ms (from its log timestamps). */
  stepsMs: Record<string, number>;
  /** Layers the agent applied and reused, as its unpack step logged them; null: not logged. */
  layers: { applied: number; reused: number } | null;
}

export interface ImagePairFigures {
  pool: string;
  /** "≤ 0.1" where blocks can be shared (reflink, thin pool); null: reported as is. */
  goal: string | null;
  format: ArchiveFormat;
  archiveBytes: { first: number; second: number };
  /** Medians over the repetitions. */
  first: ImageRun;
  second: ImageRun;
  runs: { first: ImageRun; second: ImageRun }[];
  /** second / first: goal ≤ 0.1 on a reflink pool or a thin pool. */
  timeRatio: number;
  spaceRatio: number;
  /** The bytes fetched for the second image / its archive's size (link count). */
  downloadRatio: number;
  loadAverage: [number, number];
}

export interface UmociFigures {
  format: ArchiveFormat;
  /** thinrelay process-image of the first image, whole process (median; download included). */
  thinrelayMs: number;
  /** mkfs.ext4 + mount, `umoci raw unpack` of the same image from its local layout, flush + umount. */
  umociMs: number;
  ratio: number;
  /** The unpack step alone inside process-image (fetch, verify, apply the layers; from the agent's log). */
  thinrelayUnpackStepMs: number | null;
  unpackStepRatio: number | null;
  loadAverage: [number, number];
  /** Each image's result against `umoci raw unpack` of it, entry for entry (root mtime aside). */
  identicalToUmoci: { first: boolean; second: boolean };
  differences: string[];
}

export interface LayersFigures {
  link: string;
  base: { tarBytes: number };
  appLayerTarBytes: number;
  pairs: ImagePairFigures[];
  umoci: UmociFigures;
}

function sh(cmd: string, args: string[], env?: Record<string, string>): string {
  return execFileSync(cmd, args, {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    env: env === undefined ? process.env : { ...process.env, ...env },
  });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

const loadAverage = (): number => Number(loadavg()[0]!.toFixed(2));

/** The Debian packages this section drives, installed when missing (as bench.ts does awscli). */
function installMissingTools(): void {
  const packageOf: Record<string, string> = {
    'mkfs.xfs': 'xfsprogs',
    umoci: 'umoci',
    skopeo: 'skopeo',
    zstd: 'zstd',
  };
  const missing = Object.keys(packageOf).filter(
    (tool) => spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0,
  );
  if (missing.length === 0) return;
  const packages = missing.map((tool) => packageOf[tool]!);
  console.error(`installing ${packages.join(', ')} (Debian packages) for the layers section…`);
  sh('apt-get', ['install', '-y', '-qq', ...packages]);
}

/** What this section made on the host, released last-made first on every way out. */
class HostReleases {
  private readonly steps: { what: string; release: () => void }[] = [];

  /** Registers a release; the function returned runs it now (once). */
  add(what: string, release: () => void): () => void {
    const step = { what, release };
    this.steps.push(step);
    return () => {
      const at = this.steps.indexOf(step);
      if (at < 0) return;
      this.steps.splice(at, 1);
      release();
    };
  }

  /** A point to release back to (everything registered after it). */
  mark(): number {
    return this.steps.length;
  }

  /** Runs every release registered after `mark`, newest first; throws once, naming what failed. */
  releaseAfter(mark = 0): void {
    const failures: string[] = [];
    while (this.steps.length > mark) {
      const step = this.steps.pop()!;
      try {
        step.release();
      } catch (err) {
        failures.push(`${step.what}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    if (failures.length > 0) throw new Error(`layers bench left behind: ${failures.join('; ')}`);
  }
}

interface ScratchFs {
  mnt: string;
  /** Filesystem blocks in use, after a sync of that filesystem. */
  usedBytes(): number;
}

/**
 * A fresh xfs (reflink on) or ext4 filesystem image on a loop device, mounted
 * under `dir`; `releases` unmounts, detaches and deletes it.
 */
function scratchFs(dir: string, kind: PoolFs, name: string, releases: HostReleases): ScratchFs {
  const file = join(dir, `${name}.${kind}.img`);
  const mnt = join(dir, name);
  releases.add(file, () => rmSync(file, { force: true }));
  writeFileSync(file, '');
  sh('truncate', ['-s', String(scratchBytes), file]);
  if (kind === 'xfs') sh('mkfs.xfs', ['-q', '-m', 'reflink=1', file]);
  else sh('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', file]);
  const dev = sh('losetup', ['--find', '--show', file]).trim();
  releases.add(dev, () => sh('losetup', ['-d', dev]));
  releases.add(mnt, () => rmSync(mnt, { recursive: true, force: true }));
  mkdirSync(mnt);
  sh('mount', [dev, mnt]);
  releases.add(`mount ${mnt}`, () => sh('umount', [mnt]));
  return {
    mnt,
    usedBytes(): number {
      sh('sync', ['--file-system', mnt]);
      const s = statfsSync(mnt);
      return (s.blocks - s.bfree) * s.bsize;
    },
  };
}

interface LogLine {
  time?: string;
  msg?: string;
  step?: string;
  bytesFetched?: unknown;
  layersApplied?: unknown;
  layersReused?: unknown;
}

/** Each step's duration: from the previous step's end (or the first log line) to its "step done". */
function stepsMsOf(lines: LogLine[]): Record<string, number> {
  const steps: Record<string, number> = {};
  let since = lines[0]?.time === undefined ? null : Date.parse(lines[0].time);
  for (const l of lines) {
    if (l.msg !== 'step done' || l.step === undefined || l.time === undefined) continue;
    const at = Date.parse(l.time);
    if (since !== null) steps[l.step] = (steps[l.step] ?? 0) + (at - since);
    since = at;
  }
  return steps;
}

function layersOf(lines: LogLine[]): ImageRun['layers'] {
  const done = lines.find((l) => l.msg === 'step done' && l.step === 'unpack');
  if (typeof done?.layersApplied !== 'number') return null;
  return {
    applied: done.layersApplied,
    reused: typeof done.layersReused === 'number' ? done.layersReused : 0,
  };
}

/** The bytes the agent says it fetched from S3: the largest `bytesFetched` it logged or printed. */
function reportedBytesOf(lines: LogLine[], stdout: string): number | null {
  let found: number | null = null;
  for (const l of [...lines, JSON.parse(stdout) as LogLine]) {
    if (typeof l.bytesFetched === 'number') found = Math.max(found ?? 0, l.bytesFetched);
  }
  return found;
}

/** Where the images go: a state dir, the backend settings for it, and how its growth is measured. */
interface PoolUnderTest {
  label: string;
  /** The ≤ 0.1× goal holds for it (a reflink filesystem, a thin pool); otherwise figures as they are. */
  sharesBlocks: boolean;
  stateDir: string;
  /** THINRELAY_BACKEND and the like, for every CLI call on this state dir. */
  env: Record<string, string>;
  usedBytes(): Promise<number>;
}

/** The archives in the S3 emulator behind the link proxy, and the CLI pointed at them. */
interface Stage {
  images: SharedBaseImages;
  children: Children;
  releases: HostReleases;
  keyOf(format: ArchiveFormat, name: 'a' | 'b'): string;
  fileOf(format: ArchiveFormat, name: 'a' | 'b'): string;
  cli(args: string[], env?: Record<string, string>): Promise<{ ms: number; stdout: string }>;
  processImage(pool: PoolUnderTest, name: 'a' | 'b', format: ArchiveFormat): Promise<ImageRun>;
  /** The device path of the last image processed in each pool. */
  lastDevice: Map<PoolUnderTest, string>;
}

/**
 * Runs `fn` with the images uploaded (in `formats`) to an S3 emulator behind
 * the link proxy; every server, child and host object is released afterwards.
 */
async function withStage<T>(
  images: SharedBaseImages,
  formats: ArchiveFormat[],
  fn: (stage: Stage) => Promise<T>,
): Promise<T> {
  const releases = new HostReleases();
  const children = new Children();
  /** Servers in this process, closed (newest first) before the host releases. */
  const closers: (() => Promise<void>)[] = [];
  try {
    const s3 = await startS3Emulator();
    closers.unshift(() => s3.stop());
    const proxy = await startLinkProxy({
      targetPort: s3.port,
      bytesPerSecond: link.bytesPerSecond,
      latencyMs: link.latencyMs,
    });
    closers.unshift(() => proxy.close());
    const bucket = 'thinrelay-bench';
    const env = {
      ...process.env,
      ...s3EnvFor(s3),
      AWS_ENDPOINT_URL_S3: proxy.endpoint,
      THINRELAY_BUCKET: bucket,
      THINRELAY_RESERVE_BYTES: '0',
      THINRELAY_LOG_LEVEL: 'info',
    };
    const suffixOf: Record<ArchiveFormat, string> = {
      'docker-archive': 'docker.tar',
      'oci-archive': 'oci.tar',
      'docker-archive+zstd': 'docker.tar.zst',
    };
    const keyOf = (format: ArchiveFormat, name: 'a' | 'b'): string =>
      `images/app-${name}.${suffixOf[format]}`;
    const fileOf = (format: ArchiveFormat, name: 'a' | 'b'): string =>
      format === 'oci-archive'
        ? images.archives[name].ociArchive
        : format === 'docker-archive'
          ? images.archives[name].dockerArchive
          : `${images.archives[name].dockerArchive}.zst`;
    await s3.createBucket(bucket);
    for (const format of formats) {
      for (const name of ['a', 'b'] as const) {
        const file = fileOf(format, name);
        if (format === 'docker-archive+zstd' && !existsSync(file))
          sh('zstd', ['-q', '-T0', '-o', file, images.archives[name].dockerArchive]);
        await s3.client.send(
          new PutObjectCommand({
            Bucket: bucket,
            Key: keyOf(format, name),
            Body: createReadStream(file),
            ContentLength: statSync(file).size,
          }),
        );
      }
    }
    const cli = (
      args: string[],
      extra: Record<string, string> = {},
    ): Promise<{ ms: number; stdout: string; stderr: string }> =>
      children.ok(process.execPath, [cliPath, ...args], { ...env, ...extra });
    const poolStatusUsed = async (pool: PoolUnderTest): Promise<number> => {
      const { stdout } = await cli(
        ['pool', 'status', '--state-dir', pool.stateDir, '--json'],
        pool.env,
      );
      return (JSON.parse(stdout) as { dataUsedBytes: number }).dataUsedBytes;
    };
    const lastDevice = new Map<PoolUnderTest, string>();
    const stage: Stage = {
      images,
      children,
      releases,
      keyOf,
      fileOf,
      cli,
      lastDevice,
      async processImage(pool, name, format) {
        const key = keyOf(format, name);
        const used0 = await pool.usedBytes();
        const status0 = await poolStatusUsed(pool);
        const link0 = proxy.responseBytes;
        sh('sync', []);
        const r = await cli(
          ['process-image', '--s3-key', key, '--state-dir', pool.stateDir, '--json'],
          pool.env,
        );
        const linkBytes = proxy.responseBytes - link0;
        const lines = logLines<LogLine>(r.stderr);
        const run: ImageRun = {
          ms: r.ms,
          poolGrowthBytes: (await pool.usedBytes()) - used0,
          poolStatusGrowthBytes: (await poolStatusUsed(pool)) - status0,
          linkBytes,
          reportedBytes: reportedBytesOf(lines, r.stdout),
          stepsMs: stepsMsOf(lines),
          layers: layersOf(lines),
        };
        lastDevice.set(pool, (JSON.parse(r.stdout) as { devicePath: string }).devicePath);
        console.error(`  ${key}, ${pool.label}: ${JSON.stringify(run)}`);
        return run;
      },
    };
    return await fn(stage);
  } finally {
    children.close();
    for (const close of closers) await close().catch(() => undefined);
    releases.releaseAfter();
  }
}

/** A fresh xfs or ext4 image as the loop pool's filesystem: growth is its statfs. */
function loopPoolOn(
  dir: string,
  kind: PoolFs,
  name: string,
  releases: HostReleases,
): PoolUnderTest {
  const fs = scratchFs(dir, kind, name, releases);
  const stateDir = join(fs.mnt, 'state');
  mkdirSync(stateDir);
  releases.add(stateDir, () => {
    sh(process.execPath, [cliPath, 'pool', 'destroy', '--force', '--state-dir', stateDir]);
    releaseStateDir(stateDir);
  });
  return {
    label: kind === 'xfs' ? 'loop on xfs (reflink)' : 'loop on ext4 (no reflink)',
    sharesBlocks: kind === 'xfs',
    stateDir,
    env: { THINRELAY_BACKEND: 'loop' },
    usedBytes: () => Promise.resolve(fs.usedBytes()),
  };
}

/** A fresh thin pool (loop-backed, made by `pool create`): growth is its used data blocks. */
async function thinPool(stage: Stage, dir: string): Promise<PoolUnderTest> {
  const stateDir = mkdtempSync(join(dir, 'state-dm-'));
  const env = devmapperEnv(stateDir);
  stage.releases.add(stateDir, () => {
    try {
      sh(process.execPath, [cliPath, 'pool', 'destroy', '--force'], env);
    } finally {
      releaseDmStateDir(stateDir);
    }
  });
  await stage.cli(['pool', 'create', '--size', '2G'], env);
  const pool: PoolUnderTest = {
    label: 'devmapper thin pool',
    sharesBlocks: true,
    stateDir,
    env,
    async usedBytes() {
      const { stdout } = await stage.cli(['pool', 'status', '--json'], env);
      return (JSON.parse(stdout) as { dataUsedBytes: number }).dataUsedBytes;
    },
  };
  return pool;
}

/** Image a then image b into a fresh pool, `reps` times; `each` runs after both, pool still there. */
async function pairOn(
  stage: Stage,
  format: ArchiveFormat,
  reps: number,
  freshPool: (rep: number) => Promise<PoolUnderTest>,
  each: (
    rep: number,
    pool: PoolUnderTest,
    devices: { a: string; b: string },
  ) => Promise<void> = () => Promise.resolve(),
): Promise<ImagePairFigures> {
  const load0 = loadAverage();
  const runs: { first: ImageRun; second: ImageRun }[] = [];
  let label = '';
  let sharesBlocks = false;
  for (let i = 0; i < reps; i++) {
    const mark = stage.releases.mark();
    try {
      const pool = await freshPool(i);
      label = pool.label;
      sharesBlocks = pool.sharesBlocks;
      const first = await stage.processImage(pool, 'a', format);
      const a = stage.lastDevice.get(pool)!;
      const second = await stage.processImage(pool, 'b', format);
      runs.push({ first, second });
      await each(i, pool, { a, b: stage.lastDevice.get(pool)! });
    } finally {
      stage.releases.releaseAfter(mark);
    }
  }
  const first = medianRun(runs.map((r) => r.first));
  const second = medianRun(runs.map((r) => r.second));
  const archiveBytes = {
    first: statSync(stage.fileOf(format, 'a')).size,
    second: statSync(stage.fileOf(format, 'b')).size,
  };
  const figures: ImagePairFigures = {
    pool: label,
    goal: sharesBlocks ? '≤ 0.1' : null,
    format,
    archiveBytes,
    first,
    second,
    runs,
    timeRatio: second.ms / first.ms,
    spaceRatio: second.poolGrowthBytes / first.poolGrowthBytes,
    downloadRatio: second.linkBytes / archiveBytes.second,
    loadAverage: [load0, loadAverage()],
  };
  console.error(`layers: ${JSON.stringify({ ...figures, runs: undefined })}`);
  return figures;
}

/** The `layers` section of npm run bench: loop pools on xfs and ext4, and umoci side by side. */
export async function benchLayers(
  work: string,
  baseTar: string,
  reps: number,
): Promise<LayersFigures> {
  installMissingTools();
  const dir = mkdtempSync(join(work, 'layers-'));
  try {
    console.error('layers: building two images on the 200 MiB base with umoci and skopeo…');
    const images = await buildSharedBaseImages(mkdtempSync(join(dir, 'images-')), baseTar);
    const formats: ArchiveFormat[] = ['docker-archive', 'oci-archive', 'docker-archive+zstd'];
    return await withStage(images, formats, async (stage) => {
      const onLoop = (kind: PoolFs, format: ArchiveFormat) => (rep: number) =>
        Promise.resolve(loopPoolOn(dir, kind, `${kind}-${format}-${rep}`, stage.releases));
      const pairs = [
        await pairOn(stage, 'docker-archive', reps, onLoop('xfs', 'docker-archive')),
        await pairOn(stage, 'docker-archive', reps, onLoop('ext4', 'docker-archive')),
        // Compressed whole, the archive is spooled whole: held layers are not applied, but fetched.
        await pairOn(stage, 'docker-archive+zstd', reps, onLoop('xfs', 'docker-archive+zstd')),
      ];
      // The oci-archive pair, with umoci's unpack of image a beside it, alternating.
      const umociRuns: number[] = [];
      let compared: { identical: { first: boolean; second: boolean }; differences: string[] } = {
        identical: { first: false, second: false },
        differences: ['not compared'],
      };
      const load0 = loadAverage();
      const oci = await pairOn(
        stage,
        'oci-archive',
        reps,
        async (rep) => {
          const pool = await onLoop('xfs', 'oci-archive')(rep);
          if (rep % 2 === 1) umociRuns.push(await umociUnpack(stage, pool, null));
          return pool;
        },
        async (rep, pool, devices) => {
          const last = rep === reps - 1;
          const refA = last ? mkdtempSync(join(dir, 'ref-a-')) : null;
          if (rep % 2 === 0) umociRuns.push(await umociUnpack(stage, pool, refA));
          else if (refA !== null) await umociUnpack(stage, pool, refA);
          if (refA !== null)
            compared = await compareWithUmoci(stage, dir, join(refA, 'r'), devices);
        },
      );
      pairs.push(oci);
      const umociMs = median(umociRuns);
      const unpackStep = oci.first.stepsMs.unpack ?? null;
      return {
        link: link.name,
        base: { tarBytes: statSync(baseTar).size },
        appLayerTarBytes: images.appLayerTarBytes,
        pairs,
        umoci: {
          format: 'oci-archive',
          thinrelayMs: oci.first.ms,
          umociMs,
          ratio: oci.first.ms / umociMs,
          thinrelayUnpackStepMs: unpackStep,
          unpackStepRatio: unpackStep === null ? null : unpackStep / umociMs,
          loadAverage: [load0, loadAverage()],
          identicalToUmoci: compared.identical,
          differences: compared.differences.slice(0, 20),
        },
      };
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * mkfs + mount a fresh ext4 volume file beside `pool`'s state dir (the same
 * filesystem as thinrelay's volumes), `umoci raw unpack` image a into it,
 * flush, umount: the ms that took. With `keepAt`, the volume is then mounted
 * read-only there. Released with the stage's next release back to a mark.
 */
async function umociUnpack(
  stage: Stage,
  pool: PoolUnderTest,
  keepAt: string | null,
): Promise<number> {
  const { releases } = stage;
  sh('sync', []);
  const file = join(dirname(pool.stateDir), `umoci-${process.hrtime.bigint()}.img`);
  const mnt = `${file}.mnt`;
  releases.add(file, () => rmSync(file, { force: true }));
  const t0 = performance.now();
  writeFileSync(file, '');
  sh('truncate', ['-s', String(umociVolumeBytes), file]);
  await makeExt4(file);
  const dev = sh('losetup', ['--find', '--show', file]).trim();
  releases.add(dev, () => sh('losetup', ['-d', dev]));
  releases.add(mnt, () => rmSync(mnt, { recursive: true, force: true }));
  mkdirSync(mnt);
  sh('mount', ['-t', 'ext4', '-o', unpackMountOptions.join(','), dev, mnt]);
  const unmount = releases.add(`mount ${mnt}`, () => sh('umount', [mnt]));
  // umoci unpacks into a directory of its own; lost+found sits beside it.
  const image = `${stage.images.layout}:a`;
  await stage.children.ok('umoci', ['raw', 'unpack', '--image', image, join(mnt, 'r')]);
  sh('sync', ['--file-system', mnt]);
  unmount();
  const ms = performance.now() - t0;
  if (keepAt !== null) {
    sh('mount', ['-o', 'ro', dev, keepAt]);
    releases.add(`mount ${keepAt}`, () => sh('umount', [keepAt]));
  }
  return ms;
}

/** Both thinrelay devices mounted read-only, compared with umoci's trees of images a and b. */
async function compareWithUmoci(
  stage: Stage,
  dir: string,
  refA: string,
  devices: { a: string; b: string },
): Promise<{ identical: { first: boolean; second: boolean }; differences: string[] }> {
  const refB = join(mkdtempSync(join(dir, 'ref-b-')), 'r');
  const image = `${stage.images.layout}:b`;
  await stage.children.ok('umoci', ['raw', 'unpack', '--image', image, refB]);
  const differences: string[] = [];
  const identical = { first: true, second: true };
  for (const [which, device, ref] of [
    ['first', devices.a, refA],
    ['second', devices.b, refB],
  ] as const) {
    const mnt = mkdtempSync(join(dir, `probe-${which}-`));
    sh('mount', ['-o', 'ro', device, mnt]);
    const unmount = stage.releases.add(`mount ${mnt}`, () => sh('umount', [mnt]));
    try {
      const d = await compareTrees(ref, mnt, {
        skip: (rel) => rel === 'lost+found',
        ignoreMtime: (rel) => rel === '.',
      });
      identical[which] = d.length === 0;
      differences.push(...d.map((x) => `${which}: ${x}`));
    } finally {
      unmount();
    }
  }
  return { identical, differences };
}

/** The run of median time, with its own pool and link figures (one run, not a mix of runs). */
function medianRun(runs: ImageRun[]): ImageRun {
  const ms = median(runs.map((r) => r.ms));
  return [...runs].sort((a, b) => Math.abs(a.ms - ms) - Math.abs(b.ms - ms))[0]!;
}

type Row = [string, string, string, string, string];

const seconds = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
const mebibytes = (b: number): string => `${(b / MiB).toFixed(1)} MiB`;

function pairRows(p: ImagePairFigures): Row[] {
  const load = `load ${p.loadAverage.join('→')}`;
  const reported =
    p.second.reportedBytes === null ? 'not reported' : mebibytes(p.second.reportedBytes);
  const layers =
    p.second.layers === null
      ? 'layers not logged'
      : `${p.second.layers.applied} layer(s) applied, ${p.second.layers.reused} reused`;
  return [
    [
      `second image's process-image, ${p.format}, ${p.pool} (${layers}; ${load})`,
      `second ${seconds(p.second.ms)}`,
      `first ${seconds(p.first.ms)}`,
      p.timeRatio.toFixed(2),
      p.goal ?? '—',
    ],
    [
      `second image's pool growth, ${p.format}, ${p.pool}`,
      `second ${mebibytes(p.second.poolGrowthBytes)}`,
      `first ${mebibytes(p.first.poolGrowthBytes)}`,
      p.spaceRatio.toFixed(2),
      p.goal ?? '—',
    ],
    [
      `bytes fetched for the second image (link count; agent: ${reported}), ${p.format}`,
      mebibytes(p.second.linkBytes),
      `archive ${mebibytes(p.archiveBytes.second)}`,
      p.downloadRatio.toFixed(3),
      '—',
    ],
  ];
}

export function layersRows(f: LayersFigures): Row[] {
  const u = f.umoci;
  return [
    ...f.pairs.flatMap(pairRows),
    [
      `process-image of one image (${u.format}), whole process (load ${u.loadAverage.join('→')})`,
      seconds(u.thinrelayMs),
      `umoci raw unpack into fresh ext4, flush ${seconds(u.umociMs)}`,
      u.ratio.toFixed(2),
      '—',
    ],
    [
      'the same, the agent’s unpack step alone (fetch, verify, apply the layers)',
      u.thinrelayUnpackStepMs === null ? 'not logged' : seconds(u.thinrelayUnpackStepMs),
      seconds(u.umociMs),
      u.unpackStepRatio === null ? '—' : u.unpackStepRatio.toFixed(2),
      '—',
    ],
    [
      'both results identical to umoci raw unpack of the same image',
      String(u.identicalToUmoci.first && u.identicalToUmoci.second),
      '',
      '',
      'true',
    ],
  ];
}

/** What the guest run writes: the thin-pool pair and what the guest and host were. */
interface ThinPoolFigures {
  vm: string;
  host: string;
  pair: ImagePairFigures;
}

/** Inside a guest with device-mapper: the docker-archive pair on a fresh thin pool. */
async function benchThinPoolInGuest(imagesJson: string, out: string, reps: number): Promise<void> {
  const images = JSON.parse(readFileSync(imagesJson, 'utf8')) as SharedBaseImages;
  // The guest's tmpfs, as dm-bench's pools: what differs is the kernel's work, not a disk.
  const dir = mkdtempSync('/dev/shm/thinrelay-layers-dm-');
  try {
    const pair = await withStage(images, ['docker-archive'], (stage) =>
      pairOn(stage, 'docker-archive', reps, () => thinPool(stage, dir)),
    );
    const figures: ThinPoolFigures = {
      vm: process.env.THINRELAY_DM_VM_DESC ?? 'unknown',
      host: process.env.THINRELAY_DM_HOST_DESC ?? 'unknown',
      pair,
    };
    writeFileSync(out, JSON.stringify(figures));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * `node dist/test/bench/layers-bench.js --devmapper` (as root, after `npm run
 * build`): builds the two images here, then runs the pair on a thin pool in a
 * User-Mode Linux guest (scripts/test-dm/run.sh --exec), which reads them from
 * the host's root; prints the guest's figures and rows.
 */
async function benchThinPool(): Promise<void> {
  const cacheDir = process.env.THINRELAY_BENCH_CACHE ?? '/var/cache/thinrelay-bench';
  const baseTar = join(cacheDir, 'bookworm-minbase.tar');
  if (!existsSync(baseTar)) throw new Error(`${baseTar} is missing: npm run bench builds it`);
  installMissingTools();
  const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
  const dir = mkdtempSync(join(cacheDir, 'layers-dm-'));
  try {
    const images = await buildSharedBaseImages(dir, baseTar);
    const imagesJson = join(dir, 'images.json');
    writeFileSync(imagesJson, JSON.stringify(images));
    // The work tree is writable in the guest.
    const out = join(repoRoot, 'dist', 'test-dm', 'layers-thin-pool.json');
    mkdirSync(dirname(out), { recursive: true });
    rmSync(out, { force: true });
    const guest = `node dist/test/bench/layers-bench.js --in-guest ${imagesJson} ${out}`;
    const r = spawnSync('bash', [join(repoRoot, 'scripts/test-dm/run.sh'), '--exec', guest], {
      stdio: ['ignore', 'inherit', 'inherit'],
      // Two 206 MiB archives in the guest's emulator, the pool and a spool: all in guest RAM.
      env: { ...process.env, THINRELAY_DM_VM_MEM: process.env.THINRELAY_DM_VM_MEM ?? '3072' },
    });
    if (r.status !== 0) throw new Error(`the guest run failed (exit ${r.status})`);
    const figures = JSON.parse(readFileSync(out, 'utf8')) as ThinPoolFigures;
    console.log(JSON.stringify(figures));
    console.log(`\nguest: ${figures.vm}\nhost: ${figures.host}\n`);
    console.log('| measure | thinrelay | versus | ratio | target |\n|---|---|---|---|---|');
    for (const row of pairRows(figures.pair)) console.log(`| ${row.join(' | ')} |`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const reps = Number(process.env.THINRELAY_BENCH_REPS ?? '1');
  const [mode, imagesJson, out] = process.argv.slice(2);
  if (process.getuid?.() !== 0) throw new Error('layers-bench needs root');
  if (mode === '--devmapper') await benchThinPool();
  else if (mode === '--in-guest' && imagesJson !== undefined && out !== undefined)
    await benchThinPoolInGuest(imagesJson, out, reps);
  else throw new Error('usage: layers-bench.js --devmapper (the guest runs --in-guest IMAGES OUT)');
}
