/**
 * npm run demo (as root): the whole thinrelay path on this machine.
 *
 * Embedded S3 (s3rver) and SQS (local-aws-sqs) emulators; s3rver's object
 * events go into the real fan-out Lambda handler, which publishes to two host
 * queues (each with a DLQ); two `thinrelay agent` processes (separate state
 * dirs, the loop backend) apply them. A sample rootfs becomes a snapshot on
 * both hosts; a hostile archive reaches both DLQs; the operator fixes the
 * object and redrives. Everything is removed on exit, also on Ctrl-C.
 */
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { GetQueueAttributesCommand } from '@aws-sdk/client-sqs';
import { startLocalStack, type LocalHost, type LocalStack } from './local-stack.js';
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

interface Agent {
  host: LocalHost;
  env: NodeJS.ProcessEnv;
  outcomes: Record<string, unknown>[];
  stop(): Promise<void>;
}

const str = (v: unknown): string => (typeof v === 'string' ? v : JSON.stringify(v));

/** The agent's JSON log, shown as one short line per stage. */
function describeLog(l: Record<string, unknown>): string | null {
  const key = typeof l.key === 'string' ? l.key : '';
  switch (l.msg) {
    case 'agent started':
      return `agent started (queue ${str(l.queueUrl).split('/').pop()})`;
    case 'unpacking':
      return `unpacking into a fresh ${(Number(l.sizeBytes) / 1024 ** 2).toFixed(0)} MiB volume`;
    case 'step done':
      return `step ${str(l.step)}: ${str(l.status)}${l.step === 'unpack' && l.entries !== undefined ? ` (${str(l.entries)} entries)` : ''}`;
    case 'image event handled':
    case 'image event failed':
    case 'image event will be retried':
      return `${str(l.kind ?? 'message')} ${key} → ${str(l.outcome).toUpperCase()}${l.code ? ` [${str(l.code)}]` : ''} (receive #${str(l.receiveCount)})${l.reason && l.outcome !== 'failed' ? ` — ${str(l.reason)}` : ''}`;
    default:
      return null;
  }
}

