/**
 * The fleet view's logic (expected hosts, stale hosts, target version, counts,
 * outcome) over items read back from a real fleet table (dynalite) through
 * FleetReader, as `fleet status` reads them.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { queueNames } from '../../schema/fleet.js';
import { FleetReader } from '../../host-agent/src/fleet/view/fleet-reader.js';
import {
  allImageStatuses,
  hostSummaries,
  imageStatus,
  parseDuration,
} from '../../host-agent/src/fleet/view/fleet-view.js';
import {
  createFleetTable,
  startDynamoEmulator,
  type DynamoEmulator,
} from '../helpers/dynamo-emulator.js';
import {
  deploymentConfig,
  hostImageItem,
  hostItem,
  putItems,
  rolloutItem,
} from '../helpers/fleet-items.js';

let dynamo: DynamoEmulator;
let n = 0;
const now = Date.now();
const config = deploymentConfig({
  routes: { 'images/gpu/': ['gpu'], 'images/': ['default'] },
  groups: {
    default: deploymentConfig().groups.default!,
    gpu: deploymentConfig().groups.default!,
  },
  staleAfterSeconds: 300,
});

before(async () => {
  dynamo = await startDynamoEmulator();
});
after(async () => {
  await dynamo.stop();
});

async function table(items: object[], pageSize?: number): Promise<FleetReader> {
  const name = `fleet-view-${++n}`;
  await createFleetTable(dynamo.client, name);
  await putItems(dynamo.client, name, [config, ...items]);
  return new FleetReader(dynamo.client, name, pageSize);
}

async function statusOf(reader: FleetReader, key: string, etag?: string) {
  const [cfg, hosts, items, rollout] = await Promise.all([
    reader.config(),
    reader.hosts(),
    reader.imageItems(key),
    reader.latestPutRollout(key),
  ]);
  return imageStatus({
    key,
    config: cfg,
    hosts,
    items,
    rollout,
    asked: etag === undefined ? null : { eTag: etag, source: 'flag' },
    now,
  });
}

test('counts only live hosts of the routed groups; stale, gone and other groups are not expected', async () => {
  const key = 'images/app.tar';
  const reader = await table([
    hostItem('a'),
    hostItem('b'),
    hostItem('c'),
    hostItem('stale', { lastSeenAt: now - 301_000 }),
    hostItem('gone', { state: 'gone' }),
    hostItem('g1', { group: 'gpu' }),
    hostImageItem('a', key, 'ready'),
    hostImageItem('b', key, 'processing'),
    hostImageItem('stale', key, 'failed', { reasonCode: 'ARCHIVE_PATH_ESCAPE', message: 'x' }),
    rolloutItem(key, '0001', []),
  ]);
  const s = await statusOf(reader, key);
  assert.deepEqual(s.groups, ['default']);
  assert.equal(s.etag, 'etag-1');
  assert.equal(s.etagSource, 'rollout');
  assert.deepEqual(s.counts, {
    expected: 3,
    ready: 1,
    processing: 1,
    pending: 1,
    awaitingSignature: 0,
    failed: 0,
    untrusted: 0,
    retired: 0,
    evicted: 0,
    notLive: 1,
  });
  assert.equal(s.outcome, 'in-progress');
  const stale = s.hosts.find((h) => h.host === 'stale')!;
  assert.equal(stale.liveness, 'stale');
  assert.equal(stale.expected, false);
  assert.equal(
    s.hosts.find((h) => h.host === 'g1'),
    undefined,
    'a gpu host is not shown for default images',
  );
  assert.equal(
    s.hosts.find((h) => h.host === 'gone'),
    undefined,
  );
});

test('a host is live up to staleAfterSeconds after its last heartbeat, stale after', async () => {
  const reader = await table([
    hostItem('edge', { lastSeenAt: now - 300_000 }),
    hostItem('past', { lastSeenAt: now - 300_001 }),
  ]);
  const snap = await reader.snapshot();
  const rows = hostSummaries(snap.hosts, snap.images, snap.config, now);
  assert.deepEqual(
    rows.map((r) => [r.host, r.liveness]),
    [
      ['edge', 'live'],
      ['past', 'stale'],
    ],
  );
});

test('target version: --etag, else the newest put rollout, else the newest host report', async () => {
  const key = 'images/v.tar';
  const reader = await table([
    hostItem('a'),
    hostItem('b'),
    hostImageItem('a', key, 'ready', { eTag: 'old', updatedAt: now - 5000 }),
    hostImageItem('b', key, 'processing', { eTag: '"new"', updatedAt: now - 1000 }),
  ]);
  // No rollout recorded: the newest report names the version (quotes ignored).
  let s = await statusOf(reader, key);
  assert.equal(s.etagSource, 'hosts');
  assert.equal(s.etag, 'new');
  assert.equal(s.hosts.find((h) => h.host === 'a')!.state, 'pending', 'a holds the old version');
  assert.equal(s.counts.processing, 1);

  // Rollouts: the newest put (by sequencer) wins over an older one and over a delete.
  await putItems(reader.client, reader.table, [
    rolloutItem(key, '00A1', [], { eTag: 'old' }),
    rolloutItem(key, '00A2', [], { eTag: 'new' }),
    rolloutItem(key, '00A3', [], { kind: 'image.delete', eTag: null }),
  ]);
  s = await statusOf(reader, key);
  assert.equal(s.etagSource, 'rollout');
  assert.equal(s.etag, 'new');

  s = await statusOf(reader, key, '"old"');
  assert.equal(s.etagSource, 'flag');
  assert.equal(s.etag, 'old');
  assert.equal(s.hosts.find((h) => h.host === 'a')!.state, 'ready');
  assert.equal(s.hosts.find((h) => h.host === 'b')!.state, 'pending');
});

test('outcome: ready when every expected host is ready, failed once all reported and one failed', async () => {
  const key = 'images/h.tar';
  const reader = await table([
    hostItem('a'),
    hostItem('b'),
    hostItem('c'),
    hostImageItem('a', key, 'ready'),
    hostImageItem('b', key, 'ready'),
    hostImageItem('c', key, 'processing'),
  ]);
  assert.equal((await statusOf(reader, key)).outcome, 'in-progress');
  await putItems(reader.client, reader.table, [
    hostImageItem('c', key, 'failed', {
      reasonCode: 'ARCHIVE_PATH_ESCAPE',
      message: 'member "../../escape" leaves the image',
    }),
  ]);
  let s = await statusOf(reader, key);
  assert.equal(s.outcome, 'failed');
  assert.deepEqual(
    s.hosts.filter((h) => h.state === 'failed').map((h) => [h.host, h.reason]),
    [['c', 'ARCHIVE_PATH_ESCAPE']],
  );
  // A failure of an older version does not count against a new one.
  await putItems(reader.client, reader.table, [rolloutItem(key, '0002', [], { eTag: 'etag-2' })]);
  s = await statusOf(reader, key);
  assert.equal(s.outcome, 'in-progress');
  assert.equal(s.counts.pending, 3);
  await putItems(reader.client, reader.table, [
    hostImageItem('a', key, 'ready', { eTag: 'etag-2' }),
    hostImageItem('b', key, 'ready', { eTag: 'etag-2' }),
    hostImageItem('c', key, 'ready', { eTag: 'etag-2' }),
  ]);
  assert.equal((await statusOf(reader, key)).outcome, 'ready');
});

test('hosts named by the rollout that never answered are shown, not counted', async () => {
  const key = 'images/r.tar';
  const reader = await table([
    hostItem('a'),
    hostImageItem('a', key, 'ready'),
    rolloutItem(key, '0001', [
      queueNames.hostQueue('thinrelay', 'default', 'a'),
      queueNames.hostQueue('thinrelay', 'default', 'ghost-1'),
    ]),
  ]);
  const s = await statusOf(reader, key);
  const ghost = s.hosts.find((h) => h.host === 'ghost-1')!;
  assert.equal(ghost.liveness, 'unregistered');
  assert.equal(ghost.state, 'pending');
  assert.equal(s.counts.notLive, 1);
  assert.equal(s.outcome, 'ready');
});

test('no live host in the routed groups: outcome no-hosts (never "ready")', async () => {
  const key = 'images/gpu/cuda.tar';
  const reader = await table([hostItem('a')]);
  const s = await statusOf(reader, key);
  assert.deepEqual(s.groups, ['gpu']);
  assert.equal(s.outcome, 'no-hosts');
});

test('paginated: 300 hosts with one image each are all read and counted', async () => {
  const key = 'images/many.tar';
  const items: object[] = [];
  for (let i = 0; i < 300; i++) {
    const id = `h-${String(i).padStart(4, '0')}`;
    items.push(
      hostItem(id, { pool: null }),
      hostImageItem(id, key, i % 3 === 0 ? 'failed' : 'ready'),
    );
  }
  // Pages of 40 items: every query and scan has to follow LastEvaluatedKey.
  const reader = await table(items, 40);
  const s = await statusOf(reader, key);
  // 300 host items and 300 image items at 40 a page: at least 8 pages each.
  assert.ok(reader.requests >= 16, `paged reads (${reader.requests} requests)`);
  assert.equal(s.counts.expected, 300);
  assert.equal(s.counts.failed, 100);
  assert.equal(s.counts.ready, 200);
  const all = allImageStatuses(await reader.snapshot(), now);
  assert.deepEqual(
    all.map((x) => [x.key, x.counts.ready]),
    [[key, 200]],
  );
});

test('parseDuration', () => {
  assert.equal(parseDuration('10m'), 600_000);
  assert.equal(parseDuration('90s'), 90_000);
  assert.equal(parseDuration('1h'), 3_600_000);
  assert.equal(parseDuration('500ms'), 500);
  assert.equal(parseDuration('30'), 30_000);
  assert.equal(parseDuration('ten'), null);
  assert.equal(parseDuration('-1s'), null);
});
