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
import { execFile, execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import {
  createReadStream,
  mkdirSync,
  mkdtempSync,
  rmSync,
  statfsSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { makeExt4, unpackMountOptions } from '../../host-agent/src/sys/mkfs.js';
import { cliPath } from '../helpers/cli.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { startLinkProxy } from '../helpers/link-proxy.js';
import { buildSharedBaseImages } from '../helpers/oci-fixtures.js';
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
type ArchiveFormat = 'docker-archive' | 'oci-archive';

/** One process-image run, whole process. */
export interface ImageRun {
  ms: number;
  /** Blocks the pool's filesystem gained (statfs, after sync): reflink-shared extents count once. */
  poolGrowthBytes: number;
  /** What `thinrelay pool status` says the pool gained (allocated blocks of the pool files). */
  poolStatusGrowthBytes: number;
  /** Response bytes (HTTP headers included) that crossed the link for this run. */
  linkBytes: number;
  /** Bytes fetched from S3 as the agent itself reports them; null: it reports none. */
  reportedBytes: number | null;
  /** The pipeline's steps as the agent logged them done, in ms (from its log timestamps). */
  stepsMs: Record<string, number>;
}

export interface ImagePairFigures {
  pool: string;
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
  /** The unpack step alone inside process-image (download, verify, unpack; from the agent's log). */
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

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
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
}

function logLines(stderr: string): LogLine[] {
  const out: LogLine[] = [];
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as LogLine);
    } catch {
      // not a log line
    }
  }
  return out;
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

/** The bytes the agent says it fetched from S3: the largest `bytesFetched` it logged or printed. */
function reportedBytesOf(lines: LogLine[], stdout: string): number | null {
  let found: number | null = null;
  for (const l of [...lines, JSON.parse(stdout) as LogLine]) {
    if (typeof l.bytesFetched === 'number') found = Math.max(found ?? 0, l.bytesFetched);
  }
  return found;
}

