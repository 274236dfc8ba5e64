/**
 * npm run bench:fanout: how long the fan-out Lambda takes to put an S3 event
 * on every host queue, for 10, 100 and 1,000 hosts, side by side with the
 * obvious alternative in the same run (one SendMessage per message,
 * sequential), against the SQS emulator (local-aws-sqs on 127.0.0.1).
 *
 * What is timed is the real handler module (lambda/src/handler.ts,
 * handleNotification), with queue discovery by ListQueues:
 * - cold: a fresh module instance, as in a new Lambda container (new SQS
 *   client, ListQueues discovery, then publish);
 * - warm: the same instance invoked again (discovery cached, client reused).
 * The alternative also discovers with ListQueues and gets a fresh client.
 *
 * Two placements of the emulator, both in the table: in this process (as
 * the integration tests run it), where its CPU work shares our event loop and
 * concurrency can overlap nothing; and in its own process, where it works
 * beside us as a remote SQS would. Either way the emulator answers in about
 * a millisecond and real SQS does not: the sequential alternative pays the
 * network round trip once per message, the handler once per 10 messages and
 * 16 queues at a time, so real-world ratios are larger than these.
 *
 * The agent's per-image overhead rows (receive → start, outcome → delete)
 * come from `measureAgentOverhead` (agent-overhead.ts), against the same
 * in-process emulator.
 *
 * Not part of npm test: figures, not assertions (but every measurement checks
 * that each queue received exactly the messages sent to it, so no figure
 * comes from a fan-out that dropped messages).
 */
import { spawn } from 'node:child_process';
import { writeFileSync, mkdirSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { cpus, loadavg, totalmem, release } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  CreateQueueCommand,
  GetQueueAttributesCommand,
  ListQueuesCommand,
  SendMessageCommand,
  SQSClient,
} from '@aws-sdk/client-sqs';
import type { S3Event, S3EventRecord } from 'aws-lambda';
import { createSqsServer } from 'local-aws-sqs';
import { format, resolveConfig } from 'prettier';
import { serializeImageEvent, type ImageEvent } from '../../schema/image-event.js';
import { measureAgentOverhead } from './agent-overhead.js';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, '..', '..', '..');
const REGION = 'us-east-1';
const QUEUE_PREFIX = 'thinrelay-host-';
const HOST_COUNTS = [10, 100, 1000];
const RECORD_COUNTS = [1, 10];
const runsFor = (hosts: number): number =>
  Number(process.env.THINRELAY_BENCH_REPS ?? (hosts >= 1000 ? '3' : '5'));

// ------------------------------------------------------------ rows and table

