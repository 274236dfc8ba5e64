/**
 * npm run demo (as root): the whole thinrelay path on this machine.
 *
 * The local stack (local-stack.ts): S3 (s3rver) whose object events go into
 * the real fan-out Lambda handler, SQS (local-aws-sqs), and the fleet table
 * in DynamoDB (dynalite). Two `thinrelay agent --group default` processes
 * (separate state dirs, the loop backend) register their own queues; a
 * sample rootfs becomes a snapshot on both and `fleet wait` follows it; a
 * hostile archive fails on both, `fleet status` says why and `fleet wait`
 * exits 1; its message reaches host-a's DLQ (`failed`, `dlq peek`); the
 * operator fixes the object and redrives. A third host joins late and
 * catches up from the bucket with no new upload; `fleet status` and `fleet
 * wait` then count it. Everything is removed on exit, also on Ctrl-C or
 * SIGTERM at any step (exit 130 / 143).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { GetQueueAttributesCommand } from '@aws-sdk/client-sqs';
import { detachLoop, listLoops } from '../sys/loop-devices.js';
import { listMounts, unmount } from '../sys/mounts.js';
import { startLocalStack, type LocalStack } from './local-stack.js';
import { buildHostileArchive, buildSampleRootfs } from './sample-rootfs.js';

const cli = fileURLToPath(new URL('../../../cli/thinrelay.mjs', import.meta.url));
const bucket = 'thinrelay-demo';
const key = 'images/sample-rootfs.tar.gz';
const hostileKey = 'images/hostile.tar';

const bold = (s: string): string => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const dim = (s: string): string => (process.stdout.isTTY ? `\x1b[2m${s}\x1b[0m` : s);
const t0 = performance.now();
const clock = (): string => `${((performance.now() - t0) / 1000).toFixed(1).padStart(5)}s`;

function say(step: string, text: string): void {
  process.stdout.write(`\n${bold(`[${step}]`)} ${text}\n`);
}

function note(text: string): void {
  process.stdout.write(`  ${dim(clock())} ${text}\n`);
}

/** Thrown where the demo stops because Ctrl-C (or SIGTERM) came: cleanup is already running. */
class Interrupted extends Error {
  constructor() {
    super('interrupted');
  }
}

/** The signal that stopped the demo, with its exit code; null while it runs. */
let interrupted = null as { signal: NodeJS.Signals; exitCode: number } | null;
/** CLI calls in flight: stopped (and waited for) when the demo is interrupted. */
const cliCalls = new Set<ChildProcess>();

interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
}

function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], {
      // The agents' lines tell the story; CLI calls speak only when something is wrong.
      env: { ...env, THINRELAY_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    cliCalls.add(child);
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      cliCalls.delete(child);
      resolve({ code, signal, stdout });
    });
  });
}

/**
 * A CLI call of the demo's story. One stopped by a signal (Ctrl-C reaches the
 * whole process group, so it may die before the demo hears of it) or cut
 * short by the demo's own interruption has no usable output: Interrupted.
 */
async function thinrelay(args: string[], env: NodeJS.ProcessEnv): Promise<CliResult> {
  if (interrupted !== null) throw new Interrupted();
  const r = await runCli(args, env);
  if (interrupted !== null || r.signal !== null || r.code === 130 || r.code === 143)
    throw new Interrupted();
  return r;
}

/** A CLI call's --json output: parsed only from a complete, successful run. */
async function thinrelayJson<T>(args: string[], env: NodeJS.ProcessEnv): Promise<T> {
  const r = await thinrelay(args, env);
  if (r.code !== 0) throw new Error(`thinrelay ${args.join(' ')} exited ${String(r.code)}`);
  try {
    return JSON.parse(r.stdout) as T;
  } catch (err) {
    throw new Error(
      `thinrelay ${args.join(' ')} printed no valid JSON: ${err instanceof Error ? err.message : String(err)}`,
      { cause: err },
    );
  }
}

