/**
 * npm run bench (as root): thinrelay side by side with the obvious
 * alternative, in one run, on a real Debian rootfs. Prints a table and
 * writes bench/results.json. Not part of npm test: figures, not assertions.
 * Its `runtime` section (runtime-bench.ts) puts the pinned Node.js runtime
 * beside Node 20.
 */
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  createReadStream,
} from 'node:fs';
import { cpus, loadavg, totalmem, release } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { StateStore } from '../../host-agent/src/store/index.js';
import { currentOwner } from '../../host-agent/src/store/owner.js';
import { compareTrees } from '../helpers/tree-compare.js';
import { startLinkProxy } from '../helpers/link-proxy.js';
import {
  S3RVER_ACCESS_KEY,
  S3RVER_REGION,
  S3RVER_SECRET_KEY,
  s3EnvFor,
  startS3Emulator,
  type S3Emulator,
} from '../helpers/s3-emulator.js';
import { cliPath } from '../helpers/cli.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { freshFs } from './fresh-fs.js';
import { benchLayers, layersRows, type LayersFigures } from './layers-bench.js';
import { benchLifecycle, lifecycleRows, type LifecycleFigures } from './lifecycle-bench.js';
import { benchRuntime, runtimeRows, type RuntimeFigures } from './runtime-bench.js';

const execFileAsync = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, '..', '..', '..');
const cacheDir = process.env.THINRELAY_BENCH_CACHE ?? '/var/cache/thinrelay-bench';
const mirror = process.env.THINRELAY_BENCH_MIRROR ?? 'http://deb.debian.org/debian';
const reps = Number(process.env.THINRELAY_BENCH_REPS ?? '3');
/** THINRELAY_BENCH_ONLY=unpack,e2e,store,layers,lifecycle,runtime: run only these sections (figures printed, not saved). */
const only = process.env.THINRELAY_BENCH_ONLY?.split(',') ?? null;

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** A Debian bookworm minbase rootfs tar, built once with debootstrap and cached. */
function rootfsTar(): string {
  const tar = join(cacheDir, 'bookworm-minbase.tar');
  if (existsSync(tar)) return tar;
  mkdirSync(cacheDir, { recursive: true });
  if (spawnSync('sh', ['-c', 'command -v debootstrap']).status !== 0) {
    sh('apt-get', ['install', '-y', '-qq', 'debootstrap']);
  }
  const dir = join(cacheDir, 'rootfs');
  rmSync(dir, { recursive: true, force: true });
  console.error(`building ${tar} with debootstrap from ${mirror} (once, ~1 min)…`);
  sh('debootstrap', ['--variant=minbase', 'bookworm', dir, mirror]);
  sh('tar', ['--numeric-owner', '--xattrs', '-C', dir, '-cf', tar + '.partial', '.']);
  sh('mv', [tar + '.partial', tar]);
  rmSync(dir, { recursive: true, force: true });
  return tar;
}

function time(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}

interface UnpackFigures {
  gnuMs: number;
  thinrelayMs: number;
  ratio: number;
  /** Without Node's start-up: the unpack inside a running agent, plus flush + umount. */
  thinrelayInProcessMs: number;
  inProcessRatio: number;
  peakRssBytes: number;
  /** 1-minute load average before and after. */
  loadAverage: [number, number];
  identicalToGnuTar: boolean;
  differences: string[];
}

