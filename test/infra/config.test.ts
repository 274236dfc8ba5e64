/** infra/lib/config.ts: defaults, derived names, and a clear error for each kind of bad input. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  groupOutputStem,
  InfraConfigError,
  loadConfigFile,
  MAX_GROUPS,
  names,
  parseConfig,
} from '../../infra/lib/config.js';
import { queueNames } from '../../schema/fleet.js';

const groups = [{ name: 'default' }];

function rejects(value: unknown, path: string, message: RegExp): void {
  assert.throws(
    () => parseConfig(value),
    (err: unknown) => {
      assert.ok(err instanceof InfraConfigError, String(err));
      assert.equal(err.path, path);
      assert.match(err.message, message);
      return true;
    },
  );
}

test('defaults fill everything but the groups', () => {
  const c = parseConfig({ groups });
  assert.equal(c.stackName, 'Thinrelay');
  assert.equal(c.namePrefix, 'thinrelay');
  assert.equal(c.imagesPrefix, 'images/');
  assert.deepEqual(c.imageSuffixes, [], 'no suffix filter: content decides, on the host');
  assert.deepEqual(c.routes, {});
  assert.deepEqual(c.groups, [
    {
      name: 'default',
      principal: { type: 'ec2' },
      queues: {
        maxReceiveCount: 5,
        visibilityTimeoutSeconds: 300,
        retentionDays: 4,
        dlqRetentionDays: 14,
      },
      pool: {
        retainVersions: 2,
        highWatermarkPercent: 85,
        lowWatermarkPercent: 80,
        metadataHighWatermarkPercent: 75,
        metadataLowWatermarkPercent: 65,
        pins: [],
      },
      // No signature policy: images are not verified (today's behaviour).
      signatures: {
        mode: 'off',
        publicKeys: [],
        identities: [],
        sigstore: { trustedRoot: null, tlogEntries: 1, ctlogSCTs: 1, timestamps: 1 },
        awaitSeconds: 3600,
      },
    },
  ]);
  assert.deepEqual(c.fleet, {
    staleAfterSeconds: 900,
    sweepAfterSeconds: 86400,
    sweepEveryMinutes: 5,
    rolloutAlarmMinutes: 60,
  });
  assert.equal(c.fanout.maxEventAgeSeconds, 21600);
  assert.deepEqual(c.alarms, { email: null, topicArn: null });
  assert.deepEqual(parseConfig({ groups: [] }).groups, [], 'a deployment may have no group yet');
});

test('queue settings: top-level defaults, overridden per group', () => {
  const c = parseConfig({
    queues: { maxReceiveCount: 7 },
    groups: [
      { name: 'a' },
      { name: 'b', queues: { visibilityTimeoutSeconds: 900, retentionDays: 2 } },
    ],
  });
  assert.deepEqual(
    c.groups.map((g) => g.queues),
    [
      { maxReceiveCount: 7, visibilityTimeoutSeconds: 300, retentionDays: 4, dlqRetentionDays: 14 },
      { maxReceiveCount: 7, visibilityTimeoutSeconds: 900, retentionDays: 2, dlqRetentionDays: 14 },
    ],
  );
  rejects(
    { groups: [{ name: 'a', queues: { retentionDays: 14 } }] },
    '$.groups[0].queues.retentionDays',
    /from 1 to 13/,
  );
});

test("derived names follow the contract's queue naming", () => {
  const c = parseConfig({ namePrefix: 'tr', groups: [{ name: 'gpu_a' }] });
  assert.equal(names.groupQueuePrefix(c, 'gpu_a'), 'tr-host-gpu_a-');
  assert.equal(names.groupDlqPrefix(c, 'gpu_a'), 'tr-dlq-gpu_a-');
  assert.equal(
    queueNames.hostQueue('tr', 'gpu_a', 'i-1'),
    `${names.groupQueuePrefix(c, 'gpu_a')}i-1`,
  );
  assert.ok(!names.failedEventsQueue(c).startsWith(queueNames.hostQueuePrefix('tr')));
  assert.equal(names.fleetTable(c), 'tr-fleet');
  assert.equal(groupOutputStem('gpu_a'), 'GpuA');
});

test('routes: top-level map and per-group lists merge, under the images prefix, to groups that exist', () => {
  const c = parseConfig({
    routes: { 'images/db/': ['db', 'default'] },
    groups: [...groups, { name: 'gpu', routes: ['images/gpu/', 'images/db/'] }, { name: 'db' }],
  });
  assert.deepEqual(c.routes, { 'images/db/': ['db', 'default', 'gpu'], 'images/gpu/': ['gpu'] });
  rejects(
    { routes: { 'other/': 'default' }, groups },
    '$.routes["other/"]',
    /must start with imagesPrefix "images\/"/,
  );
  rejects(
    { groups: [{ name: 'a', routes: ['other/'] }] },
    '$.groups[0].routes[0]',
    /must start with imagesPrefix/,
  );
  rejects(
    { groups: [{ name: 'a', routes: 'images/a/' }] },
    '$.groups[0].routes',
    /list of key prefixes/,
  );
  rejects(
    { routes: { 'images/x/': 'nobody' }, groups },
    '$.routes["images/x/"]',
    /no group "nobody"/,
  );
  rejects(
    { routes: { 'images/x/': 'a-b' }, groups },
    '$.routes["images/x/"]',
    /letters, digits and _/,
  );
  rejects({ routes: { 'images/x/': [] }, groups }, '$.routes["images/x/"]', /non-empty/);
  rejects({ routes: ['images/'], groups }, '$.routes', /must be an object/);
});

test('groups: names, duplicates, collisions, queue name length, how many', () => {
  rejects({}, '$.groups', /required/);
  rejects({ groups: {} }, '$.groups', /must be a list/);
  rejects({ groups: [{}] }, '$.groups[0].name', /required/);
  rejects({ groups: [{ name: 'a-b' }] }, '$.groups[0].name', /'-' separates group from host/);
  rejects({ groups: [{ name: 'a', rack: 3 }] }, '$.groups[0]', /unknown key\(s\) "rack"/);
  rejects({ groups: [{ name: 'a' }, { name: 'a' }] }, '$.groups[1].name', /listed twice/);
  rejects(
    { groups: [{ name: 'gpu_a' }, { name: 'GpuA' }] },
    '$.groups[1].name',
    /collides with "gpu_a"/,
  );
  rejects(
    { namePrefix: 'p'.repeat(30), groups: [{ name: 'g'.repeat(10) }] },
    '$.groups[0].name',
    /exceed SQS's 80 characters/,
  );
  const many = Array.from({ length: MAX_GROUPS + 1 }, (_, i) => ({ name: `g${i}` }));
  rejects({ groups: many }, '$.groups', /at most 50 groups/);
});

test('the per-host format gets a migration message naming its groups and principal', () => {
  rejects(
    { hosts: [{ name: 'web01' }, { name: 'gpu01', group: 'gpu' }] },
    '$.hosts',
    /hosts now register themselves.*"groups": \[\{"name":"default"\},\{"name":"gpu"\}\]/,
  );
  rejects(
    { hostPrincipal: { type: 'aws', principalArn: 'arn:aws:iam::123456789012:role/b' }, hosts: [] },
    '$.hosts',
    /Replace "hosts" and "hostPrincipal".*must now tag each session thinrelay-host=<host id>/,
  );
});

test('numbers, strings and sections are checked with their path', () => {
  rejects(
    { groups, queues: { maxReceiveCount: 0 } },
    '$.queues.maxReceiveCount',
    /from 1 to 1000, got 0/,
  );
  rejects({ groups, queues: { retentionDays: 14 } }, '$.queues.retentionDays', /from 1 to 13/);
  rejects(
    { groups, queues: { visibilityTimeoutSeconds: 1.5 } },
    '$.queues.visibilityTimeoutSeconds',
    /whole number/,
  );
  rejects({ groups, fleet: { staleAfterSeconds: 30 } }, '$.fleet.staleAfterSeconds', /from 120/);
  rejects({ groups, fleet: { sweepEveryMinutes: 0 } }, '$.fleet.sweepEveryMinutes', /from 1 to 60/);
  rejects({ groups, fleet: { every: 1 } }, '$.fleet', /unknown key\(s\) "every"/);
  rejects(
    { groups, fanout: { logRetentionDays: 31 } },
    '$.fanout.logRetentionDays',
    /must be one of 1, 3, 5/,
  );
  rejects(
    { groups, fanout: { maxEventAgeSeconds: 30000 } },
    '$.fanout.maxEventAgeSeconds',
    /60 to 21600/,
  );
  rejects({ groups, imagesPrefix: 'images' }, '$.imagesPrefix', /ends with '\/'/);
  rejects({ groups, imagesPrefix: '/images/' }, '$.imagesPrefix', /no leading/);
  rejects({ groups, namePrefix: 'thin relay' }, '$.namePrefix', /letters, digits, - and _/);
  rejects({ groups, imageSuffixes: ['.tar,.tgz'] }, '$.imageSuffixes', /without commas/);
  rejects({ groups, bucket: { name: 'Bad_Bucket' } }, '$.bucket.name', /an S3 bucket name/);
  rejects({ groups, queues: 5 }, '$.queues', /must be an object/);
  rejects({ groups, queue: {} }, '$', /unknown key\(s\) "queue"/);
  assert.equal(parseConfig({ $comment: 'notes are fine', groups }).groups.length, 1);
});

test('alarms: an e-mail or a topic ARN, not both', () => {
  assert.equal(
    parseConfig({ groups, alarms: { email: 'ops@example.com' } }).alarms.email,
    'ops@example.com',
  );
  rejects({ groups, alarms: { email: 'nobody' } }, '$.alarms.email', /e-mail/);
  rejects(
    { groups, alarms: { topicArn: 'arn:aws:sqs:eu-west-1:123456789012:x' } },
    '$.alarms.topicArn',
    /SNS topic ARN/,
  );
  rejects(
    { groups, alarms: { email: 'a@b.c', topicArn: 'arn:aws:sns:eu-west-1:123456789012:ops' } },
    '$.alarms',
    /not both/,
  );
});

test('group principal: ec2, rolesAnywhere with a trust anchor, or an IAM principal ARN', () => {
  const anchor =
    'arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/0b7d8f2e-1c3a-4e5f-9a6b-7c8d9e0f1a2b';
  const principal = (p: unknown) =>
    parseConfig({ groups: [{ name: 'a', principal: p }] }).groups[0]!.principal;
  assert.deepEqual(principal({ type: 'rolesAnywhere', trustAnchorArn: anchor }), {
    type: 'rolesAnywhere',
    trustAnchorArn: anchor,
  });
  const arn = 'arn:aws:iam::123456789012:role/fleet-hosts';
  assert.deepEqual(principal({ type: 'aws', principalArn: arn }), {
    type: 'aws',
    principalArn: arn,
  });
  const at = (p: unknown) => ({ groups: [{ name: 'a', principal: p }] });
  rejects(at({ type: 'rolesAnywhere' }), '$.groups[0].principal.trustAnchorArn', /required/);
  rejects(at({ type: 'aws' }), '$.groups[0].principal.principalArn', /required/);
  rejects(at({ type: 'gcp' }), '$.groups[0].principal.type', /one of 'ec2'/);
  rejects(at({ type: 'ec2', trustAnchorArn: anchor }), '$.groups[0].principal', /unknown key/);
});

const dir = mkdtempSync(join(tmpdir(), 'thinrelay-infra-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('loadConfigFile: errors name the file; the shipped infra/deployment.json is valid, with no suffix filter', () => {
  const missing = join(dir, 'missing.json');
  assert.throws(
    () => loadConfigFile(missing),
    new RegExp(`^InfraConfigError: ${missing}: cannot read`),
  );
  const broken = join(dir, 'broken.json');
  writeFileSync(broken, '{"groups": [');
  assert.throws(() => loadConfigFile(broken), /broken\.json: not JSON/);
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, JSON.stringify({ groups: [{ name: 'a b' }] }));
  assert.throws(
    () => loadConfigFile(bad),
    (err: unknown) => {
      assert.ok(err instanceof InfraConfigError);
      assert.equal(err.path, bad);
      assert.match(err.message, /\$\.groups\[0\]\.name: must be letters/);
      return true;
    },
  );
  const shipped = loadConfigFile(
    fileURLToPath(new URL('../../../infra/deployment.json', import.meta.url)),
  );
  assert.deepEqual(
    shipped.groups.map((g) => g.name),
    ['default', 'gpu'],
  );
  // docs/container-images.md: the filter is empty by default and the content decides (.tar.zst, .tar.xz, no suffix…).
  assert.deepEqual(
    shipped.imageSuffixes,
    [],
    'the shipped config forwards every key under the prefix',
  );
});

test("pool policy: a top-level pool sets every group's default, a group's own pool overrides it", () => {
  const c = parseConfig({
    pool: { retainVersions: 3, pins: ['images/base/*'] },
    groups: [
      { name: 'web' },
      { name: 'gpu', pool: { highWatermarkPercent: 70, lowWatermarkPercent: 60 } },
    ],
  });
  assert.deepEqual(
    c.groups.map((g) => [
      g.name,
      g.pool.retainVersions,
      g.pool.highWatermarkPercent,
      g.pool.lowWatermarkPercent,
      g.pool.pins,
    ]),
    [
      ['web', 3, 85, 80, ['images/base/*']],
      ['gpu', 3, 70, 60, ['images/base/*']],
    ],
  );
  rejects(
    { groups: [{ name: 'web', pool: { highWatermarkPercent: 70 } }] },
    '$.groups[0].pool.lowWatermarkPercent',
    /must be below highWatermarkPercent/,
  );
  rejects({ pool: { retainVersions: 0 }, groups }, '$.pool.retainVersions', /./);
  rejects({ pool: { evict: true }, groups }, '$.pool', /unknown key\(s\) "evict"/);
});
