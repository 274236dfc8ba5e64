/**
 * The agent's per-image overhead beyond the pipeline, measured on the real
 * Agent (loop backend, real store) against the SQS emulator the fan-out bench
 * already runs. The first message processes a real image from s3rver; the
 * next ones are newer events for the same object, so the pipeline takes its
 * already-done path (no S3 call) and what remains is the agent's own work:
 *
 * - receive → start: ReceiveMessage returned → pipeline started (lock, journal);
 * - outcome → delete: outcome recorded → DeleteMessage acknowledged;
 * - the whole message vs a bare consumer (receive + delete, nothing else).
 *
 * Needs root (loop devices, mkfs, mounts) for the first image; skipped otherwise.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CreateQueueCommand,
  DeleteMessageCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { loadConfig } from '../../host-agent/src/config.js';
import { Agent, type MessageTiming } from '../../host-agent/src/daemon/agent.js';
import { silentLogger } from '../../host-agent/src/log.js';
import { HostQueue } from '../../host-agent/src/queue/host-queue.js';
import { openRuntime } from '../../host-agent/src/runtime.js';
import { serializeImageEvent } from '../../schema/image-event.js';
import { buildSampleRootfs } from '../../host-agent/src/demo/sample-rootfs.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { startS3Emulator } from '../helpers/s3-emulator.js';
import { row, type BenchRow } from './fanout-bench.js';

const section = 'agent per-image overhead';

export async function measureAgentOverhead(sqs: SQSClient, runs = 30): Promise<BenchRow[]> {
  if (process.getuid?.() !== 0) return [];
  const s3 = await startS3Emulator();
  const stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-bench-agent-'));
  const rt = openRuntime({
    config: {
      ...loadConfig({ stateDir, backend: 'loop' }, {}),
      reserveBytes: 0,
      volumeSizeBytes: 64 * 1024 ** 2,
    },
    logger: silentLogger,
    s3: () => Promise.resolve(s3.client),
  });
  try {
    await s3.createBucket('bench-images');
    const { eTag } = await s3.putObject(
      'bench-images',
      'images/bench.tar',
      await buildSampleRootfs({ payloadBytes: 1024 ** 2 }),
    );
    const queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'bench-agent' })))
      .QueueUrl!;
    const timings: MessageTiming[] = [];
    const agent = new Agent({
      queue: new HostQueue(sqs, queueUrl),
      deps: rt,
      concurrency: 1,
      visibilitySeconds: 60,
      waitSeconds: 0,
      drainSeconds: 10,
      transientAttempts: 1,
      transientBaseDelayMs: 0,
      retryDelaySeconds: () => 0,
      onMessageDone: (t) => timings.push(t),
    });
    const running = agent.run();
    const send = (sequencer: number): Promise<unknown> =>
      sqs.send(
        new SendMessageCommand({
          QueueUrl: queueUrl,
          MessageBody: serializeImageEvent({
            schemaVersion: 1,
            kind: 'image.put',
            bucket: 'bench-images',
            key: 'images/bench.tar',
            versionId: null,
            eTag,
            size: null,
            sequencer: sequencer.toString(16).padStart(16, '0'),
            eventTime: '2026-01-01T00:00:00.000Z',
          }),
        }),
      );
    // One at a time, so each message's timings are its own.
    for (let i = 0; i <= runs; i++) {
      await send(0x1000 + i);
      while (timings.length <= i) await new Promise((r) => setTimeout(r, 2));
    }
    agent.stop('bench done');
    await running;
    const measured = timings.slice(1); // the first one ran the whole pipeline
    if (measured.some((t) => t.outcome !== 'applied')) {
      throw new Error(
        `agent bench: unexpected outcomes ${measured.map((t) => t.outcome).join(',')}`,
      );
    }
    const bare = await bareConsumer(sqs, queueUrl, runs);
    return [
      row({
        section,
        scenario: 'receive → pipeline start',
        hosts: null,
        messages: 1,
        runsMs: measured.map((t) => t.startedAt - t.receivedAt),
      }),
      row({
        section,
        scenario: 'outcome recorded → delete acked',
        hosts: null,
        messages: 1,
        runsMs: measured.map((t) => t.settledAt - t.decidedAt),
        alternative: { label: 'bare DeleteMessage', runsMs: bare.deleteMs },
      }),
      row({
        section,
        scenario: 'whole message, image already done',
        hosts: null,
        messages: 1,
        runsMs: measured.map((t) => t.settledAt - t.receivedAt),
        alternative: { label: 'bare receive+delete', runsMs: bare.totalMs },
        note: 'ours includes the store lookups, journal and the already-done pipeline path',
      }),
    ];
  } finally {
    rt.close();
    await s3.stop();
    releaseStateDir(stateDir);
  }
}

/** The obvious consumer: send, receive, delete — no store, no pipeline. */
async function bareConsumer(
  sqs: SQSClient,
  queueUrl: string,
  runs: number,
): Promise<{ deleteMs: number[]; totalMs: number[] }> {
  const deleteMs: number[] = [];
  const totalMs: number[] = [];
  for (let i = 0; i < runs; i++) {
    await sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: 'x' }));
    let m;
    let t0: number;
    do {
      const out = await sqs.send(
        new ReceiveMessageCommand({
          QueueUrl: queueUrl,
          WaitTimeSeconds: 0,
          MaxNumberOfMessages: 1,
        }),
      );
      t0 = performance.now();
      m = out.Messages?.[0];
    } while (m === undefined);
    const t1 = performance.now();
    await sqs.send(
      new DeleteMessageCommand({ QueueUrl: queueUrl, ReceiptHandle: m.ReceiptHandle }),
    );
    const t2 = performance.now();
    deleteMs.push(t2 - t1);
    totalMs.push(t2 - t0);
  }
  return { deleteMs, totalMs };
}