async function benchUnpack(work: string, tar: string): Promise<UnpackFigures> {
  const child = join(here, 'unpack-child.js');
  const gnu: number[] = [];
  const ours: number[] = [];
  /** thinrelay's unpack as the running agent does it: Node already started. */
  const oursWarm: number[] = [];
  let rss = 0;
  const load0 = loadAverage();
  readFileSync(tar); // warm the page cache for both
  for (let i = 0; i < reps; i++) {
    for (const who of i % 2 === 0 ? ['gnu', 'thinrelay'] : ['thinrelay', 'gnu']) {
      const fs = await freshFs(work, `${who}-${i}`);
      try {
        let ms: number;
        let inProcessMs = 0;
        if (who === 'gnu') {
          ms = time(() => sh('tar', ['--numeric-owner', '--xattrs', '-xpf', tar, '-C', fs.mnt]));
        } else {
          let out = '';
          ms = time(() => (out = sh(process.execPath, [child, tar, fs.mnt])));
          const report = JSON.parse(out) as { maxRssBytes: number; ms: number };
          rss = Math.max(rss, report.maxRssBytes);
          inProcessMs = report.ms;
        }
        const flush = fs.flushAndUnmount();
        (who === 'gnu' ? gnu : ours).push(ms + flush);
        if (who !== 'gnu') oursWarm.push(inProcessMs + flush);
      } finally {
        fs.dispose();
      }
    }
  }
  // Fidelity, once: both trees mounted side by side.
  const a = await freshFs(work, 'fidelity-gnu');
  const b = await freshFs(work, 'fidelity-thinrelay');
  let differences: string[];
  try {
    sh('tar', ['--numeric-owner', '--xattrs', '-xpf', tar, '-C', a.mnt]);
    sh(process.execPath, [child, tar, b.mnt]);
    differences = await compareTrees(a.mnt, b.mnt);
  } finally {
    a.dispose();
    b.dispose();
  }
  const gnuMs = median(gnu);
  const thinrelayMs = median(ours);
  const thinrelayInProcessMs = median(oursWarm);
  return {
    gnuMs,
    thinrelayMs,
    ratio: thinrelayMs / gnuMs,
    thinrelayInProcessMs,
    inProcessRatio: thinrelayInProcessMs / gnuMs,
    peakRssBytes: rss,
    loadAverage: [load0, loadAverage()],
    identicalToGnuTar: differences.length === 0,
    differences: differences.slice(0, 20),
  };
}

/** One contender's runs over one link. */
interface Contender {
  medianMs: number;
  runsMs: number[];
  /** Peak RSS of the thinrelay process (max over runs); null for pipelines. */
  peakRssBytes: number | null;
  /**
   * CPU seconds (user + system, child processes included) per GiB of the
   * object, median over runs: thinrelay's whole process (its mkfs, mounts and
   * snapshot copy too); a pipeline's `download | tar` and its sparse copy.
   */
  cpuSecondsPerGiB?: number;
}

interface LinkFigures {
  link: string;
  /** Per-connection response bandwidth (bytes/s); null = unthrottled, no proxy. */
  bytesPerSecond: number | null;
  latencyMs: number;
  /** 1-minute load average before and after the row (other work shares the cores). */
  loadAverage: [number, number];
  thinrelay: Contender;
  /** The same with THINRELAY_DOWNLOAD_CONCURRENCY=1: one stream, as before ranged GETs. */
  singleStream: Contender | null;
  alternativeName: string;
  alternative: Contender;
  /** thinrelay / alternative. */
  ratio: number;
  /**
   * The same with THINRELAY_DOWNLOAD_THREAD=0: the download on the main thread, as
   * before the worker (issue 23), alternating with the worker in the same row.
   */
  mainThread?: Contender;
  /** The other pipeline over the same link (curl | tar where the alternative is the AWS CLI's, and back). */
  otherName?: string;
  other?: Contender;
  /** thinrelay / other. */
  otherRatio?: number;
}

/** Download alone (bytes discarded) over the 25 MB/s link: the downloader's settings. */
interface DownloadSetting {
  setting: string;
  medianMs: number;
  peakRssBytes: number;
}

interface DownloadFigures {
  link: string;
  loadAverage: [number, number];
  awsCliMs: number;
  settings: DownloadSetting[];
}

interface EndToEndFigures {
  download: DownloadFigures;
  links: LinkFigures[];
  alreadyDoneMs: number;
  /** The same with --etag (as an event-driven caller knows it): no S3 request, no SDK. */
  alreadyDonePinnedMs: number;
  alreadyDoneLoadAverage: number;
}

const loadAverage = (): number => Number(loadavg()[0]!.toFixed(2));

/** Size of the bench's rootfs tar (set once it is known): the GiB of CPU seconds per GiB. */
let tarBytes = 0;
const gibOf = (bytes: number): number => bytes / 1024 ** 3;

