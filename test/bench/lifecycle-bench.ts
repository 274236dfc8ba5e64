/**
 * The `lifecycle` section of `npm run bench` (issue 18 §8), run by bench.ts
 * or alone (`npm run bench:lifecycle`, which writes
 * bench/lifecycle-results.json): a simulated month. 20 days, each day a new
 * version of each of 3 keys (60 uploads), uploaded to the S3 emulator on
 * 127.0.0.1 and processed as a host gets them (`thinrelay process-image
 * --s3-key K --etag E`, the built CLI, which runs retention and admission
 * eviction in-process) into a loop pool on a small loop-mounted ext4 sized
 * for 8 images (THINRELAY_RESERVE_BYTES holds back the rest of it). Side by
 * side: the same schedule on a fresh pool with THINRELAY_POOL_POLICY=off,
 * what the product did before the policy (the pool fills, LOW_SPACE
 * starts). Per upload: exit code and reason code, pool use after it (`pool
 * status --json`, and the filesystem's own statfs), its peak sampled while
 * it ran, and the eviction passes it logged (`msg: "eviction pass"`,
 * `durationMs`; when the CLI logs none, `thinrelay pool evict --json` is
 * timed after each day instead, and the figures say so). Figures, not
 * assertions: whatever the code does is what is measured. Every loop
 * device, mount, filesystem image and the emulator are released on every
 * way out, Ctrl-C included.
 *
 * The pool's size comes from a calibration first: two images into a scratch
 * pool give one image's footprint (volume and snapshot) and the empty pool's
 * use; THINRELAY_RESERVE_BYTES is then set so that the capacity (statfs size
 * − reserve) holds the empty pool and 8 images. Both runs use the same 60
 * images and a private copy of the built CLI (a rebuild elsewhere during the
 * run cannot change it).
 *
 * Run: npm run bench:lifecycle (as root; ~5 minutes on 2 busy cores), or
 * THINRELAY_BENCH_ONLY=lifecycle npm run bench (figures printed, not saved).
 * THINRELAY_BENCH_LIFECYCLE_DAYS=N shortens the month (a quick check of the
 * harness; the figures then are not the issue's).
 */
import { execFileSync } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  statfsSync,
  writeFileSync,
} from 'node:fs';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildSampleRootfs } from '../../host-agent/src/demo/sample-rootfs.js';
import { cliPath } from '../helpers/cli.js';
import { logLines } from '../helpers/log-lines.js';
import { Children, type ChildResult } from './children.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';

const MiB = 1024 ** 2;
const keys = ['images/web.tar', 'images/api.tar', 'images/worker.tar'];
const days = Number(process.env.THINRELAY_BENCH_LIFECYCLE_DAYS ?? '20');
/** The pool holds this many images (of the calibrated footprint) before it is full. */
const poolImages = 8;
/** Each image's payload (pseudo-random, different per key and day) and its volume's size. */
const payloadBytes = 4 * MiB;
const volumeSize = '32M';
/** The loop-mounted ext4 the state dir lives on (sparse backing file). */
const fsBytes = 320 * MiB;
/** How often pool use is sampled (statfs) while an upload is processed. */
const sampleEveryMs = 10;
/** The spec's defaults (the run reads the policy in force from `pool status --json` when it says). */
const specPolicy = { retainVersions: 2, dataHighPercent: 85, dataLowPercent: 80 };

type Policy = 'on' | 'off';

/**
 * The built CLI every run uses: a private copy of dist/cli, taken once, so
 * that an `npm run build` elsewhere during the run (it deletes and remakes
 * dist/cli) can neither break a run nor change the code mid-month. Beside
 * dist/cli, so that its `better-sqlite3` import resolves the same.
 */
let cliUnderTest = cliPath;