/** An operator's command, shown with its output and exit code. */
async function operator(args: string[], env: NodeJS.ProcessEnv): Promise<number | null> {
  process.stdout.write(`  ${bold('$')} thinrelay ${args.join(' ')}\n`);
  const r = await thinrelay(args, env);
  process.stdout.write(r.stdout.replace(/^/gm, '    ').replace(/ +$/, ''));
  process.stdout.write(`    ${dim(`(exit ${String(r.code)})`)}\n`);
  return r.code;
}

interface Agent {
  hostId: string;
  env: NodeJS.ProcessEnv;
  logs: Record<string, unknown>[];
  stop(): Promise<void>;
}

const str = (v: unknown): string => (typeof v === 'string' ? v : JSON.stringify(v));

/** The agent's JSON log, shown as one short line per stage. */
function describeLog(l: Record<string, unknown>): string | null {
  const key = typeof l.key === 'string' ? l.key : '';
  switch (l.msg) {
    case 'registered in the fleet':
      return `registered in group ${str(l.group)} (queue ${str(l.queueUrl).split('/').pop()})`;
    case 'sync round done':
      return `sync round: ${str(l.keys)} keys in the bucket, ${str(l.processed)} processed`;
    case 'sync: image ready':
      return `sync: ${key} ready`;
    case 'unpacking':
      return `unpacking${key === '' ? '' : ` ${key}`} into a fresh ${(Number(l.sizeBytes) / 1024 ** 2).toFixed(0)} MiB volume`;
    case 'image event handled':
    case 'image event failed':
    case 'image event will be retried':
      return `${str(l.kind ?? 'message')} ${key} → ${str(l.outcome).toUpperCase()}${l.code ? ` [${str(l.code)}]` : ''} (receive #${str(l.receiveCount)})`;
    default:
      return null;
  }
}

function startAgent(hostId: string, stack: LocalStack, stateDir: string): Agent {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ...stack.env,
    THINRELAY_STATE_DIR: stateDir,
    THINRELAY_BACKEND: 'loop',
    THINRELAY_LOG_LEVEL: 'info',
    // local-aws-sqs holds every long poll for its full wait even when
    // messages are queued: poll in 1 s rounds here (production: 20 s).
    THINRELAY_WAIT_SECONDS: '1',
    THINRELAY_HEARTBEAT_SECONDS: '5',
    THINRELAY_METRICS_ADDR: 'off',
  };
  const child = spawn(process.execPath, [cli, 'agent', '--group', 'default', '--host-id', hostId], {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const logs: Record<string, unknown>[] = [];
  let partial = '';
  child.stderr.on('data', (d: Buffer) => {
    const lines = (partial + d.toString()).split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      if (!line.startsWith('{')) {
        if (line.trim() !== '') note(`${hostId}: ${line}`);
        continue;
      }
      let l: Record<string, unknown>;
      try {
        l = JSON.parse(line) as Record<string, unknown>;
      } catch {
        note(`${hostId}: ${line}`);
        continue;
      }
      logs.push(l);
      const text = describeLog(l);
      if (text !== null) note(`${bold(hostId)} ${text}`);
    }
  });
  const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
  return {
    hostId,
    env,
    logs,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      // An agent finishing an unpack stops within seconds; one that hangs is
      // killed (the pool destroy after it releases what it held).
      const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(killer);
    },
  };
}

async function waitFor(what: string, check: () => Promise<boolean> | boolean): Promise<void> {
  const deadline = Date.now() + 120_000;
  while (!(await check())) {
    if (interrupted !== null) throw new Interrupted();
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

async function liveHosts(env: NodeJS.ProcessEnv): Promise<number> {
  const r = await thinrelay(['fleet', 'hosts', '--json'], env);
  if (r.code !== 0) return 0;
  return (JSON.parse(r.stdout) as { counts: { live: number } }).counts.live;
}

function listTree(root: string, limit: number): string[] {
  const lines: string[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir).sort()) {
      const path = join(dir, name);
      const st = lstatSync(path);
      const kind = st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : '-';
      const mode = (st.mode & 0o7777).toString(8).padStart(4, '0');
      const target = st.isSymbolicLink() ? ` -> ${readlinkSync(path)}` : '';
      lines.push(
        `    ${kind}${mode} ${String(st.uid).padStart(4)}:${String(st.gid).padEnd(4)} ${String(st.size).padStart(9)}  /${relative(root, path)}${target}`,
      );
      if (st.isDirectory() && name !== 'lost+found') walk(path);
    }
  };
  walk(root);
  return lines.length > limit
    ? [...lines.slice(0, limit), `    … and ${lines.length - limit} more`]
    : lines;
}