/** One line of the table: a scenario, its median, and what it is compared with. */
export interface BenchRow {
  /** 'fan-out' here; 'agent per-image overhead' for the agent's rows. */
  section: string;
  scenario: string;
  /** Host queues involved (null where it doesn't apply). */
  hosts: number | null;
  /** Messages delivered per run (null where it doesn't apply). */
  messages: number | null;
  /** Median of the runs, milliseconds. */
  medianMs: number;
  runsMs: number[];
  /** The alternative measured in the same run, if any. */
  alternative: { label: string; medianMs: number; runsMs: number[] } | null;
  note?: string;
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function row(
  fields: Omit<BenchRow, 'medianMs' | 'alternative'> & {
    alternative?: { label: string; runsMs: number[] } | null;
  },
): BenchRow {
  const alt = fields.alternative;
  return {
    ...fields,
    medianMs: median(fields.runsMs),
    alternative: alt ? { ...alt, medianMs: median(alt.runsMs) } : null,
  };
}

const fmtMs = (ms: number): string => (ms >= 100 ? ms.toFixed(0) : ms.toFixed(1));

/** The one table every section prints into: ms, alternative ms, and how many times faster. */
export function formatTable(rows: readonly BenchRow[]): string {
  const headers = [
    'SECTION',
    'SCENARIO',
    'HOSTS',
    'MSGS',
    'MEDIAN ms',
    'ALTERNATIVE',
    'ALT ms',
    'ALT/OURS',
  ];
  const cells = rows.map((r) => [
    r.section,
    r.scenario,
    r.hosts === null ? '-' : String(r.hosts),
    r.messages === null ? '-' : String(r.messages),
    fmtMs(r.medianMs),
    r.alternative?.label ?? '-',
    r.alternative ? fmtMs(r.alternative.medianMs) : '-',
    r.alternative ? `${(r.alternative.medianMs / r.medianMs).toFixed(1)}x` : '-',
  ]);
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: readonly string[]): string =>
    c
      .map((x, i) => (i >= 2 && i !== 5 ? x.padStart(widths[i]!) : x.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...cells.map(line)].join('\n');
}

export function machine(): Record<string, unknown> {
  return {
    cpuModel: cpus()[0]?.model ?? 'unknown',
    cpus: cpus().length,
    memoryGiB: Math.round(totalmem() / 1024 ** 3),
    kernel: release(),
    node: process.version,
    // Other work on the machine skews every figure: record how busy it was.
    loadAverage1m: Number(loadavg()[0]?.toFixed(2)),
  };
}

export async function writeResults(
  file: string,
  rows: readonly BenchRow[],
  notes: string[],
): Promise<void> {
  mkdirSync(dirname(file), { recursive: true });
  const json = JSON.stringify({ date: new Date().toISOString(), machine: machine(), notes, rows });
  // Committed with the code, so formatted as `npm run lint` expects.
  const options = (await resolveConfig(file)) ?? {};
  writeFileSync(file, await format(json, { ...options, filepath: file }));
}

// ---------------------------------------------------------------- fan-out

type HandlerModule = typeof import('../../lambda/src/handler.js');

let instances = 0;

/** A fresh instance of the handler module: what a new Lambda container loads. */
async function freshHandler(): Promise<HandlerModule> {
  const url = pathToFileURL(join(repoRoot, 'dist', 'lambda', 'src', 'handler.js'));
  url.search = `container=${++instances}`;
  return (await import(url.href)) as HandlerModule;
}

function s3Record(i: number, runTag: string): S3EventRecord {
  return {
    eventVersion: '2.1',
    eventSource: 'aws:s3',
    awsRegion: REGION,
    eventTime: '2026-11-23T10:15:30.123Z',
    eventName: 'ObjectCreated:Put',
    userIdentity: { principalId: 'AWS:AIDAJDPLRKLG7UEXAMPLE' },
    requestParameters: { sourceIPAddress: '203.0.113.15' },
    responseElements: {
      'x-amz-request-id': 'C3D13FE58DE4C810',
      'x-amz-id-2': 'FMyUVURIY8/IgAtTv8xRjskZQ',
    },
    s3: {
      s3SchemaVersion: '1.0',
      configurationId: 'thinrelay-images',
      bucket: {
        name: 'thinrelay-images',
        ownerIdentity: { principalId: 'A3NL1KOZZKExample' },
        arn: 'arn:aws:s3:::thinrelay-images',
      },
      object: {
        key: `images/bench-${runTag}-${i}.tar.gz`,
        size: 1048576,
        eTag: 'd41d8cd98f00b204e9800998ecf8427e',
        versionId: '096fKKXTRTtl3on89fVO.nfljtsv6qko',
        sequencer: `0055AED6DCD9028${i.toString(16).toUpperCase()}`,
      },
    },
  };
}

function notification(records: number, runTag: string): S3Event {
  return { Records: Array.from({ length: records }, (_, i) => s3Record(i, runTag)) };
}

/** The same events the handler builds from the notification, for the alternative. */
function imageEvents(records: number, runTag: string): ImageEvent[] {
  return Array.from({ length: records }, (_, i) => ({
    schemaVersion: 1,
    kind: 'image.put',
    bucket: 'thinrelay-images',
    key: `images/bench-${runTag}-${i}.tar.gz`,
    versionId: '096fKKXTRTtl3on89fVO.nfljtsv6qko',
    eTag: 'd41d8cd98f00b204e9800998ecf8427e',
    size: 1048576,
    sequencer: `0055AED6DCD9028${i.toString(16).toUpperCase()}`,
    eventTime: '2026-11-23T10:15:30.123Z',
  }));
}

function newClient(endpoint: string): SQSClient {
  return new SQSClient({
    region: REGION,
    endpoint,
    credentials: { accessKeyId: 'fake', secretAccessKey: 'fake' },
  });
}

/** The obvious alternative: discover, then one SendMessage per (event, queue), one at a time. */
async function sequentialFanout(endpoint: string, events: readonly ImageEvent[]): Promise<number> {
  const sqs = newClient(endpoint);
  try {
    const urls: string[] = [];
    let NextToken: string | undefined;
    do {
      const out = await sqs.send(
        new ListQueuesCommand({ QueueNamePrefix: QUEUE_PREFIX, MaxResults: 1000, NextToken }),
      );
      urls.push(...(out.QueueUrls ?? []));
      NextToken = out.NextToken;
    } while (NextToken);
    let sent = 0;
    for (const url of urls) {
      for (const event of events) {
        await sqs.send(
          new SendMessageCommand({
            QueueUrl: url,
            MessageBody: serializeImageEvent(event),
            // The same attributes the handler sets, so both send the same bytes.
            MessageAttributes: {
              kind: { DataType: 'String', StringValue: event.kind },
              bucket: { DataType: 'String', StringValue: event.bucket },
              key: { DataType: 'String', StringValue: event.key },
            },
          }),
        );
        sent++;
      }
    }
    return sent;
  } finally {
    sqs.destroy();
  }
}

async function createHostQueues(sqs: SQSClient, from: number, to: number): Promise<void> {
  // Creation is setup, not measured: a few at a time is plenty.
  const names = Array.from(
    { length: to - from },
    (_, i) => `${QUEUE_PREFIX}default-h${String(from + i + 1).padStart(4, '0')}`,
  );
  for (let i = 0; i < names.length; i += 20) {
    await Promise.all(
      names.slice(i, i + 20).map((QueueName) => sqs.send(new CreateQueueCommand({ QueueName }))),
    );
  }
}

async function messageCounts(sqs: SQSClient): Promise<Map<string, number>> {
  const out = await sqs.send(
    new ListQueuesCommand({ QueueNamePrefix: QUEUE_PREFIX, MaxResults: 1000 }),
  );
  const counts = new Map<string, number>();
  const urls = out.QueueUrls ?? [];
  for (let i = 0; i < urls.length; i += 50) {
    await Promise.all(
      urls.slice(i, i + 50).map(async (QueueUrl) => {
        const a = await sqs.send(
          new GetQueueAttributesCommand({
            QueueUrl,
            AttributeNames: ['ApproximateNumberOfMessages'],
          }),
        );
        counts.set(QueueUrl, Number(a.Attributes?.ApproximateNumberOfMessages));
      }),
    );
  }
  return counts;
}

/** Every host queue got exactly `added` more messages: nothing dropped or doubled. */
async function checkDelivered(
  sqs: SQSClient,
  before: Map<string, number>,
  added: number,
): Promise<void> {
  const after = await messageCounts(sqs);
  for (const [url, n] of after) {
    const expected = (before.get(url) ?? 0) + added;
    if (n !== expected) throw new Error(`${url} holds ${n} messages, expected ${expected}`);
  }
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

interface Emulator {
  endpoint: string;
  stop(): Promise<void>;
}

async function inProcessEmulator(): Promise<Emulator> {
  const server = await createSqsServer({
    port: 0,
    hostname: '127.0.0.1',
    region: REGION,
    emulateQueueCreationLifecycle: false,
  });
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The same emulator in its own process: its CPU work no longer shares our event loop. */
async function childProcessEmulator(): Promise<Emulator> {
  const script = `
    import { createSqsServer } from 'local-aws-sqs';
    const server = await createSqsServer({ port: 0, hostname: '127.0.0.1', region: '${REGION}', emulateQueueCreationLifecycle: false });
    process.stdout.write(String(server.address().port) + '\\n');
    process.stdin.on('end', () => process.exit(0));
    process.stdin.resume();`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    cwd: repoRoot,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const port = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out.trim());
    });
    child.on('error', reject);
    child.on('exit', (code) => reject(new Error(`emulator process exited (${code})`)));
  });
  return {
    endpoint: `http://127.0.0.1:${port}`,
    stop: async () => {
      const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
      child.stdin.end();
      await exited;
    },
  };
}