async function copyCli(): Promise<() => void> {
  const from = dirname(cliPath);
  const to = join(dirname(from), `.lifecycle-bench-cli-${process.pid}`);
  // A build in progress has removed dist/cli for a moment: wait for it.
  for (let i = 0; !existsSync(cliPath); i++) {
    if (i === 120) throw new Error(`${cliPath} is missing: npm run build`);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  cpSync(from, to, { recursive: true });
  cliUnderTest = join(to, basename(cliPath));
  return () => {
    cliUnderTest = cliPath;
    rmSync(to, { recursive: true, force: true });
  };
}

/** One upload: a new version of one key, processed by the CLI. */
export interface UploadFigures {
  day: number;
  /** 1..60, in schedule order. */
  n: number;
  key: string;
  eTag: string;
  exitCode: number;
  /** The reason code of a failure ([LOW_SPACE] in the CLI's error line); null when it exited 0. */
  code: string | null;
  /** process-image, whole process. */
  ms: number;
  /** Pool use after the upload: `pool status --json` usage when it has it, else statfs. */
  usedBytes: number;
  capacityBytes: number;
  usedPercent: number;
  usageFrom: 'pool status' | 'statfs';
  /** The same from statfs of the pool's filesystem (used = blocks − available; capacity = size − reserve). */
  statfsUsedPercent: number;
  /** The highest statfs use sampled while the upload ran. */
  peakSampledPercent: number;
  /** The eviction passes this upload's process logged (`msg: "eviction pass"`). */
  passes: {
    trigger: string;
    durationMs: number;
    evicted: number | null;
    collected: number | null;
  }[];
  /** `image evicted` and `image superseded` log lines of this upload's process. */
  evictedLogged: number;
  supersededLogged: number;
}

export interface RunFigures {
  policy: Policy;
  uploads: UploadFigures[];
  failures: number;
  failureCodes: Record<string, number>;
  firstFailure: { day: number; n: number; key: string; code: string | null } | null;
  /** The highest pool use after an upload, and how many uploads left it above the high watermark. */
  peakUsedPercent: number;
  uploadsLeftAboveHigh: number;
  peakSampledPercent: number;
  /** Eviction passes: from the CLI's log lines, or `pool evict --json` timed after each day. */
  passes: {
    source: 'log' | 'pool evict (timed, whole process)' | 'none';
    count: number;
    medianMs: number | null;
    p95Ms: number | null;
    maxMs: number | null;
    totalMs: number;
    /** The logged passes that evicted something, and their median. */
    evictingCount: number;
    evictingMedianMs: number | null;
  };
  /** From `images --all --json` at the end. */
  images: {
    ready: number;
    removedByReason: Record<string, number>;
    failed: number;
    /** Each key's newest version ready at the end, of the 3. */
    currentReady: number;
  };
  processImageMedianMs: number;
  /** The same over the uploads that succeeded (null: none did). */
  processImageOkMedianMs: number | null;
  /** Time spent in this run's commands (both runs interleave: their wall time is one). */
  busyMs: number;
  /** 1-minute load average before and after both runs (interleaved). */
  loadAverage: [number, number];
}

export interface LifecycleFigures {
  machine: { cpu: string; cores: number; memory: string; kernel: string; node: string };
  loadAverage: { start: number[]; end: number[] };
  schedule: { days: number; keys: string[]; uploads: number };
  pool: {
    backend: 'loop';
    filesystem: string;
    fsBytes: number;
    reserveBytes: number;
    capacityBytes: number;
    /** The filesystem's size as statfs reports it (what capacity is measured from). */
    statfsSizeBytes: number;
    /** What one image costs the pool (volume and snapshot), measured on a scratch pool first. */
    perImageBytes: number;
    /** Use of an empty pool (filesystem and state database) at its start. */
    baselineBytes: number;
    sizedForImages: number;
    volumeSize: string;
    payloadBytes: number;
    tarBytes: number;
  };
  /** The watermark and retention settings in force (as `pool status --json` reported them). */
  policy: {
    retainVersions: number;
    highWatermarkPercent: number;
    lowWatermarkPercent: number;
    from: 'pool status' | 'spec defaults (pool status reports no policy)';
  };
  on: RunFigures;
  off: RunFigures;
}

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function percentile(xs: number[], p: number): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
}