/** The AWS CLI v2 (Debian `awscli`), installed when missing; never a v1 found earlier on PATH. */
function awsCli(): string {
  const path = '/usr/bin/aws';
  if (!existsSync(path)) {
    console.error('installing awscli (Debian package) for the comparison…');
    sh('apt-get', ['install', '-y', '-qq', 'awscli']);
  }
  const version = sh(path, ['--version']);
  if (!version.startsWith('aws-cli/2.')) throw new Error(`${path} is not AWS CLI v2: ${version}`);
  return path;
}

function contender(runsMs: number[], rss: number[], cpuSeconds: number[] = []): Contender {
  return {
    medianMs: median(runsMs),
    runsMs,
    peakRssBytes: rss.length > 0 ? Math.max(...rss) : null,
    ...(cpuSeconds.length > 0 ? { cpuSecondsPerGiB: median(cpuSeconds) / gibOf(tarBytes) } : {}),
  };
}

/**
 * process-image of the rootfs, whole process, against the standard-tools job
 * that gives the same result: a fresh ext4 loop filesystem (mkfs, mount), the
 * download piped into GNU tar, flush and unmount, a sparse copy as the
 * snapshot. Over a link capped per connection (through the link proxy) or
 * straight to the emulator.
 */
async function benchEndToEnd(work: string, tar: string): Promise<EndToEndFigures> {
  const s3 = await startS3Emulator();
  const bucket = 'thinrelay-bench';
  const key = 'images/bookworm-minbase.tar';
  const aws = awsCli();
  const baseEnv = {
    ...process.env,
    ...s3EnvFor(s3),
    THINRELAY_BUCKET: bucket,
    THINRELAY_RESERVE_BYTES: '0',
    THINRELAY_LOG_LEVEL: 'warn',
  };
  // Async: the emulator and the proxy run in this process and must keep serving meanwhile.
  const run = async (
    cmd: string,
    args: string[],
    env: NodeJS.ProcessEnv,
  ): Promise<{ ms: number; stdout: string }> => {
    const t0 = performance.now();
    const { stdout } = await execFileAsync(cmd, args, { env, maxBuffer: 64 * 1024 ** 2 });
    return { ms: performance.now() - t0, stdout };
  };
  const rssFile = join(work, 'rss');
  const cpuFile = join(work, 'cpu');
  tarBytes = statSync(tar).size;
  /** `/usr/bin/time -f '%U %S'` written to `file`: user + system seconds, children included. */
  const cpuOf = (file: string): number =>
    readFileSync(file, 'utf8')
      .trim()
      .split('\n')
      .pop()!
      .split(' ')
      .reduce((sum, x) => sum + Number(x), 0);
  /** process-image in a fresh state dir; returns time, peak RSS and CPU seconds. */
  const thinrelay = async (
    endpoint: string,
    extraEnv: Record<string, string>,
  ): Promise<{ ms: number; rss: number; cpu: number; stateDir: string; eTag: string }> => {
    const stateDir = mkdtempSync(join(work, 'state-'));
    sh('sync', []);
    const env = { ...baseEnv, AWS_ENDPOINT_URL_S3: endpoint, ...extraEnv };
    const args = ['process-image', '--s3-key', key, '--state-dir', stateDir, '--json'];
    const { ms, stdout } = await run(
      '/usr/bin/time',
      ['-o', rssFile, '-f', '%M %U %S', process.execPath, cliPath, ...args],
      env,
    );
    const [maxRssKiB, ...cpu] = readFileSync(rssFile, 'utf8').trim().split('\n').pop()!.split(' ');
    const rss = Number(maxRssKiB) * 1024;
    // process-image --json gives the ETag as scripts take it: `etag`, without S3's quotes.
    const { etag } = JSON.parse(stdout) as { etag: string };
    return { ms, rss, cpu: cpu.reduce((sum, x) => sum + Number(x), 0), stateDir, eTag: etag };
  };
  const disposeState = async (stateDir: string): Promise<void> => {
    await run(
      process.execPath,
      [cliPath, 'pool', 'destroy', '--force', '--state-dir', stateDir],
      baseEnv,
    );
    releaseStateDir(stateDir);
  };
  /** mkfs + mount, `download | tar`, flush + umount, sparse copy: the standard-tools job. */
  const standardTools = async (
    name: string,
    download: string,
  ): Promise<{ ms: number; cpu: number }> => {
    sh('sync', []);
    const t0 = performance.now();
    const fs = await freshFs(work, name);
    const snapshot = join(work, `${name}.snap`);
    try {
      await run(
        '/usr/bin/time',
        [
          ...['-o', cpuFile, '-f', '%U %S', 'bash', '-c'],
          `set -o pipefail; ${download} | tar --numeric-owner --xattrs -xpf - -C ${fs.mnt}`,
        ],
        baseEnv,
      );
      let cpu = cpuOf(cpuFile);
      fs.flushAndUnmount();
      sh('/usr/bin/time', [
        '-o',
        cpuFile,
        '-f',
        '%U %S',
        'cp',
        '--sparse=always',
        fs.file,
        snapshot,
      ]);
      cpu += cpuOf(cpuFile);
      return { ms: performance.now() - t0, cpu };
    } finally {
      fs.dispose();
      rmSync(snapshot, { force: true });
    }
  };

  /** The newest finished run's state dir: kept for the already-done rows. */
  let lastState: string | null = null;
  try {
    await s3.createBucket(bucket);
    await s3.client.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: key,
        Body: createReadStream(tar),
        ContentLength: statSync(tar).size,
      }),
    );
    const download = await benchDownload(s3, bucket, key, aws, baseEnv, run);
    const links: LinkFigures[] = [];
    let eTag = '';
    const rows: {
      link: string;
      rate: number | null;
      latencyMs: number;
      alt: 'aws' | 'curl';
      other: 'aws' | 'curl' | null;
    }[] = [
      { link: '25 MB/s per connection, 2 ms', rate: 25e6, latencyMs: 2, alt: 'aws', other: 'curl' },
      {
        link: '100 MB/s per connection, 2 ms',
        rate: 100e6,
        latencyMs: 2,
        alt: 'curl',
        other: 'aws',
      },
      {
        link: 'unthrottled (emulator on 127.0.0.1)',
        rate: null,
        latencyMs: 0,
        alt: 'curl',
        other: 'aws',
      },
    ];
    for (const row of rows) {
      const proxy =
        row.rate === null
          ? null
          : await startLinkProxy({
              targetPort: s3.port,
              bytesPerSecond: row.rate,
              latencyMs: row.latencyMs,
            });
      const endpoint = proxy?.endpoint ?? s3.endpoint;
      const pipelineName = (which: 'aws' | 'curl'): string =>
        which === 'aws'
          ? 'aws s3 cp … - | tar (AWS CLI v2, parallel ranged GETs), fresh ext4, umount, sparse copy'
          : 'curl | tar, fresh ext4, umount, sparse copy';
      const downloadBy = (which: 'aws' | 'curl'): string =>
        which === 'aws'
          ? `${aws} --endpoint-url ${endpoint} s3 cp s3://${bucket}/${key} -`
          : `curl -sSf -H x-amz-content-sha256:UNSIGNED-PAYLOAD --aws-sigv4 aws:amz:${S3RVER_REGION}:s3 --user ${S3RVER_ACCESS_KEY}:${S3RVER_SECRET_KEY} ${endpoint}/${bucket}/${key}`;
      const alternativeName = pipelineName(row.alt);
      const download = downloadBy(row.alt);
      const load0 = loadAverage();
      const ours: number[] = [];
      const oursRss: number[] = [];
      const single: number[] = [];
      const singleRss: number[] = [];
      const alt: number[] = [];
      const other: number[] = [];
      const mainThread: number[] = [];
      const mainThreadRss: number[] = [];
      /** CPU seconds per run, by contender. */
      const cpu = new Map<string, number[]>();
      const addCpu = (who: string, seconds: number): void =>
        void cpu.set(who, [...(cpu.get(who) ?? []), seconds]);
      try {
        for (let i = 0; i < reps; i++) {
          const order = [
            'thinrelay',
            'alternative',
            'main-thread',
            ...(row.other !== null ? ['other'] : []),
            ...(row.alt === 'aws' ? ['single'] : []),
          ];
          if (i % 2 === 1) order.reverse();
          for (const who of order) {
            if (who === 'alternative') {
              const r = await standardTools(`e2e-${row.alt}-${i}`, download);
              alt.push(r.ms);
              addCpu(who, r.cpu);
              continue;
            }
            if (who === 'other' && row.other !== null) {
              const r = await standardTools(`e2e-${row.other}-${i}`, downloadBy(row.other));
              other.push(r.ms);
              addCpu(who, r.cpu);
              continue;
            }
            const r = await thinrelay(
              endpoint,
              who === 'single'
                ? { THINRELAY_DOWNLOAD_CONCURRENCY: '1' }
                : who === 'main-thread'
                  ? { THINRELAY_DOWNLOAD_THREAD: '0' }
                  : {},
            );
            const [times, rss] =
              who === 'single'
                ? [single, singleRss]
                : who === 'main-thread'
                  ? [mainThread, mainThreadRss]
                  : [ours, oursRss];
            times.push(r.ms);
            rss.push(r.rss);
            addCpu(who, r.cpu);
            eTag = r.eTag;
            if (lastState !== null) await disposeState(lastState);
            lastState = r.stateDir;
          }
        }
      } finally {
        await proxy?.close();
      }
      const thinrelayFigures = contender(ours, oursRss, cpu.get('thinrelay'));
      const alternative = contender(alt, [], cpu.get('alternative'));
      links.push({
        link: row.link,
        bytesPerSecond: row.rate,
        latencyMs: row.latencyMs,
        loadAverage: [load0, loadAverage()],
        thinrelay: thinrelayFigures,
        singleStream: single.length > 0 ? contender(single, singleRss, cpu.get('single')) : null,
        alternativeName,
        alternative,
        ratio: thinrelayFigures.medianMs / alternative.medianMs,
        mainThread: contender(mainThread, mainThreadRss, cpu.get('main-thread')),
        ...(row.other !== null
          ? {
              otherName: pipelineName(row.other),
              other: contender(other, [], cpu.get('other')),
              otherRatio: thinrelayFigures.medianMs / contender(other, []).medianMs,
            }
          : {}),
      });
      console.error(`${row.link}: ${JSON.stringify(links.at(-1))}`);
    }

    // Already done: the last state dir holds the finished image.
    const already: number[] = [];
    const alreadyPinned: number[] = [];
    const load = loadAverage();
    if (lastState !== null) {
      const args = ['process-image', '--s3-key', key, '--state-dir', lastState];
      for (let j = 0; j < 5; j++) {
        already.push((await run(process.execPath, [cliPath, ...args], baseEnv)).ms);
        alreadyPinned.push(
          (await run(process.execPath, [cliPath, ...args, '--etag', eTag], baseEnv)).ms,
        );
      }
      await disposeState(lastState);
      lastState = null;
    }
    return {
      download,
      links,
      alreadyDoneMs: median(already),
      alreadyDonePinnedMs: median(alreadyPinned),
      alreadyDoneLoadAverage: load,
    };
  } finally {
    if (lastState !== null) await disposeState(lastState).catch(() => undefined);
    await s3.stop();
  }
}