/** One cold + warm + sequential round at `records`, timed. */
async function oneRound(
  endpoint: string,
  records: number,
  tag: string,
): Promise<{ cold: number; warm: number; sequential: number }> {
  const mod = await freshHandler();
  const cold = await timed(() => mod.handleNotification(notification(records, `${tag}-c`)));
  const warm = await timed(() => mod.handleNotification(notification(records, `${tag}-w`)));
  const sequential = await timed(() =>
    sequentialFanout(endpoint, imageEvents(records, `${tag}-s`)),
  );
  return { cold, warm, sequential };
}

async function benchFanout(section: string, emulator: Emulator): Promise<BenchRow[]> {
  const { endpoint } = emulator;
  // The handler's SDK client finds the emulator the way it finds any endpoint override.
  process.env.AWS_ENDPOINT_URL_SQS = endpoint;
  const sqs = newClient(endpoint);
  const rows: BenchRow[] = [];
  try {
    let queues = 0;
    for (const hosts of HOST_COUNTS) {
      await createHostQueues(sqs, queues, hosts);
      queues = hosts;
      if (hosts === HOST_COUNTS[0]) {
        // Warm-up, not recorded: module loading and JIT belong to no one's figure.
        await oneRound(endpoint, 10, 'warmup');
      }
      for (const records of RECORD_COUNTS) {
        const before = await messageCounts(sqs);
        const cold: number[] = [];
        const warm: number[] = [];
        const sequential: number[] = [];
        for (let run = 0; run < runsFor(hosts); run++) {
          const r = await oneRound(endpoint, records, `${hosts}-${records}-${run}`);
          cold.push(r.cold);
          warm.push(r.warm);
          sequential.push(r.sequential);
        }
        await checkDelivered(sqs, before, 3 * records * runsFor(hosts));
        const alternative = { label: 'sequential SendMessage', runsMs: sequential };
        const label = records === 1 ? '1 event' : `${records} records, 1 notification`;
        for (const [kind, runsMs] of [
          ['cold (ListQueues + publish)', cold],
          ['warm (cached discovery)', warm],
        ] as const) {
          rows.push(
            row({
              section,
              scenario: `${label}, ${kind}`,
              hosts,
              messages: hosts * records,
              runsMs,
              alternative,
            }),
          );
        }
        process.stderr.write(`  ${section}: measured ${hosts} hosts × ${records} record(s)\n`);
      }
    }
  } finally {
    sqs.destroy();
  }
  return rows;
}