const unquoted = (eTag: string | null | undefined): string => (eTag ?? '').replace(/"/g, '');
const round = (n: number, digits = 1): number => Number(n.toFixed(digits));
const load = (): number[] => loadavg().map((l) => round(l, 2));

/** What this section made on the host, released newest first on every way out. */
class Releases {
  private readonly steps: { what: string; release: () => void }[] = [];

  add(what: string, release: () => void): void {
    this.steps.push({ what, release });
  }

  /** Releases everything; `cause`: the error the work ended with, kept in the one thrown here. */
  releaseAll(cause?: unknown): void {
    const failures: string[] = [];
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        step.release();
      } catch (err) {
        failures.push(`${step.what}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    if (failures.length === 0) return;
    const after =
      cause === undefined
        ? ''
        : ` (after: ${cause instanceof Error ? cause.message : JSON.stringify(cause)})`;
    throw new Error(`lifecycle bench left behind: ${failures.join('; ')}${after}`, { cause });
  }
}

interface LogLine {
  msg?: string;
  durationMs?: unknown;
  trigger?: unknown;
  evicted?: unknown;
  collected?: unknown;
}

/** The reason code of the CLI's one error line (`thinrelay: …: [CODE] …`). */
function reasonCode(stderr: string): string | null {
  const lines = stderr.split('\n').filter((l) => l.startsWith('thinrelay:'));
  return /\[([A-Z][A-Z0-9_]*)\]/.exec(lines.at(-1) ?? '')?.[1] ?? null;
}

/** A fresh ext4 (no root-reserved blocks) on a loop device, mounted; released by `releases`. */
function poolFs(dir: string, name: string, releases: Releases): { mnt: string; fsType: string } {
  const file = join(dir, `${name}.ext4.img`);
  const mnt = join(dir, name);
  releases.add(file, () => rmSync(file, { force: true }));
  writeFileSync(file, '');
  sh('truncate', ['-s', String(fsBytes), file]);
  sh('mkfs.ext4', ['-q', '-F', '-m', '0', '-E', 'nodiscard', file]);
  const dev = sh('losetup', ['--find', '--show', file]).trim();
  releases.add(dev, () => sh('losetup', ['-d', dev]));
  releases.add(mnt, () => rmSync(mnt, { recursive: true, force: true }));
  mkdirSync(mnt);
  sh('mount', ['-t', 'ext4', dev, mnt]);
  releases.add(`mount ${mnt}`, () => sh('umount', [mnt]));
  return { mnt, fsType: `ext4 on ${dev} (${fsBytes / MiB} MiB, -m 0)` };
}

/** statfs use of the pool's filesystem: used = size − available (what the spec's loop usage is). */
function statfsUse(mnt: string): { usedBytes: number; sizeBytes: number } {
  const s = statfsSync(mnt);
  return { usedBytes: (s.blocks - s.bavail) * s.bsize, sizeBytes: s.blocks * s.bsize };
}

/** The image of `key` on `day`: a small rootfs tar whose payload differs per key and day. */
const tars = new Map<string, Promise<Buffer>>();
function tarOf(key: string, day: number): Promise<Buffer> {
  const name = `${key}@day-${day}`;
  let tar = tars.get(name);
  if (tar === undefined) {
    tar = buildSampleRootfs({ payloadBytes, seed: name });
    // Both runs upload the same 60 images: each is made once.
    tars.set(name, tar);
  }
  return tar;
}

interface PoolStatusJson {
  usage?: { capacityBytes: number; usedBytes: number; dataPercent?: number };
  policy?: {
    enabled?: boolean;
    retainVersions?: number;
    dataHighPercent?: number;
    dataLowPercent?: number;
    highWatermarkPercent?: number;
    lowWatermarkPercent?: number;
  };
}

interface ImageJson {
  key: string;
  etag: string | null;
  status: string;
  removedReason?: string | null;
}

interface Stage {
  s3: S3Emulator;
  bucket: string;
  children: Children;
  baseEnv: NodeJS.ProcessEnv;
  dir: string;
  /** `pool evict` is a command of this build. */
  hasPoolEvict: boolean;
}

/** A pool on a fresh filesystem: its state dir, env and the releases for both. */
function freshPool(
  stage: Stage,
  name: string,
  releases: Releases,
  extraEnv: Record<string, string>,
): { mnt: string; stateDir: string; env: NodeJS.ProcessEnv; fsType: string } {
  const { mnt, fsType } = poolFs(stage.dir, name, releases);
  const stateDir = join(mnt, 'state');
  const env = {
    ...stage.baseEnv,
    THINRELAY_STATE_DIR: stateDir,
    ...extraEnv,
  };
  releases.add(stateDir, () => {
    try {
      sh(process.execPath, [cliUnderTest, 'pool', 'destroy', '--force', '--state-dir', stateDir]);
    } finally {
      releaseStateDir(stateDir);
    }
  });
  return { mnt, stateDir, env, fsType };
}

async function upload(stage: Stage, key: string, day: number): Promise<string> {
  const { eTag } = await stage.s3.putObject(stage.bucket, key, await tarOf(key, day));
  return eTag;
}

/**
 * What one image costs the pool: two images of the schedule's size processed
 * into a scratch pool with no reserve and the policy off. Returns the second
 * image's growth and the use of the pool before any image, after sync.
 */
async function calibrate(
  stage: Stage,
): Promise<{ perImageBytes: number; baselineBytes: number; tarBytes: number; sizeBytes: number }> {
  const releases = new Releases();
  try {
    const pool = freshPool(stage, 'calibrate', releases, {
      THINRELAY_RESERVE_BYTES: '0',
      THINRELAY_POOL_POLICY: 'off',
    });
    const used: number[] = [];
    const key = 'images/calibrate.tar';
    await stage.children.ok(process.execPath, [cliUnderTest, 'pool', 'create'], pool.env);
    sh('sync', ['--file-system', pool.mnt]);
    used.push(statfsUse(pool.mnt).usedBytes);
    for (const day of [1, 2]) {
      const eTag = await upload(stage, key, day);
      await stage.children.ok(
        process.execPath,
        [cliUnderTest, 'process-image', '--s3-key', key, '--etag', eTag],
        pool.env,
      );
      sh('sync', ['--file-system', pool.mnt]);
      used.push(statfsUse(pool.mnt).usedBytes);
    }
    const perImageBytes = used[2]! - used[1]!;
    return {
      perImageBytes,
      // The first image also made the state database: count that with the empty pool.
      baselineBytes: used[1]! - perImageBytes,
      sizeBytes: statfsUse(pool.mnt).sizeBytes,
      tarBytes: (await tarOf(key, 1)).length,
    };
  } catch (err) {
    releases.releaseAll(err);
    throw err;
  } finally {
    releases.releaseAll();
  }
}

/** One schedule's pool and what was measured on it so far. */
interface RunState {
  policy: Policy;
  pool: { mnt: string; env: NodeJS.ProcessEnv };
  reserveBytes: number;
  uploads: UploadFigures[];
  passesMs: number[];
  passSource: RunFigures['passes']['source'];
  lastStatus: PoolStatusJson | null;
  /** Time spent in this run's commands (process-image, pool status, pool evict). */
  busyMs: number;
}

interface Scheduled {
  n: number;
  day: number;
  key: string;
}

async function openRun(
  stage: Stage,
  policy: Policy,
  reserveBytes: number,
  releases: Releases,
): Promise<RunState> {
  const pool = freshPool(stage, `pool-${policy}`, releases, {
    THINRELAY_RESERVE_BYTES: String(reserveBytes),
    ...(policy === 'off' ? { THINRELAY_POOL_POLICY: 'off' } : {}),
  });
  await stage.children.ok(process.execPath, [cliUnderTest, 'pool', 'create'], pool.env);
  return {
    policy,
    pool,
    reserveBytes,
    uploads: [],
    passesMs: [],
    passSource: 'none',
    lastStatus: null,
    busyMs: 0,
  };
}

/**
 * One upload on one run: process-image (pool use sampled meanwhile), then
 * `pool status`; `afterProcess` runs as soon as process-image has exited.
 */
async function processOne(
  stage: Stage,
  st: RunState,
  { n, day, key }: Scheduled,
  eTag: string,
  afterProcess: () => void,
): Promise<void> {
  const statfsNow = (): { usedBytes: number; capacityBytes: number } => {
    const s = statfsUse(st.pool.mnt);
    return { usedBytes: s.usedBytes, capacityBytes: s.sizeBytes - st.reserveBytes };
  };
  let peak = 0;
  const sampler = setInterval(() => {
    const s = statfsNow();
    peak = Math.max(peak, s.usedBytes / s.capacityBytes);
  }, sampleEveryMs);
  let r: ChildResult;
  try {
    r = await stage.children.run(
      process.execPath,
      [cliUnderTest, 'process-image', '--s3-key', key, '--etag', eTag, '--json'],
      st.pool.env,
    );
  } finally {
    clearInterval(sampler);
  }
  const after = statfsNow();
  peak = Math.max(peak, after.usedBytes / after.capacityBytes);
  afterProcess();
  const lines = logLines<LogLine>(r.stderr);
  const num = (v: unknown): number | null => (typeof v === 'number' ? v : null);
  const passes = lines
    .filter((l) => l.msg === 'eviction pass' && typeof l.durationMs === 'number')
    .map((l) => ({
      trigger: String(l.trigger),
      durationMs: l.durationMs as number,
      evicted: num(l.evicted),
      collected: num(l.collected),
    }));
  if (passes.length > 0) st.passSource = 'log';
  st.passesMs.push(...passes.map((p) => p.durationMs));
  const statusRun = await stage.children.ok(
    process.execPath,
    [cliUnderTest, 'pool', 'status', '--json'],
    st.pool.env,
  );
  st.busyMs += r.ms + statusRun.ms;
  const status = JSON.parse(statusRun.stdout) as PoolStatusJson;
  st.lastStatus = status;
  const usage = status.usage ?? null;
  const used = usage?.usedBytes ?? after.usedBytes;
  const capacity = usage?.capacityBytes ?? after.capacityBytes;
  const row: UploadFigures = {
    day,
    n,
    key,
    eTag,
    exitCode: r.code,
    code: r.code === 0 ? null : (reasonCode(r.stderr) ?? 'UNKNOWN'),
    ms: Math.round(r.ms),
    usedBytes: used,
    capacityBytes: capacity,
    usedPercent: round((100 * used) / capacity, 2),
    usageFrom: usage === null ? 'statfs' : 'pool status',
    statfsUsedPercent: round((100 * after.usedBytes) / after.capacityBytes, 2),
    peakSampledPercent: round(100 * peak, 2),
    passes,
    evictedLogged: lines.filter((l) => l.msg === 'image evicted').length,
    supersededLogged: lines.filter((l) => l.msg === 'image superseded').length,
  };
  st.uploads.push(row);
  console.error(
    `  lifecycle ${st.policy} day ${day} ${key}: exit ${row.exitCode}${row.code === null ? '' : ` [${row.code}]`}, ` +
      `${row.ms} ms, use ${row.usedPercent}% (peak ${row.peakSampledPercent}%), ` +
      `${passes.length} pass(es), ${row.evictedLogged} evicted, ${row.supersededLogged} superseded`,
  );
}

/** No pass logged by the CLI: one `pool evict` per day, timed, stands in for them (policy on). */
async function endOfDay(stage: Stage, st: RunState): Promise<void> {
  if (st.policy !== 'on' || st.passSource === 'log' || !stage.hasPoolEvict) return;
  const r = await stage.children.ok(
    process.execPath,
    [cliUnderTest, 'pool', 'evict', '--json'],
    st.pool.env,
  );
  st.passSource = 'pool evict (timed, whole process)';
  st.passesMs.push(Math.round(r.ms));
  st.busyMs += r.ms;
}

/** The run's figures, its images as `images --all --json` lists them at the end. */
async function closeRun(
  stage: Stage,
  st: RunState,
  loadAverage: [number, number],
): Promise<RunFigures> {
  const { uploads, passesMs } = st;
  const images = JSON.parse(
    (
      await stage.children.ok(
        process.execPath,
        [cliUnderTest, 'images', '--all', '--json'],
        st.pool.env,
      )
    ).stdout,
  ) as ImageJson[];
  const removedByReason: Record<string, number> = {};
  for (const i of images.filter((x) => x.status === 'removed')) {
    const reason = i.removedReason ?? 'unknown';
    removedByReason[reason] = (removedByReason[reason] ?? 0) + 1;
  }
  const failed = uploads.filter((u) => u.exitCode !== 0);
  const failureCodes: Record<string, number> = {};
  for (const f of failed) failureCodes[f.code!] = (failureCodes[f.code!] ?? 0) + 1;
  const first = failed[0];
  const lastETag = new Map(uploads.filter((u) => u.day === days).map((u) => [u.key, u.eTag]));
  const high = policyOf(st.lastStatus).highWatermarkPercent;
  const evicting = uploads
    .flatMap((u) => u.passes)
    .filter((p) => (p.evicted ?? 0) > 0)
    .map((p) => p.durationMs);
  return {
    policy: st.policy,
    uploads,
    failures: failed.length,
    failureCodes,
    firstFailure:
      first === undefined ? null : { day: first.day, n: first.n, key: first.key, code: first.code },
    peakUsedPercent: Math.max(...uploads.map((u) => u.usedPercent)),
    uploadsLeftAboveHigh: uploads.filter((u) => u.usedPercent > high).length,
    peakSampledPercent: Math.max(...uploads.map((u) => u.peakSampledPercent)),
    passes: {
      source: st.passSource,
      count: passesMs.length,
      medianMs: median(passesMs),
      p95Ms: percentile(passesMs, 95),
      maxMs: passesMs.length === 0 ? null : Math.max(...passesMs),
      totalMs: passesMs.reduce((a, b) => a + b, 0),
      evictingCount: evicting.length,
      evictingMedianMs: median(evicting),
    },
    images: {
      ready: images.filter((i) => i.status === 'ready').length,
      removedByReason,
      failed: images.filter((i) => i.status === 'failed').length,
      currentReady: keys.filter((k) =>
        images.some(
          (i) =>
            i.key === k && i.status === 'ready' && unquoted(i.etag) === unquoted(lastETag.get(k)),
        ),
      ).length,
    },
    processImageMedianMs: median(uploads.map((u) => u.ms))!,
    processImageOkMedianMs: median(uploads.filter((u) => u.exitCode === 0).map((u) => u.ms)),
    busyMs: Math.round(st.busyMs),
    loadAverage,
  };
}

/**
 * The 60 uploads, each processed on both pools one after the other (policy
 * on first on odd uploads, off first on even ones), so that both runs see
 * the same load on a shared machine. Each run's pool only ever sees its own
 * schedule: they share nothing but the S3 object.
 */
async function runSchedules(
  stage: Stage,
  reserveBytes: number,
): Promise<{ on: RunFigures; off: RunFigures; status: PoolStatusJson | null }> {
  const releases = new Releases();
  const load0 = round(loadavg()[0]!, 2);
  try {
    const on = await openRun(stage, 'on', reserveBytes, releases);
    const off = await openRun(stage, 'off', reserveBytes, releases);
    const schedule: Scheduled[] = Array.from({ length: days * keys.length }, (_, i) => ({
      n: i + 1,
      day: Math.floor(i / keys.length) + 1,
      key: keys[i % keys.length]!,
    }));
    let next: Promise<string> | null = upload(stage, schedule[0]!.key, 1);
    // Awaited later; a failure meanwhile must not end the process before the releases.
    next.catch(() => undefined);
    for (const s of schedule) {
      const eTag = await next;
      const order = s.n % 2 === 1 ? [on, off] : [off, on];
      await processOne(stage, order[0]!, s, eTag, () => undefined);
      // The next version is uploaded while `pool status` reads the second pool.
      await processOne(stage, order[1]!, s, eTag, () => {
        const following = schedule[s.n];
        next = following === undefined ? null : upload(stage, following.key, following.day);
        next?.catch(() => undefined);
      });
      if (s.n % keys.length === 0) for (const st of order) await endOfDay(stage, st);
    }
    const loadAverage: [number, number] = [load0, round(loadavg()[0]!, 2)];
    return {
      on: await closeRun(stage, on, loadAverage),
      off: await closeRun(stage, off, loadAverage),
      status: on.lastStatus,
    };
  } catch (err) {
    releases.releaseAll(err);
    throw err;
  } finally {
    releases.releaseAll();
  }
}

/** The retention and watermarks in force, as pool status says them (spec defaults otherwise). */
function policyOf(s: PoolStatusJson | null): LifecycleFigures['policy'] {
  const p = s?.policy;
  const high = p?.dataHighPercent ?? p?.highWatermarkPercent;
  const low = p?.dataLowPercent ?? p?.lowWatermarkPercent;
  if (p === undefined || high === undefined || low === undefined)
    return {
      retainVersions: specPolicy.retainVersions,
      highWatermarkPercent: specPolicy.dataHighPercent,
      lowWatermarkPercent: specPolicy.dataLowPercent,
      from: 'spec defaults (pool status reports no policy)',
    };
  return {
    retainVersions: p.retainVersions ?? specPolicy.retainVersions,
    highWatermarkPercent: high,
    lowWatermarkPercent: low,
    from: 'pool status',
  };
}

function machine(): LifecycleFigures['machine'] {
  return {
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memory: `${Math.round(totalmem() / 1024 ** 3)} GiB`,
    kernel: release(),
    node: process.version,
  };
}

/** The `lifecycle` section: calibration, then the month with the policy on and off. */
export async function benchLifecycle(work: string): Promise<LifecycleFigures> {
  const start = load();
  const dir = mkdtempSync(join(work, 'lifecycle-'));
  const children = new Children();
  let s3: S3Emulator | null = null;
  let dropCli: (() => void) | null = null;
  try {
    dropCli = await copyCli();
    s3 = await startS3Emulator();
    const bucket = 'thinrelay-bench-lifecycle';
    await s3.createBucket(bucket);
    const baseEnv: NodeJS.ProcessEnv = {
      ...process.env,
      ...s3EnvFor(s3),
      THINRELAY_CONFIG_FILE: 'none',
      THINRELAY_BUCKET: bucket,
      THINRELAY_BACKEND: 'loop',
      THINRELAY_VOLUME_SIZE: volumeSize,
      THINRELAY_LOG_LEVEL: 'info',
    };
    const help = await children.ok(process.execPath, [cliUnderTest, 'help'], baseEnv);
    const stage: Stage = {
      s3,
      bucket,
      children,
      baseEnv,
      dir,
      hasPoolEvict: /\bevict\b/.test(
        help.stdout +
          (await children.run(process.execPath, [cliUnderTest, 'help', 'pool'], baseEnv)).stdout,
      ),
    };
    console.error('lifecycle: calibrating what one image costs the pool…');
    const cal = await calibrate(stage);
    const used = cal.baselineBytes + poolImages * cal.perImageBytes;
    // Room for 8 images, and a little (1/4 image) for the database's growth and rounding.
    const capacityBytes = used + Math.round(cal.perImageBytes / 4);
    // Capacity is the filesystem's size as statfs gives it (ext4's own overhead excluded) − reserve.
    const reserveBytes = cal.sizeBytes - capacityBytes;
    console.error(
      `lifecycle: one image ${(cal.perImageBytes / MiB).toFixed(1)} MiB, empty pool ${(cal.baselineBytes / MiB).toFixed(1)} MiB; reserve ${(reserveBytes / MiB).toFixed(1)} MiB`,
    );
    const runs = await runSchedules(stage, reserveBytes);
    return {
      machine: machine(),
      loadAverage: { start, end: load() },
      schedule: { days, keys, uploads: days * keys.length },
      pool: {
        backend: 'loop',
        filesystem: `ext4 on a loop device (${fsBytes / MiB} MiB, -m 0), loop pool files on it`,
        fsBytes,
        statfsSizeBytes: cal.sizeBytes,
        reserveBytes,
        capacityBytes: runs.on.uploads[0]?.capacityBytes ?? capacityBytes,
        perImageBytes: cal.perImageBytes,
        baselineBytes: cal.baselineBytes,
        sizedForImages: poolImages,
        volumeSize,
        payloadBytes,
        tarBytes: cal.tarBytes,
      },
      policy: policyOf(runs.status),
      on: runs.on,
      off: runs.off,
    };
  } finally {
    children.close();
    await s3?.stop().catch(() => undefined);
    dropCli?.();
    tars.clear();
    rmSync(dir, { recursive: true, force: true });
  }
}

type Row = [string, string, string, string, string];

export function lifecycleRows(f: LifecycleFigures): Row[] {
  const { on, off } = f;
  const high = f.policy.highWatermarkPercent;
  const pct = (n: number): string => `${n.toFixed(1)}%`;
  const first = (r: RunFigures): string =>
    r.firstFailure === null
      ? 'none'
      : `first on day ${r.firstFailure.day} (upload ${r.firstFailure.n}, ${r.firstFailure.code})`;
  const ms = (n: number | null): string => (n === null ? '—' : `${n.toFixed(0)} ms`);
  const removed = (r: RunFigures): string =>
    Object.entries(r.images.removedByReason)
      .map(([k, v]) => `${v} ${k}`)
      .join(', ') || 'none';
  /** The same upload on both pools, where both succeeded: the policy's own cost. */
  const both = on.uploads.flatMap((u) => {
    const o = off.uploads.find((x) => x.n === u.n);
    return u.exitCode === 0 && o?.exitCode === 0 ? [{ on: u.ms, off: o.ms }] : [];
  });
  const month = `${f.schedule.uploads} uploads, ${f.schedule.days} days × ${f.schedule.keys.length} keys, pool for ${f.pool.sizedForImages} images`;
  return [
    [
      `lifecycle: failed uploads of ${month} (load ${on.loadAverage.join('→')}, both runs interleaved)`,
      `policy on ${on.failures} (${first(on)})`,
      `policy off (before) ${off.failures} (${first(off)})`,
      '—',
      '0',
    ],
    [
      `lifecycle: peak pool use after an upload, against the high watermark ${high}% (uploads left above it)`,
      `${pct(on.peakUsedPercent)} (${on.uploadsLeftAboveHigh})`,
      `${pct(off.peakUsedPercent)} (${off.uploadsLeftAboveHigh})`,
      (on.peakUsedPercent / high).toFixed(2),
      `≤ ${high}%`,
    ],
    [
      `lifecycle: peak pool use sampled while an upload ran (every ${sampleEveryMs} ms, statfs)`,
      pct(on.peakSampledPercent),
      pct(off.peakSampledPercent),
      (on.peakSampledPercent / high).toFixed(2),
      '—',
    ],
    [
      `lifecycle: eviction pass, median / p95 / max over ${on.passes.count} (${on.passes.source}; the ${on.passes.evictingCount} that evicted: median ${ms(on.passes.evictingMedianMs)})`,
      `${ms(on.passes.medianMs)} / ${ms(on.passes.p95Ms)} / ${ms(on.passes.maxMs)}`,
      'no passes',
      '—',
      '—',
    ],
    [
      'lifecycle: process-image per upload, median (whole process, failures included)',
      ms(on.processImageMedianMs),
      ms(off.processImageMedianMs),
      (on.processImageMedianMs / off.processImageMedianMs).toFixed(2),
      '—',
    ],
    [
      `lifecycle: process-image, the ${both.length} uploads that succeeded in both runs, median (ratio: median of per-upload ratios)`,
      ms(median(both.map((u) => u.on))),
      ms(median(both.map((u) => u.off))),
      both.length === 0 ? '—' : median(both.map((u) => u.on / u.off))!.toFixed(2),
      '—',
    ],
    [
      'lifecycle: at the end: ready images / current versions ready / removed',
      `${on.images.ready} / ${on.images.currentReady} of ${f.schedule.keys.length} / ${removed(on)}`,
      `${off.images.ready} / ${off.images.currentReady} of ${f.schedule.keys.length} / ${removed(off)}`,
      '—',
      '—',
    ],
  ];
}

function printLifecycle(f: LifecycleFigures): void {
  const p = f.pool;
  console.log(
    `\nmachine: ${f.machine.cores} × ${f.machine.cpu}; ${f.machine.memory}; kernel ${f.machine.kernel}; node ${f.machine.node}; load ${f.loadAverage.start.join(' ')} → ${f.loadAverage.end.join(' ')}`,
  );
  console.log(
    `pool: ${p.filesystem}; capacity ${(p.capacityBytes / MiB).toFixed(1)} MiB (reserve ${(p.reserveBytes / MiB).toFixed(1)} MiB), one image ${(p.perImageBytes / MiB).toFixed(1)} MiB (${(p.tarBytes / MiB).toFixed(1)} MiB tar, volume ${p.volumeSize}); ` +
      `retain ${f.policy.retainVersions}, watermarks ${f.policy.highWatermarkPercent}/${f.policy.lowWatermarkPercent}% (${f.policy.from})\n`,
  );
  console.log(
    '| measure | policy on | policy off (before) | ratio | goal |\n|---|---|---|---|---|',
  );
  for (const row of lifecycleRows(f)) console.log(`| ${row.join(' | ')} |`);
  console.log('\n| day | ' + keys.map((k) => `${k} on | off`).join(' | ') + ' |');
  console.log('|---|' + keys.map(() => '---|---').join('|') + '|');
  for (let day = 1; day <= f.schedule.days; day++) {
    const cell = (r: RunFigures, key: string): string => {
      const u = r.uploads.find((x) => x.day === day && x.key === key)!;
      const removed = [
        ...(u.evictedLogged > 0 ? [`${u.evictedLogged} evicted`] : []),
        ...(u.supersededLogged > 0 ? [`${u.supersededLogged} superseded`] : []),
      ];
      const what = removed.length === 0 ? '' : ` (${removed.join(', ')})`;
      return `${u.code ?? 'ok'} ${u.usedPercent.toFixed(0)}%${what}`;
    };
    console.log(
      `| ${day} | ${keys.map((k) => `${cell(f.on, k)} | ${cell(f.off, k)}`).join(' | ')} |`,
    );
  }
}

export { printLifecycle };

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (process.getuid?.() !== 0)
    throw new Error('lifecycle-bench needs root (loop devices, mkfs, mounts)');
  const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
  const cacheDir = process.env.THINRELAY_BENCH_CACHE ?? '/var/cache/thinrelay-bench';
  mkdirSync(cacheDir, { recursive: true });
  const work = mkdtempSync(join(cacheDir, 'lifecycle-run-'));
  try {
    const figures = await benchLifecycle(work);
    const out = join(repoRoot, 'bench', 'lifecycle-results.json');
    const { format, resolveConfig } = await import('prettier');
    const options = (await resolveConfig(out)) ?? {};
    const json = JSON.stringify({ date: new Date().toISOString(), ...figures }, null, 2);
    writeFileSync(out, await format(json, { ...options, filepath: out }));
    printLifecycle(figures);
    console.log(`\nwritten: ${out}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
