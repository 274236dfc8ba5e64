/**
 * npm run demo (as root): the whole thinrelay path on this machine.
 *
 * The local stack (local-stack.ts): S3 (s3rver) whose object events go into
 * the real fan-out Lambda handler, SQS (local-aws-sqs), and the fleet table
 * in DynamoDB (dynalite). Two `thinrelay agent --group default` processes
 * (separate state dirs, the loop backend) register their own queues; a
 * sample rootfs becomes a snapshot on both and `fleet wait` follows it; a
 * hostile archive fails on both, `fleet status` says why and `fleet wait`
 * exits 1; the operator fixes the object. A third host joins late and
 * catches up from the bucket with no new upload; `fleet status` and `fleet
 * wait` then count it. Everything is removed on exit, also on Ctrl-C.
 */
import { execFileSync, spawn } from 'node:child_process';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { PutObjectCommand } from '@aws-sdk/client-s3';
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

function thinrelay(
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ code: number | null; stdout: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], {
      // The agents' lines tell the story; CLI calls speak only when something is wrong.
      env: { ...env, THINRELAY_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout }));
  });
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
      const l = JSON.parse(line) as Record<string, unknown>;
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
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

async function waitFor(what: string, check: () => Promise<boolean> | boolean): Promise<void> {
  const deadline = Date.now() + 120_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

async function liveHosts(env: NodeJS.ProcessEnv): Promise<number> {
  const r = await thinrelay(['fleet', 'hosts', '--json'], env);
  return r.code === 0 ? (JSON.parse(r.stdout) as { counts: { live: number } }).counts.live : 0;
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
  const agents: Agent[] = [];
  let cleaned = false;
  const cleanup = async (): Promise<void> => {
    if (cleaned) return;
    cleaned = true;
    say('8/8', 'cleaning up: agents stopped, snapshots and pools removed, emulators stopped');
    for (const a of agents) await a.stop();
    for (const a of agents) await thinrelay(['pool', 'destroy', '--force'], a.env);
    await stack?.stop();
    rmSync(work, { recursive: true, force: true });
  };
  for (const [sig, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const)
    process.once(sig, () => void cleanup().then(() => process.exit(code)));

  const join_ = (hostId: string): Agent => {
    const stateDir = join(work, hostId);
    mkdirSync(stateDir);
    const a = startAgent(hostId, stack!, stateDir);
    agents.push(a);
    return a;
  };

  try {
    stack = await startLocalStack({
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
    const env = stack.env;
    say(
      '1/8',
      `local stack (as \`npm run stack\`): S3 ${stack.s3Endpoint} → fan-out Lambda handler → SQS ${stack.sqsEndpoint}; fleet table ${stack.fleetTable} in DynamoDB ${stack.dynamoEndpoint}`,
    );

    say('2/8', 'two hosts join group `default`: each agent creates its own queue and DLQ');
    join_('host-a');
    join_('host-b');
    await waitFor('both hosts to register', async () => (await liveHosts(env)) === 2);

    const image = await buildSampleRootfs({
      gzip: true,
      payloadBytes: 32 * 1024 ** 2,
      seed: 'demo',
    });
    say(
      '3/8',
      `upload a generated rootfs (${(image.length / 1024 ** 2).toFixed(1)} MiB gzip) to s3://${bucket}/${key}; a deploy pipeline waits for the fleet`,
    );
    await upload(stack, key, image);
    await operator(['fleet', 'wait', key, '--timeout', '2m', '--interval', '500ms'], env);

    say('4/8', 'each host has an activated snapshot device:');
    let device = '';
    for (const a of agents) {
      const r = await thinrelay(['snapshots', '--json'], a.env);
      const snaps = JSON.parse(r.stdout) as { devicePath: string; key: string }[];
      for (const s of snaps) note(`${a.hostId}: ${s.devicePath}  ${s.key}`);
      device ||= snaps[0]?.devicePath ?? '';
    }
    const mnt = join(work, 'mnt');
    mkdirSync(mnt);
    execFileSync('mount', ['-o', 'ro', device, mnt]);
    try {
      process.stdout.write(`  files in ${device} (host-a, mounted read-only):\n`);
      process.stdout.write(listTree(mnt, 25).join('\n') + '\n');
    } finally {
      execFileSync('umount', [mnt]);
    }

    say('5/8', `upload a hostile archive (a member named ../../escape) to ${hostileKey}`);
    await upload(stack, hostileKey, await buildHostileArchive());
    await operator(['fleet', 'wait', hostileKey, '--timeout', '2m', '--interval', '500ms'], env);
    await operator(['fleet', 'status', hostileKey], env);

    say('6/8', 'the operator fixes the object in S3; the fleet converges');
    await upload(
      stack,
      hostileKey,
      await buildSampleRootfs({ gzip: false, payloadBytes: 1024 ** 2, seed: 'fixed' }),
    );
    await operator(['fleet', 'wait', hostileKey, '--timeout', '2m', '--interval', '500ms'], env);

    say('7/8', 'host-c joins late: no new upload, it catches up from the bucket');
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

process.exitCode = await main();