type Run = (
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv,
) => Promise<{ ms: number; stdout: string }>;

/**
 * The download alone through the 25 MB/s, 2 ms link, bytes discarded:
 * thinrelay's downloader with several part sizes, concurrencies and HTTP
 * agent settings, against `aws s3 cp … - > /dev/null`.
 */
async function benchDownload(
  s3: S3Emulator,
  bucket: string,
  key: string,
  aws: string,
  env: NodeJS.ProcessEnv,
  run: Run,
): Promise<DownloadFigures> {
  const MiB = 1024 ** 2;
  const settings: [string, string[]][] = [
    ['8 MiB × 8 (default)', [String(8 * MiB), '8', '1']],
    ['8 MiB × 16', [String(8 * MiB), '16', '1']],
    ['16 MiB × 8', [String(16 * MiB), '8', '1']],
    ['16 MiB × 16', [String(16 * MiB), '16', '1']],
    ['4 MiB × 8', [String(4 * MiB), '8', '1']],
    ['8 MiB × 8, keep-alive off', [String(8 * MiB), '8', '0']],
  ];
  const proxy = await startLinkProxy({ targetPort: s3.port, bytesPerSecond: 25e6, latencyMs: 2 });
  const load0 = loadAverage();
  const awsRuns: number[] = [];
  const runs = new Map<string, { ms: number[]; rss: number }>();
  try {
    const childEnv = { ...env, AWS_ENDPOINT_URL_S3: proxy.endpoint };
    for (let i = 0; i < reps; i++) {
      const order: (string | null)[] = [null, ...settings.map(([name]) => name)];
      if (i % 2 === 1) order.reverse();
      for (const name of order) {
        if (name === null) {
          const cmd = `${aws} --endpoint-url ${proxy.endpoint} s3 cp s3://${bucket}/${key} - > /dev/null`;
          awsRuns.push((await run('bash', ['-c', cmd], env)).ms);
          continue;
        }
        const args = settings.find(([n]) => n === name)![1];
        const { stdout } = await run(
          process.execPath,
          [join(here, 'download-child.js'), bucket, key, ...args],
          childEnv,
        );
        const r = JSON.parse(stdout) as { ms: number; maxRssBytes: number };
        const entry = runs.get(name) ?? { ms: [], rss: 0 };
        entry.ms.push(r.ms);
        entry.rss = Math.max(entry.rss, r.maxRssBytes);
        runs.set(name, entry);
      }
    }
  } finally {
    await proxy.close();
  }
  const figures: DownloadFigures = {
    link: '25 MB/s per connection, 2 ms',
    loadAverage: [load0, loadAverage()],
    awsCliMs: median(awsRuns),
    settings: settings.map(([name]) => ({
      setting: name,
      medianMs: median(runs.get(name)!.ms),
      peakRssBytes: runs.get(name)!.rss,
    })),
  };
  console.error(`download alone: ${JSON.stringify(figures)}`);
  return figures;
}