function startAgent(host: LocalHost, stack: LocalStack, stateDir: string): Agent {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ...stack.env,
    THINRELAY_STATE_DIR: stateDir,
    THINRELAY_BACKEND: 'loop',
    THINRELAY_LOG_LEVEL: 'info',
    // local-aws-sqs holds every long poll for its full wait even when
    // messages are queued: poll in 1 s rounds here (production: 20 s).
    THINRELAY_WAIT_SECONDS: '1',
    THINRELAY_METRICS_ADDR: 'off',
  };
  const child = spawn(process.execPath, [cli, 'agent', '--queue-url', host.queueUrl], {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const outcomes: Record<string, unknown>[] = [];
  let partial = '';
  child.stderr.on('data', (d: Buffer) => {
    const lines = (partial + d.toString()).split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      if (!line.startsWith('{')) {
        if (line.trim() !== '') note(`${host.name}: ${line}`);
        continue;
      }
      const l = JSON.parse(line) as Record<string, unknown>;
      if (typeof l.outcome === 'string') outcomes.push(l);
      const text = describeLog(l);
      if (text !== null) note(`${bold(host.name)} ${text}`);
    }
  });
  const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
  return {
    host,
    env,
    outcomes,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

async function waitFor(what: string, check: () => Promise<boolean> | boolean): Promise<void> {
  const deadline = Date.now() + 90_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

async function dlqDepth(stack: LocalStack, host: LocalHost): Promise<number> {
  const out = await stack.sqs.send(
    new GetQueueAttributesCommand({
      QueueUrl: host.dlqUrl,
      AttributeNames: ['ApproximateNumberOfMessages'],
    }),
  );
  return Number(out.Attributes?.ApproximateNumberOfMessages ?? 0);
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
    say('7/7', 'cleaning up: agents stopped, snapshots and pools removed, emulators stopped');
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

  try {
    stack = await startLocalStack({
      bucket,
      hosts: ['host-a', 'host-b'],
      maxReceiveCount: 3,
      onFanout: ({ key: k, eventName, error }) =>
        note(
          error === undefined
            ? `${bold('lambda')} ${eventName} ${decodeURIComponent(k.replace(/\+/g, ' '))} → published to ${stack!.hosts.length} host queues`
            : `${bold('lambda')} ${eventName} ${k} → FAILED: ${error instanceof Error ? error.message : str(error)}`,
        ),
    });
    say(
      '1/7',
      `local stack: S3 ${stack.s3Endpoint} (s3rver) → fan-out Lambda handler → SQS ${stack.sqsEndpoint} (local-aws-sqs)`,
    );
    for (const h of stack.hosts) note(`${h.name}: ${h.queueUrl}  (DLQ after 3 receives)`);

    say('2/7', 'two agents, one per host (loop backend, separate state dirs)');
    for (const h of stack.hosts) {
      const stateDir = join(work, h.name);
      mkdirSync(stateDir);
      agents.push(startAgent(h, stack, stateDir));
    }

    const image = await buildSampleRootfs({
      gzip: true,
      payloadBytes: 32 * 1024 ** 2,
      seed: 'demo',
    });
    say(
      '3/7',
      `upload a generated rootfs (${(image.length / 1024 ** 2).toFixed(1)} MiB gzip) to s3://${bucket}/${key}`,
    );
    await upload(stack, key, image);
    await waitFor('both hosts to apply the image', () =>
      agents.every((a) => a.outcomes.some((o) => o.key === key && o.outcome === 'applied')),
    );

    say('4/7', 'each host has an activated snapshot device:');
    let device = '';
    for (const a of agents) {
      const r = await thinrelay(['snapshots', '--json'], a.env);
      const snaps = JSON.parse(r.stdout) as { devicePath: string; key: string }[];
      for (const s of snaps) note(`${a.host.name}: ${s.devicePath}  ${s.key}`);
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

    say('5/7', `upload a hostile archive (a member named ../../escape) to ${hostileKey}`);
    await upload(stack, hostileKey, await buildHostileArchive());
    await waitFor('the hostile image to reach both DLQs', async () => {
      const depths = await Promise.all(stack!.hosts.map((h) => dlqDepth(stack!, h)));
      return depths.every((d) => d === 1);
    });
    note('both DLQs hold the event; on a host, `thinrelay failed` says why:');
    const failed = await thinrelay(['failed'], agents[0]!.env);
    process.stdout.write(failed.stdout.replace(/^/gm, '    '));
    const peek = await thinrelay(
      ['dlq', 'peek', '--dlq-url', stack.hosts[0]!.dlqUrl],
      agents[0]!.env,
    );
    process.stdout.write(peek.stdout.replace(/^/gm, '    '));

    say('6/7', 'the operator fixes the object in S3, then redrives both DLQs');
    await upload(
      stack,
      hostileKey,
      await buildSampleRootfs({ gzip: false, payloadBytes: 1024 ** 2, seed: 'fixed' }),
    );
    await waitFor('both hosts to apply the fixed object', () =>
      agents.every((a) => a.outcomes.some((o) => o.key === hostileKey && o.outcome === 'applied')),
    );
    for (const a of agents) {
      const r = await thinrelay(['redrive', '--dlq-url', a.host.dlqUrl], a.env);
      process.stdout.write(r.stdout.replace(/^/gm, `    ${a.host.name}: `));
    }
    // The redriven (old) events are older than the fixed upload's: dropped as stale.
    await waitFor('the redriven events to be handled', () =>
      agents.every(
        (a) => a.outcomes.filter((o) => o.key === hostileKey && o.outcome === 'stale').length > 0,
      ),
    );
    process.stdout.write(`\n  done in ${clock().trim()}\n`);
    return 0;
  } finally {
    await cleanup();
  }
}

process.exitCode = await main();
