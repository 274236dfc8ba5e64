/** The daemon's pure parts: configuration, failure classes, per-key ordering, metrics text. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorJson, formatError } from '../../host-agent/src/cli/output.js';
import {
  classifyFailure,
  describeFailure,
  isPermanentFailureCode,
} from '../../host-agent/src/pipeline/failure.js';
import { defaultRetryDelaySeconds } from '../../host-agent/src/daemon/agent.js';
import { loadDaemonConfig } from '../../host-agent/src/daemon/config.js';
import { KeyLock } from '../../host-agent/src/daemon/key-lock.js';
import { AgentMetrics, Counter } from '../../host-agent/src/daemon/metrics.js';
import {
  EnvironmentError,
  ExitCode,
  ImageError,
  InternalError,
  TransientError,
  UsageError,
} from '../../host-agent/src/errors.js';
import { regionOfQueueUrl } from '../../host-agent/src/queue/sqs-client.js';

const url = 'https://sqs.eu-west-1.amazonaws.com/123456789012/thinrelay-host-default-web01';

describe('daemon configuration', () => {
  test('defaults: 20 s long poll, 120 s visibility, 2 at once, metrics on loopback', () => {
    const c = loadDaemonConfig({ queueUrl: url }, {});
    assert.equal(c.waitSeconds, 20);
    assert.equal(c.visibilitySeconds, 120);
    assert.equal(c.concurrency, 2);
    assert.deepEqual(c.metricsAddress, { host: '127.0.0.1', port: 9464 });
  });
  test('flags win over the environment', () => {
    const c = loadDaemonConfig(
      { queueUrl: url, concurrency: '4' },
      { THINRELAY_QUEUE_URL: 'http://x/1/other', THINRELAY_CONCURRENCY: '8' },
    );
    assert.equal(c.queueUrl, url);
    assert.equal(c.concurrency, 4);
  });
  test('bad values are usage errors that name the setting', () => {
    assert.throws(() => loadDaemonConfig({}, {}), /no queue given/);
    assert.throws(() => loadDaemonConfig({ queueUrl: 'not-a-url' }, {}), /not an SQS queue URL/);
    assert.throws(
      () => loadDaemonConfig({ queueUrl: url, concurrency: '0' }, {}),
      /--concurrency must be a whole number from 1 to 64/,
    );
    assert.throws(
      () => loadDaemonConfig({ queueUrl: url }, { THINRELAY_WAIT_SECONDS: '21' }),
      /THINRELAY_WAIT_SECONDS/,
    );
    assert.throws(() => loadDaemonConfig({ queueUrl: url, metricsAddr: '9464' }, {}), /HOST:PORT/);
    assert.equal(loadDaemonConfig({ queueUrl: url, metricsAddr: 'off' }, {}).metricsAddress, null);
  });
  test('the queue URL names the region when none is configured', () => {
    assert.equal(regionOfQueueUrl(url), 'eu-west-1');
    assert.equal(regionOfQueueUrl('http://127.0.0.1:9324/000000000000/q'), null);
  });
});

describe('failure classes', () => {
  const live = new AbortController().signal;
  test('a bad image is permanent; network, host and configuration are transient', () => {
    assert.equal(classifyFailure(new ImageError('ARCHIVE_PATH_ESCAPE', 'x'), live), 'permanent');
    assert.equal(classifyFailure(new ImageError('LIMIT_ENTRY_COUNT', 'x'), live), 'permanent');
    assert.equal(classifyFailure(new TransientError('DOWNLOAD_FAILED', 'x'), live), 'transient');
    assert.equal(classifyFailure(new EnvironmentError('LOW_SPACE', 'x'), live), 'transient');
    assert.equal(classifyFailure(new UsageError('CONFIG', 'x'), live), 'transient');
    assert.equal(classifyFailure(new Error('EIO'), live), 'transient');
  });
  test("a bug (InternalError) is neither the image's fault nor the host's: retried, recorded INTERNAL, exit 70", () => {
    const bug = new InternalError('invalid image transition ready → processing');
    assert.equal(classifyFailure(bug, live), 'transient');
    assert.deepEqual(describeFailure(bug, live), {
      code: 'INTERNAL',
      message: 'invalid image transition ready → processing',
    });
    // Catch-up sync retries an image that failed for a bug; a permanent code would not be.
    assert.equal(isPermanentFailureCode('INTERNAL'), false);
    assert.equal(bug.exitCode, ExitCode.internal);
    assert.equal(ExitCode.internal, 70);
    assert.match(
      formatError('gc', bug),
      /^thinrelay: gc: \[INTERNAL\] invalid image transition ready → processing — a bug in thinrelay: .*THINRELAY_DEBUG=1/,
    );
    assert.deepEqual(errorJson(bug, bug.exitCode), {
      error: { code: 'INTERNAL', message: bug.message, hint: bug.hint },
      exitCode: 70,
    });
  });
  test("a tool's unreadable answer is the host's: transient, never permanent", () => {
    const err = new EnvironmentError('TOOL_OUTPUT', 'unexpected thin-pool status');
    assert.equal(classifyFailure(err, live), 'transient');
    assert.equal(err.exitCode, ExitCode.environment);
  });
  test('a changed or vanished object supersedes the event; an abort interrupts it', () => {
    assert.equal(classifyFailure(new ImageError('OBJECT_CHANGED', 'x'), live), 'superseded');
    assert.equal(classifyFailure(new ImageError('OBJECT_NOT_FOUND', 'x'), live), 'superseded');
    const aborted = AbortSignal.abort();
    assert.equal(
      classifyFailure(new ImageError('ARCHIVE_PATH_ESCAPE', 'x'), aborted),
      'interrupted',
    );
  });
  test('retry delays double from 15 s up to 15 min, each jittered ±20 %', () => {
    for (const [count, nominal] of [
      [1, 15],
      [2, 30],
      [3, 60],
      [7, 900],
      [20, 900],
    ] as const) {
      const seen = new Set<number>();
      for (let i = 0; i < 200; i++) {
        const d = defaultRetryDelaySeconds(count);
        assert.ok(
          d >= Math.round(nominal * 0.8) && d <= Math.round(nominal * 1.2),
          `${count}: ${d}`,
        );
        seen.add(d);
      }
      // Jitter: a fleet's hosts do not all pick the same delay.
      assert.ok(seen.size > 3, `${count}: only ${[...seen].join(',')}`);
    }
  });
});

describe('KeyLock', () => {
  test('work for one key runs one at a time, in arrival order; other keys run alongside', async () => {
    const lock = new KeyLock();
    const log: string[] = [];
    const job = (key: string, name: string, ms: number) =>
      lock.run(key, async () => {
        log.push(`start ${name}`);
        await sleep(ms);
        log.push(`end ${name}`);
      });
    await Promise.all([job('a', 'a1', 30), job('a', 'a2', 1), job('b', 'b1', 5)]);
    assert.deepEqual(log, ['start a1', 'start b1', 'end b1', 'end a1', 'start a2', 'end a2']);
    assert.equal(lock.size, 0, 'no lock left behind');
  });
  test('a failure releases the key for the next one', async () => {
    const lock = new KeyLock();
    await assert.rejects(
      lock.run('k', () => Promise.reject(new Error('boom'))),
      /boom/,
    );
    assert.equal(await lock.run('k', () => Promise.resolve(7)), 7);
  });
});

describe('metrics', () => {
  test('Prometheus text: HELP, TYPE, labelled counters, histogram buckets', () => {
    let inFlight = 3;
    const m = new AgentMetrics(() => inFlight);
    m.messages.inc({ outcome: 'applied' });
    m.messages.inc({ outcome: 'applied' });
    m.messages.inc({ outcome: 'stale' });
    m.imageDuration.observe(0.7);
    inFlight = 1;
    const text = m.render();
    assert.match(text, /^# TYPE thinrelay_messages_total counter$/m);
    assert.match(text, /^thinrelay_messages_total\{outcome="applied"\} 2$/m);
    assert.match(text, /^thinrelay_messages_total\{outcome="stale"\} 1$/m);
    assert.match(text, /^thinrelay_image_duration_seconds_bucket\{le="0.5"\} 0$/m);
    assert.match(text, /^thinrelay_image_duration_seconds_bucket\{le="1"\} 1$/m);
    assert.match(text, /^thinrelay_image_duration_seconds_count 1$/m);
    assert.match(text, /^thinrelay_images_in_flight 1$/m);
  });
  test('collect: images by status, pool data and metadata, build info, process and event loop', async () => {
    const m = new AgentMetrics(() => 0, {
      imagesByStatus: () => ({ ready: 3, failed: 1 }),
      pool: () =>
        Promise.resolve({
          backend: 'devmapper',
          location: 'pool',
          exists: true,
          dataTotalBytes: 1000,
          dataUsedBytes: 250,
          metadataTotalBytes: 100,
          metadataUsedBytes: 10,
          freeBytes: 650,
          healthy: true,
          detail: '',
        }),
    });
    const text = await m.collect();
    assert.match(text, /^thinrelay_images\{status="ready"\} 3$/m);
    assert.match(text, /^thinrelay_images\{status="failed"\} 1$/m);
    assert.match(text, /^thinrelay_pool_bytes\{area="data",kind="used"\} 250$/m);
    assert.match(text, /^thinrelay_pool_bytes\{area="metadata",kind="total"\} 100$/m);
    assert.match(text, /^thinrelay_pool_free_bytes 650$/m);
    assert.match(text, /^thinrelay_pool_healthy 1$/m);
    assert.match(text, /^thinrelay_build_info\{version="[^"]+",commit="[^"]+",node="v[^"]+"\} 1$/m);
    assert.match(text, /^# TYPE process_cpu_system_seconds_total counter$/m);
    assert.match(text, /^process_open_fds [1-9]\d*$/m);
    assert.match(text, /^nodejs_eventloop_lag_seconds\{quantile="max"\} [\d.e-]+$/m);
    const failing = new AgentMetrics(() => 0, { pool: () => Promise.reject(new Error('gone')) });
    const t2 = await failing.collect();
    assert.match(t2, /^thinrelay_pool_status_errors_total 1$/m);
    assert.match(t2, /^thinrelay_pool_healthy 0$/m);
  });
  test('label values are escaped', () => {
    const c = new Counter('x_total', 'x');
    c.inc({ reason: 'a"b\\c\nd' });
    assert.match(c.render(), /^x_total\{reason="a\\"b\\\\c\\nd"\} 1$/m);
  });
});