export async function benchLayers(
  work: string,
  baseTar: string,
  reps: number,
): Promise<LayersFigures> {
  installMissingTools();
  const releases = new HostReleases();
  const dir = mkdtempSync(join(work, 'layers-'));
  releases.add(dir, () => rmSync(dir, { recursive: true, force: true }));
  // Ctrl-C or SIGTERM: the running child is stopped and no other starts, so the section
  // fails and every `finally` (this one's releases, then the caller's) runs before the exit.
  let running: ChildProcess | null = null;
  let stoppedBy: NodeJS.Signals | null = null;
  const onSignal = (sig: NodeJS.Signals): void => {
    stoppedBy = sig;
    running?.kill('SIGTERM');
  };
  process.on('SIGINT', onSignal).on('SIGTERM', onSignal);
  const run = (
    cmd: string,
    args: string[],
    env: NodeJS.ProcessEnv = process.env,
  ): Promise<{ ms: number; stdout: string; stderr: string }> => {
    if (stoppedBy !== null) return Promise.reject(new Error(`stopped by ${stoppedBy}`));
    const t0 = performance.now();
    return new Promise((resolve, reject) => {
      running = execFile(cmd, args, { env, maxBuffer: 256 * MiB }, (err, stdout, stderr) => {
        running = null;
        if (err !== null) reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr}`));
        else resolve({ ms: performance.now() - t0, stdout, stderr });
      });
    });
  };

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
    const cli = (args: string[]): Promise<{ ms: number; stdout: string; stderr: string }> =>
      run(process.execPath, [cliPath, ...args], env);
    console.error('layers: building two images on the 200 MiB base with umoci and skopeo…');
    const images = await buildSharedBaseImages(mkdtempSync(join(dir, 'images-')), baseTar);
    await s3.createBucket(bucket);
    const keyOf = (format: ArchiveFormat, name: 'a' | 'b'): string =>
      `images/app-${name}.${format === 'docker-archive' ? 'docker' : 'oci'}.tar`;
    const fileOf = (format: ArchiveFormat, name: 'a' | 'b'): string =>
      format === 'docker-archive'
        ? images.archives[name].dockerArchive
        : images.archives[name].ociArchive;
    for (const format of ['docker-archive', 'oci-archive'] as const) {
      for (const name of ['a', 'b'] as const) {
        const file = fileOf(format, name);
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

    const poolStatusUsed = async (stateDir: string): Promise<number> => {
      const { stdout } = await cli(['pool', 'status', '--state-dir', stateDir, '--json']);
      return (JSON.parse(stdout) as { dataUsedBytes: number }).dataUsedBytes;
    };
    /** process-image of one key in `stateDir`, with what it cost the pool and the link. */
    const processImage = async (
      fs: ScratchFs,
      stateDir: string,
      key: string,
    ): Promise<{ run: ImageRun; devicePath: string }> => {
      const used0 = fs.usedBytes();
      const status0 = await poolStatusUsed(stateDir);
      const link0 = proxy.responseBytes;
      sh('sync', []);
      const r = await cli(['process-image', '--s3-key', key, '--state-dir', stateDir, '--json']);
      const linkBytes = proxy.responseBytes - link0;
      const lines = logLines(r.stderr);
      const run: ImageRun = {
        ms: r.ms,
        poolGrowthBytes: fs.usedBytes() - used0,
        poolStatusGrowthBytes: (await poolStatusUsed(stateDir)) - status0,
        linkBytes,
        reportedBytes: reportedBytesOf(lines, r.stdout),
        stepsMs: stepsMsOf(lines),
      };
      console.error(`  ${key} on ${fs.mnt}: ${JSON.stringify(run)}`);
      return { run, devicePath: (JSON.parse(r.stdout) as { devicePath: string }).devicePath };
    };

    /** mkfs + mount a fresh ext4 in `fs`, `umoci raw unpack` the image, flush, umount: ms. */
    const umociUnpack = async (fs: ScratchFs, tag: string, keepTree: string | null) => {
      sh('sync', []);
      const file = join(fs.mnt, `umoci-${tag}.img`);
      const mnt = join(fs.mnt, `umoci-${tag}`);
      const t0 = performance.now();
      writeFileSync(file, '');
      sh('truncate', ['-s', String(umociVolumeBytes), file]);
      await makeExt4(file);
      const dev = sh('losetup', ['--find', '--show', file]).trim();
      const detach = releases.add(dev, () => sh('losetup', ['-d', dev]));
      mkdirSync(mnt);
      sh('mount', ['-t', 'ext4', '-o', unpackMountOptions.join(','), dev, mnt]);
      const unmount = releases.add(mnt, () => sh('umount', [mnt]));
      // umoci unpacks into a directory it may create; lost+found sits beside it.
      await run('umoci', ['raw', 'unpack', '--image', `${images.layout}:${tag}`, join(mnt, 'r')]);
      sh('sync', ['--file-system', mnt]);
      unmount();
      const ms = performance.now() - t0;
      if (keepTree !== null) {
        sh('mount', ['-o', 'ro', dev, keepTree]);
        releases.add(keepTree, () => sh('umount', [keepTree]));
      }
      if (keepTree === null) {
        detach();
        rmSync(file);
      }
      return ms;
    };

    const pairs: ImagePairFigures[] = [];
    let umoci: UmociFigures | null = null;
    const passes: { pool: PoolFs; format: ArchiveFormat; versusUmoci: boolean }[] = [
      { pool: 'xfs', format: 'docker-archive', versusUmoci: false },
      { pool: 'ext4', format: 'docker-archive', versusUmoci: false },
      { pool: 'xfs', format: 'oci-archive', versusUmoci: true },
    ];
    for (const pass of passes) {
      const load0 = loadAverage();
      const runs: { first: ImageRun; second: ImageRun }[] = [];
      const umociRuns: number[] = [];
      let identical = { first: false, second: false };
      let differences: string[] = [];
      for (let i = 0; i < reps; i++) {
        const mark = releases.mark();
        try {
          const fs = scratchFs(dir, pass.pool, `${pass.pool}-${pass.format}-${i}`, releases);
          const stateDir = join(fs.mnt, 'state');
          mkdirSync(stateDir);
          const releaseState = releases.add(stateDir, () => {
            sh(process.execPath, [cliPath, 'pool', 'destroy', '--force', '--state-dir', stateDir]);
            releaseStateDir(stateDir);
          });
          const umociFirst = pass.versusUmoci && i % 2 === 1;
          if (umociFirst) umociRuns.push(await umociUnpack(fs, 'a', null));
          const first = await processImage(fs, stateDir, keyOf(pass.format, 'a'));
          const second = await processImage(fs, stateDir, keyOf(pass.format, 'b'));
          runs.push({ first: first.run, second: second.run });
          if (pass.versusUmoci && !umociFirst) {
            // Last rep: keep umoci's tree mounted to compare both results with.
            const last = i === reps - 1;
            const refA = join(fs.mnt, 'ref-a');
            if (last) mkdirSync(refA);
            umociRuns.push(await umociUnpack(fs, 'a', last ? refA : null));
            if (last)
              ({ identical, differences } = await compareWithUmoci(fs, refA, first, second));
          }
          releaseState();
        } finally {
          releases.releaseAfter(mark);
        }
      }
      const first = medianRun(runs.map((r) => r.first));
      const second = medianRun(runs.map((r) => r.second));
      const archiveBytes = {
        first: statSync(fileOf(pass.format, 'a')).size,
        second: statSync(fileOf(pass.format, 'b')).size,
      };
      pairs.push({
        pool: pass.pool === 'xfs' ? 'loop on xfs (reflink)' : 'loop on ext4 (no reflink)',
        format: pass.format,
        archiveBytes,
        first,
        second,
        runs,
        timeRatio: second.ms / first.ms,
        spaceRatio: second.poolGrowthBytes / first.poolGrowthBytes,
        downloadRatio: second.linkBytes / archiveBytes.second,
        loadAverage: [load0, loadAverage()],
      });
      console.error(`layers: ${JSON.stringify({ ...pairs.at(-1), runs: undefined })}`);
      if (pass.versusUmoci) {
        const umociMs = median(umociRuns);
        const unpackStep = first.stepsMs.unpack ?? null;
        umoci = {
          format: pass.format,
          thinrelayMs: first.ms,
          umociMs,
          ratio: first.ms / umociMs,
          thinrelayUnpackStepMs: unpackStep,
          unpackStepRatio: unpackStep === null ? null : unpackStep / umociMs,
          loadAverage: [load0, loadAverage()],
          identicalToUmoci: identical,
          differences: differences.slice(0, 20),
        };
      }
    }
    return {
      link: link.name,
      base: { tarBytes: statSync(baseTar).size },
      appLayerTarBytes: images.appLayerTarBytes,
      pairs,
      umoci: umoci!,
    };

    /** Mounts both thinrelay devices read-only and compares them with umoci's trees of a and b. */
    async function compareWithUmoci(
      fs: ScratchFs,
      refA: string,
      first: { devicePath: string },
      second: { devicePath: string },
    ): Promise<{ identical: { first: boolean; second: boolean }; differences: string[] }> {
      const refB = join(fs.mnt, 'ref-b');
      await run('umoci', ['raw', 'unpack', '--image', `${images.layout}:b`, refB]);
      const diffs: string[] = [];
      const identical = { first: true, second: true };
      for (const [which, device, ref] of [
        ['first', first.devicePath, join(refA, 'r')],
        ['second', second.devicePath, refB],
      ] as const) {
        const mnt = join(fs.mnt, `probe-${which}`);
        mkdirSync(mnt);
        sh('mount', ['-o', 'ro', device, mnt]);
        const unmount = releases.add(mnt, () => sh('umount', [mnt]));
        try {
          const d = await compareTrees(ref, mnt, {
            skip: (rel) => rel === 'lost+found',
            ignoreMtime: (rel) => rel === '.',
          });
          identical[which] = d.length === 0;
          diffs.push(...d.map((x) => `${which}: ${x}`));
        } finally {
          unmount();
        }
      }
      return { identical, differences: diffs };
    }
  } finally {
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
    for (const close of closers) await close().catch(() => undefined);
    releases.releaseAfter();
  }
}

/** The run of median time, with its own pool and link figures (one run, not a mix of runs). */
function medianRun(runs: ImageRun[]): ImageRun {
  const ms = median(runs.map((r) => r.ms));
  return [...runs].sort((a, b) => Math.abs(a.ms - ms) - Math.abs(b.ms - ms))[0]!;
}

export function layersRows(f: LayersFigures): [string, string, string, string, string][] {
  const s = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
  const m = (b: number): string => `${(b / MiB).toFixed(1)} MiB`;
  const rows: [string, string, string, string, string][] = [];
  for (const p of f.pairs) {
    const load = `load ${p.loadAverage.join('→')}`;
    rows.push(
      [
        `second image's process-image, ${p.format}, ${p.pool} (${load})`,
        `second ${s(p.second.ms)}`,
        `first ${s(p.first.ms)}`,
        p.timeRatio.toFixed(2),
        '≤ 0.1',
      ],
      [
        `second image's pool growth (filesystem blocks), ${p.format}, ${p.pool}`,
        `second ${m(p.second.poolGrowthBytes)}`,
        `first ${m(p.first.poolGrowthBytes)}`,
        p.spaceRatio.toFixed(2),
        '≤ 0.1',
      ],
      [
        `bytes fetched for the second image (link count; agent: ${p.second.reportedBytes === null ? 'not reported' : m(p.second.reportedBytes)}), ${p.format}`,
        m(p.second.linkBytes),
        `archive ${m(p.archiveBytes.second)}`,
        p.downloadRatio.toFixed(3),
        '—',
      ],
    );
  }
  const u = f.umoci;
  rows.push(
    [
      `process-image of one image (${u.format}), whole process (load ${u.loadAverage.join('→')})`,
      s(u.thinrelayMs),
      `umoci raw unpack into fresh ext4, flush ${s(u.umociMs)}`,
      u.ratio.toFixed(2),
      '—',
    ],
    [
      'the same, the agent’s unpack step alone (download, verify, unpack)',
      u.thinrelayUnpackStepMs === null ? 'not logged' : s(u.thinrelayUnpackStepMs),
      s(u.umociMs),
      u.unpackStepRatio === null ? '—' : u.unpackStepRatio.toFixed(2),
      '—',
    ],
  );
  return rows;
}