async function upload(stack: LocalStack, k: string, body: Buffer): Promise<void> {
  await stack.s3.send(new PutObjectCommand({ Bucket: bucket, Key: k, Body: body }));
}

async function main(): Promise<number> {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  if (process.getuid?.() !== 0) {
    process.stderr.write(
      'thinrelay demo: needs root (loop devices, mkfs, mounts) — run: sudo npm run demo\n',
    );
    return 3;
  }
  const work = mkdtempSync(join(tmpdir(), 'thinrelay-demo-'));
  let stack: LocalStack | undefined;
  // Started (or starting) emulators: a Ctrl-C while they start stops them once up.
  let stackStarting: Promise<LocalStack> | undefined;
  const agents: Agent[] = [];
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      say('9/9', 'cleaning up: agents stopped, snapshots and pools removed, emulators stopped');
      // CLI calls first (Ctrl-C may have reached them already), then the agents.
      const calls = [...cliCalls].map(
        (c) =>
          new Promise<void>((resolve) =>
            c.exitCode !== null ? resolve() : c.once('close', () => resolve()),
          ),
      );
      for (const c of cliCalls) c.kill('SIGTERM');
      await Promise.all(calls);
      await Promise.all(agents.map((a) => a.stop()));
      for (const a of agents) await runCli(['pool', 'destroy', '--force'], a.env);
      await stackStarting?.then(
        (s) => s.stop(),
        () => undefined,
      );
      await releaseUnder(work);
      rmSync(work, { recursive: true, force: true });
    })());
  for (const [sig, exitCode] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const)
    process.on(sig, () => {
      // A second Ctrl-C while cleaning up changes nothing: the cleanup finishes.
      if (interrupted !== null) return;
      interrupted = { signal: sig, exitCode };
      process.stdout.write(`\n  ${sig}: stopping\n`);
      void cleanup().finally(() => process.exit(exitCode));
    });

  const join_ = (hostId: string): Agent => {
    if (interrupted !== null) throw new Interrupted();
    const stateDir = join(work, hostId);
    mkdirSync(stateDir);
    const a = startAgent(hostId, stack!, stateDir);
    agents.push(a);
    return a;
  };

  try {
    stackStarting = startLocalStack({
      bucket,
      // A refused image reaches the DLQ after its third receive.
      maxReceiveCount: 3,
      staleAfterSeconds: 60,
      onFanout: ({ key: k, eventName, error }) =>
        note(
          error === undefined
            ? `${bold('lambda')} ${eventName} ${k} → published to the group's host queues`
            : `${bold('lambda')} ${eventName} ${k} → FAILED: ${error instanceof Error ? error.message : str(error)}`,
        ),
    });
    stack = await stackStarting;
    const env = stack.env;
    say(
      '1/9',
      `work dir ${work}; local stack (as \`npm run stack\`): S3 ${stack.s3Endpoint} → fan-out Lambda handler → SQS ${stack.sqsEndpoint}; fleet table ${stack.fleetTable} in DynamoDB ${stack.dynamoEndpoint}`,
    );

    say('2/9', 'two hosts join group `default`: each agent creates its own queue and DLQ');
    join_('host-a');
    join_('host-b');
    await waitFor('both hosts to register', async () => (await liveHosts(env)) === 2);

    const image = await buildSampleRootfs({
      gzip: true,
      payloadBytes: 32 * 1024 ** 2,
      seed: 'demo',
    });
    say(
      '3/9',
      `upload a generated rootfs (${(image.length / 1024 ** 2).toFixed(1)} MiB gzip) to s3://${bucket}/${key}; a deploy pipeline waits for the fleet`,
    );
    await upload(stack, key, image);
    await operator(['fleet', 'wait', key, '--timeout', '2m', '--interval', '500ms'], env);

    say('4/9', 'each host has an activated snapshot device:');
    let device = '';
    for (const a of agents) {
      const snaps = await thinrelayJson<{ devicePath: string; key: string }[]>(
        ['snapshots', '--json'],
        a.env,
      );
      for (const s of snaps) note(`${a.hostId}: ${s.devicePath}  ${s.key}`);
      device ||= snaps[0]?.devicePath ?? '';
    }
    const mnt = join(work, 'mnt');
    mkdirSync(mnt);
    if (interrupted !== null) throw new Interrupted();
    execFileSync('mount', ['-o', 'ro', device, mnt]);
    try {
      process.stdout.write(`  files in ${device} (host-a, mounted read-only):\n`);
      process.stdout.write(listTree(mnt, 25).join('\n') + '\n');
    } finally {
      execFileSync('umount', [mnt]);
    }

    say('5/9', `upload a hostile archive (a member named ../../escape) to ${hostileKey}`);
    await upload(stack, hostileKey, await buildHostileArchive());
    await operator(['fleet', 'wait', hostileKey, '--timeout', '2m', '--interval', '500ms'], env);
    await operator(['fleet', 'status', hostileKey], env);

    say('6/9', "the message keeps failing on its receives; SQS moves it to each host's DLQ");
    const dlqA = agents[0]!.logs.find((l) => l.msg === 'registered in the fleet')?.dlqUrl;
    if (typeof dlqA !== 'string') throw new Error('host-a logged no DLQ URL at registration');
    await waitFor("the hostile image's message in host-a's DLQ", async () => {
      const out = await stack!.sqs.send(
        new GetQueueAttributesCommand({
          QueueUrl: dlqA,
          AttributeNames: ['ApproximateNumberOfMessages'],
        }),
      );
      return Number(out.Attributes?.ApproximateNumberOfMessages ?? 0) > 0;
    });
    note(
      `host-a: on the host, what failed and what its DLQ holds (the DLQ URL comes from its registration)`,
    );
    await operator(['failed'], agents[0]!.env);
    await operator(['dlq', 'peek'], agents[0]!.env);

    say(
      '7/9',
      "the operator fixes the object in S3 and redrives host-a's DLQ; the fleet converges",
    );
    await upload(
      stack,
      hostileKey,
      await buildSampleRootfs({ gzip: false, payloadBytes: 1024 ** 2, seed: 'fixed' }),
    );
    await operator(['redrive'], agents[0]!.env);
    note(
      "host-a handles the redriven message again: dropped as stale when the fix's own event came first, else it processes the current object",
    );
    await operator(['fleet', 'wait', hostileKey, '--timeout', '2m', '--interval', '500ms'], env);

    say('8/9', 'host-c joins late: no new upload, it catches up from the bucket');
    const late = join_('host-c');
    await waitFor('host-c to finish a sync round', () =>
      late.logs.some((l) => l.msg === 'sync round done'),
    );
    await operator(['fleet', 'hosts'], env);
    await operator(['fleet', 'status'], env);
    await operator(['fleet', 'wait', key, '--timeout', '1m'], env);
    process.stdout.write(`\n  done in ${clock().trim()}\n`);
    return 0;
  } finally {
    await cleanup();
  }
}

/**
 * The last resort after the agents' own `pool destroy --force`: whatever is
 * still mounted or attached under the demo's work dir (the demo's own mount,
 * an agent killed mid-unpack) is released, so the work dir can go.
 */
async function releaseUnder(dir: string): Promise<void> {
  const prefix = dir + '/';
  const mounts = listMounts()
    .map((m) => m.mountpoint)
    .filter((m) => m.startsWith(prefix))
    .sort()
    .reverse();
  for (const m of mounts) await unmount(m);
  for (const l of await listLoops())
    if (l.backingFile.startsWith(prefix)) await detachLoop(l.device);
}

let exitCode: number;
try {
  exitCode = await main();
} catch (err) {
  // Interrupted mid-step: what failed is the interruption's doing, not a fault.
  if (interrupted === null) throw err;
  exitCode = interrupted.exitCode;
}
process.exitCode = interrupted?.exitCode ?? exitCode;