interface StoreFigures {
  imagesJson10kMs: number;
  checkpointTransitionMeanMs: number;
  checkpointTransitionP99Ms: number;
}

function benchStore(work: string): StoreFigures {
  const stateDir = mkdtempSync(join(work, 'store-'));
  const store = StateStore.open(stateDir);
  store.tx(() => {
    for (let i = 0; i < 10_000; i++) {
      const image = store.images.upsert({
        bucket: 'b',
        key: `images/app-${i}.tar.gz`,
        versionId: null,
        eTag: `"${i.toString(16).padStart(32, '0')}"`,
        size: 200_000_000 + i,
      });
      store.images.markProcessing(image.id);
      store.images.recordDigest(image.id, i.toString(16).padStart(64, '0'));
      store.images.markReady(image.id);
    }
  });
  const image = store.images.upsert({
    bucket: 'b',
    key: 'images/checkpoints.tar',
    versionId: null,
    eTag: '"c"',
    size: 1,
  });
  const samples: number[] = [];
  for (let j = 0; j < 200; j++) {
    const job = store.jobs.create(image.id, currentOwner(), ['a', 'b', 'c']);
    for (let p = 0; p < 3; p++) {
      for (const to of ['running', 'complete'] as const) {
        const t0 = performance.now();
        store.tx(() => store.jobs.setStep(job.id, p, to));
        samples.push(performance.now() - t0);
      }
    }
    store.jobs.setStatus(job.id, 'complete');
  }
  store.close();
  const runs: number[] = [];
  for (let i = 0; i < 5; i++) {
    runs.push(
      time(() =>
        execFileSync(process.execPath, [cliPath, 'images', '--json', '--state-dir', stateDir], {
          stdio: ['ignore', 'pipe', 'pipe'],
          maxBuffer: 64 * 1024 ** 2,
        }),
      ),
    );
  }
  rmSync(stateDir, { recursive: true, force: true });
  samples.sort((a, b) => a - b);
  return {
    imagesJson10kMs: median(runs),
    checkpointTransitionMeanMs: samples.reduce((a, b) => a + b, 0) / samples.length,
    checkpointTransitionP99Ms: samples[Math.floor(samples.length * 0.99)]!,
  };
}