// ------------------------------------------------------------------- main

async function main(): Promise<void> {
  Object.assign(process.env, {
    AWS_ACCESS_KEY_ID: 'fake',
    AWS_SECRET_ACCESS_KEY: 'fake',
    AWS_REGION: REGION,
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    HOST_QUEUE_PREFIX: QUEUE_PREFIX,
    IMAGE_PREFIX: 'images/',
    IMAGE_SUFFIXES: '.tar,.tar.gz',
    POWERTOOLS_LOG_LEVEL: 'WARN',
    POWERTOOLS_METRICS_DISABLED: 'true',
  });
  const m = machine();
  process.stderr.write(
    `fan-out bench on ${String(m.cpus)} × ${String(m.cpuModel)}, node ${process.version}, load ${String(m.loadAverage1m)}\n`,
  );
  const rows: BenchRow[] = [];
  for (const [section, start] of [
    ['fan-out, emulator in-process', inProcessEmulator],
    ['fan-out, emulator own process', childProcessEmulator],
  ] as const) {
    const emulator = await start();
    try {
      rows.push(...(await benchFanout(section, emulator)));
      if (section.endsWith('in-process')) {
        const sqs = newClient(emulator.endpoint);
        try {
          rows.push(...(await measureAgentOverhead(sqs)));
        } finally {
          sqs.destroy();
        }
      }
    } finally {
      await emulator.stop();
    }
  }
  const end = machine();
  const notes = [
    `Machine: ${String(m.cpus)} × ${String(m.cpuModel)}, ${String(m.memoryGiB)} GiB, node ${process.version}; 1-minute load average ${String(m.loadAverage1m)} at start, ${String(end.loadAverage1m)} at the end (other work on the machine shows up as noise, most in the 1-event rows).`,
    'Emulator local-aws-sqs on 127.0.0.1. In-process: it shares the event loop with the SDK (each call costs a few ms of CPU on this machine), so concurrency cannot overlap anything and the ratio shows calls saved by batching. Own process: its CPU work runs beside ours, as a remote SQS would. Real SQS adds a network round trip per call, which the sequential alternative pays once per message: real ratios are larger.',
    'cold = fresh handler module instance (new SQS client + ListQueues discovery + publish); warm = same instance invoked again (discovery cached for QUEUE_DISCOVERY_TTL_SECONDS); alternative = ListQueues + one SendMessage per message, sequential, fresh client. FANOUT_CONCURRENCY default (16).',
    `Medians of ${runsFor(10)} runs (${runsFor(1000)} for 1000 hosts), after one unrecorded warm-up round. Every run's delivery is checked: each host queue holds exactly the messages sent to it.`,
  ];
  if (!rows.some((r) => r.section === 'agent per-image overhead')) {
    notes.push(
      'agent per-image overhead: not measured (needs root for loop devices); run as root.',
    );
  }
  process.stdout.write(formatTable(rows) + '\n\n' + notes.map((n) => `* ${n}`).join('\n') + '\n');
  const file = join(repoRoot, 'bench', 'fanout-results.json');
  await writeResults(file, rows, notes);
  process.stdout.write(`\nresults: ${file}\n`);
}

// Run only as the entry point: the lead's code may import the table and row helpers.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