function machine(): Record<string, string> {
  const cpuModel = cpus()[0]?.model ?? 'unknown';
  // The floor under every whole-process figure: an empty Node process.
  const nodeStart = median(
    [1, 2, 3, 4, 5].map(() => time(() => sh(process.execPath, ['-e', '0']))),
  );
  const fsType = sh('findmnt', ['-n', '-o', 'FSTYPE', '--target', cacheDir]).trim();
  return {
    cpu: `${cpus().length} × ${cpuModel}`,
    memory: `${Math.round(totalmem() / 1024 ** 3)} GiB`,
    kernel: release(),
    node: `${process.version} (empty process: ${nodeStart.toFixed(0)} ms)`,
    tar: sh('tar', ['--version']).split('\n')[0] ?? '',
    filesystem: `${fsType} (backing files of the loop devices)`,
  };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0)
    throw new Error('npm run bench needs root (loop devices, mkfs, mounts)');
  if (only?.every((section) => section === 'lifecycle') === true) {
    // The lifecycle section makes its own small images: no Debian rootfs needed.
    mkdirSync(cacheDir, { recursive: true });
    const work = mkdtempSync(join(cacheDir, 'run-'));
    try {
      const lifecycle = await benchLifecycle(work);
      console.log(JSON.stringify(lifecycle));
      printRows(lifecycleRows(lifecycle));
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
    return;
  }
  const tar = rootfsTar();
  const entries = sh('tar', ['-tf', tar])
    .split('\n')
    .filter((l) => l !== '').length;
  const work = mkdtempSync(join(cacheDir, 'run-'));
  try {
    if (only !== null) {
      // A partial run (THINRELAY_BENCH_ONLY) prints its figures; results.json stays whole.
      if (only.includes('unpack')) console.log(JSON.stringify(await benchUnpack(work, tar)));
      if (only.includes('e2e')) console.log(JSON.stringify(await benchEndToEnd(work, tar)));
      if (only.includes('store')) console.log(JSON.stringify(benchStore(work)));
      if (only.includes('layers')) {
        const layers = await benchLayers(work, tar, reps);
        console.log(JSON.stringify(layers));
        printRows(layersRows(layers));
      }
      if (only.includes('lifecycle')) {
        const lifecycle = await benchLifecycle(work);
        console.log(JSON.stringify(lifecycle));
        printRows(lifecycleRows(lifecycle));
      }
      if (only.includes('runtime')) {
        const runtime = await benchRuntime(work, cacheDir, tar, reps);
        console.log(JSON.stringify(runtime));
        console.log(`machine: ${Object.values(machine()).join('; ')}\n`);
        printRows(runtimeRows(runtime), runtimeHeader);
      }
      return;
    }
    const unpack = await benchUnpack(work, tar);
    const e2e = await benchEndToEnd(work, tar);
    const store = benchStore(work);
    const layers = await benchLayers(work, tar, reps);
    const lifecycle = await benchLifecycle(work);
    const runtime = await benchRuntime(work, cacheDir, tar, reps);
    const results = {
      date: new Date().toISOString(),
      machine: machine(),
      input: {
        rootfs: 'debootstrap --variant=minbase bookworm',
        tarBytes: statSync(tar).size,
        entries,
      },
      repetitions: reps,
      unpack,
      endToEnd: e2e,
      store,
      layers,
      lifecycle,
      runtime,
    };
    const out = join(repoRoot, 'bench', 'results.json');
    mkdirSync(dirname(out), { recursive: true });
    // Formatted with the repository's prettier settings: `npm run lint` stays green.
    const { format, resolveConfig } = await import('prettier');
    const options = (await resolveConfig(out)) ?? {};
    const json = JSON.stringify(results, null, 2);
    writeFileSync(out, await format(json, { ...options, filepath: out }));
    printTable(results);
    console.log(`\nwritten: ${out}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function printTable(r: {
  unpack: UnpackFigures;
  endToEnd: EndToEndFigures;
  store: StoreFigures;
  layers: LayersFigures;
  lifecycle: LifecycleFigures;
  runtime: RuntimeFigures;
  input: { tarBytes: number; entries: number };
  machine: Record<string, string>;
}): void {
  const s = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
  const rows: [string, string, string, string, string][] = [
    [
      'unpack into fresh ext4 (incl. flush + umount), whole process',
      `thinrelay ${s(r.unpack.thinrelayMs)}`,
      `GNU tar ${s(r.unpack.gnuMs)}`,
      r.unpack.ratio.toFixed(2),
      '≤ 1.25 (aim ≤ 1.0)',
    ],
    [
      'the same, inside a running agent (no Node start-up)',
      `thinrelay ${s(r.unpack.thinrelayInProcessMs)}`,
      `GNU tar ${s(r.unpack.gnuMs)}`,
      r.unpack.inProcessRatio.toFixed(2),
      '≤ 1.25 (aim ≤ 1.0)',
    ],
    ...r.endToEnd.download.settings.map((d): [string, string, string, string, string] => [
      `download alone, ${r.endToEnd.download.link}, ${d.setting} (load ${r.endToEnd.download.loadAverage.join('→')}; RSS ${(d.peakRssBytes / 1024 ** 2).toFixed(0)} MiB)`,
      `thinrelay ${s(d.medianMs)}`,
      `aws s3 cp … - > /dev/null ${s(r.endToEnd.download.awsCliMs)}`,
      (d.medianMs / r.endToEnd.download.awsCliMs).toFixed(2),
      '—',
    ]),
    ...r.endToEnd.links.flatMap((l): [string, string, string, string, string][] => [
      [
        `process-image end to end, ${l.link} (load ${l.loadAverage.join('→')})`,
        `thinrelay ${s(l.thinrelay.medianMs)}`,
        `${l.alternativeName} ${s(l.alternative.medianMs)}`,
        l.ratio.toFixed(2),
        l.bytesPerSecond === 25e6 ? '≤ 1.0' : '≤ 1.2',
      ],
      ...(l.singleStream === null
        ? []
        : [
            [
              `the same, thinrelay with one stream (THINRELAY_DOWNLOAD_CONCURRENCY=1)`,
              `thinrelay ${s(l.singleStream.medianMs)}`,
              `${s(l.alternative.medianMs)}`,
              (l.singleStream.medianMs / l.alternative.medianMs).toFixed(2),
              '—',
            ] as [string, string, string, string, string],
          ]),
    ]),
    [
      'peak RSS of process-image (any link)',
      `${(Math.max(...r.endToEnd.links.map((l) => l.thinrelay.peakRssBytes ?? 0)) / 1024 ** 2).toFixed(0)} MiB`,
      '',
      '',
      '≤ 150 MB',
    ],
    [
      `process-image, already done (whole process, HEAD to S3; load ${r.endToEnd.alreadyDoneLoadAverage})`,
      `${r.endToEnd.alreadyDoneMs.toFixed(0)} ms`,
      '',
      '',
      '≤ 300 ms',
    ],
    [
      'process-image --etag, already done (no S3 request)',
      `${r.endToEnd.alreadyDonePinnedMs.toFixed(0)} ms`,
      '',
      '',
      '≤ 300 ms',
    ],
    [
      'peak RSS during unpack',
      `${(r.unpack.peakRssBytes / 1024 ** 2).toFixed(0)} MiB`,
      '',
      '',
      '≤ 150 MB',
    ],
    [
      '`thinrelay images --json`, 10,000 images (whole process)',
      `${r.store.imagesJson10kMs.toFixed(0)} ms`,
      '',
      '',
      '≤ 300 ms',
    ],
    [
      'one checkpoint transition (mean / p99)',
      `${r.store.checkpointTransitionMeanMs.toFixed(2)} / ${r.store.checkpointTransitionP99Ms.toFixed(2)} ms`,
      '',
      '',
      '≤ 2 ms',
    ],
    ...layersRows(r.layers),
    ...lifecycleRows(r.lifecycle),
  ];
  console.log(
    `\nrootfs: ${(r.input.tarBytes / 1024 ** 2).toFixed(0)} MiB tar, ${r.input.entries} entries; result identical to GNU tar's: ${r.unpack.identicalToGnuTar}`,
  );
  console.log(`machine: ${Object.values(r.machine).join('; ')}\n`);
  printRows(rows);
  console.log('');
  printRows(runtimeRows(r.runtime), runtimeHeader);
}

const runtimeHeader = ['measure', 'pinned runtime', 'Node 20', 'ratio', 'target'];

function printRows(
  rows: [string, string, string, string, string][],
  header = ['measure', 'thinrelay', 'alternative', 'ratio', 'target'],
): void {
  console.log(`| ${header.join(' | ')} |\n|---|---|---|---|---|`);
  for (const row of rows) console.log(`| ${row.join(' | ')} |`);
}

await main();
