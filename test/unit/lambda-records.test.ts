import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { S3Event, S3EventRecord } from 'aws-lambda';
import {
  decodeS3Key,
  eventsFromNotification,
  kindOf,
  recordToEvent,
  type FilterRules,
  type Log,
} from '../../lambda/src/records.js';

const anyRules: FilterRules = { buckets: [], imagePrefix: '', imageSuffixes: [] };

function s3Record(
  eventName: string,
  key: string,
  extra: Partial<S3EventRecord['s3']['object']> = {},
  bucket = 'images-bucket',
): S3EventRecord {
  return {
    eventVersion: '2.1',
    eventSource: 'aws:s3',
    awsRegion: 'eu-west-1',
    eventTime: '2026-11-23T10:00:00.123Z',
    eventName,
    userIdentity: { principalId: 'AWS:AIDAEXAMPLE' },
    requestParameters: { sourceIPAddress: '203.0.113.9' },
    responseElements: { 'x-amz-request-id': 'R1', 'x-amz-id-2': 'I2' },
    s3: {
      s3SchemaVersion: '1.0',
      configurationId: 'images',
      bucket: {
        name: bucket,
        ownerIdentity: { principalId: 'A1' },
        arn: `arn:aws:s3:::${bucket}`,
      },
      object: {
        key,
        size: 4096,
        eTag: '0123456789abcdef0123456789abcdef',
        versionId: 'v1',
        sequencer: '0055AED6DCD90281E5',
        ...extra,
      },
    },
  };
}

function eventOf(record: S3EventRecord, rules = anyRules) {
  const r = recordToEvent(record, rules);
  assert.ok('event' in r, `expected an event, got ${JSON.stringify(r)}`);
  return r.event;
}

function captureLog(): Log & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    info: (m, ...x) => lines.push(`${m} ${JSON.stringify(x)}`),
    warn: (m, ...x) => lines.push(`WARN ${m} ${JSON.stringify(x)}`),
  };
}

test('keys are decoded form-style: + is a space, %2B a plus, UTF-8 percent escapes', () => {
  assert.equal(decodeS3Key('images/my+image.tar'), 'images/my image.tar');
  assert.equal(decodeS3Key('images/c%2B%2B.tar'), 'images/c++.tar');
  assert.equal(decodeS3Key('images/caf%C3%A9+%E2%9C%93.tar'), 'images/café ✓.tar');
  assert.equal(decodeS3Key('a%2Fb%3Dc'), 'a/b=c');
  assert.equal(
    eventOf(s3Record('ObjectCreated:Put', 'images/a+b%2Bc.tar')).key,
    'images/a b+c.tar',
  );
  const bad = recordToEvent(s3Record('ObjectCreated:Put', 'images/%E0%A4%A.tar'), anyRules);
  assert.ok('skipped' in bad && /not valid URL encoding/.test(bad.skipped));
});

test('ObjectCreated:* is a put, ObjectRemoved:* a delete, anything else is ignored', () => {
  for (const n of [
    'ObjectCreated:Put',
    'ObjectCreated:CompleteMultipartUpload',
    's3:ObjectCreated:Copy',
  ]) {
    assert.equal(kindOf(n), 'image.put', n);
  }
  for (const n of ['ObjectRemoved:Delete', 'ObjectRemoved:DeleteMarkerCreated']) {
    assert.equal(kindOf(n), 'image.delete', n);
  }
  for (const n of ['ObjectRestore:Completed', 'LifecycleExpiration:Delete', 's3:TestEvent', '']) {
    assert.equal(kindOf(n), null, n);
  }
  const r = recordToEvent(s3Record('ObjectRestore:Post', 'images/x.tar'), anyRules);
  assert.ok('skipped' in r);
});

test('a put carries eTag, size, versionId, sequencer and a normalised time', () => {
  const e = eventOf(s3Record('ObjectCreated:Put', 'images/x.tar'));
  assert.deepEqual(e, {
    schemaVersion: 1,
    kind: 'image.put',
    bucket: 'images-bucket',
    key: 'images/x.tar',
    versionId: 'v1',
    eTag: '0123456789abcdef0123456789abcdef',
    size: 4096,
    sequencer: '0055AED6DCD90281E5',
    eventTime: '2026-11-23T10:00:00.123Z',
  });
  const unversioned = eventOf(
    s3Record('ObjectCreated:Put', 'images/x.tar', { versionId: undefined }),
  );
  assert.equal(unversioned.versionId, null);
});

test('deletes have a null eTag and size', () => {
  const rec = s3Record('ObjectRemoved:Delete', 'images/x.tar', {
    eTag: undefined,
    size: undefined,
  });
  const e = eventOf(rec);
  assert.equal(e.kind, 'image.delete');
  assert.equal(e.eTag, null);
  assert.equal(e.size, null);
  // Even if a producer sent one, a delete never carries an ETag.
  assert.equal(eventOf(s3Record('ObjectRemoved:Delete', 'images/x.tar')).eTag, null);
});

test('bucket, prefix and suffix rules filter records', () => {
  const rules: FilterRules = {
    buckets: ['images-bucket'],
    imagePrefix: 'images/',
    imageSuffixes: ['.tar', '.tar.gz'],
  };
  const ok = (key: string, bucket = 'images-bucket') =>
    'event' in recordToEvent(s3Record('ObjectCreated:Put', key, {}, bucket), rules);
  assert.ok(ok('images/web.tar'));
  assert.ok(ok('images/sub/web.tar.gz'));
  assert.ok(!ok('images/web.zip'));
  assert.ok(!ok('other/web.tar'));
  assert.ok(!ok('images/web.tar', 'other-bucket'));
  assert.ok(!ok('images/dir/'), 'folder placeholders are never images');
  // The prefix applies to the decoded key.
  assert.ok(ok('images/my+web.tar'));
  assert.ok('event' in recordToEvent(s3Record('ObjectCreated:Put', 'x/dir.tar'), anyRules));
});

test('every skipped record: a warning and a reason code for the metric', () => {
  const reasons: string[] = [];
  const log = captureLog();
  const rules = { buckets: ['images-bucket'], imagePrefix: 'images/', imageSuffixes: ['.tar'] };
  eventsFromNotification(
    {
      Records: [
        s3Record('ObjectRestore:Completed', 'images/a.tar'),
        s3Record('ObjectCreated:Put', 'images/a.tar', {}, 'other-bucket'),
        s3Record('ObjectCreated:Put', 'images/%E0%A4%A.tar'),
        s3Record('ObjectCreated:Put', 'images/dir/'),
        s3Record('ObjectCreated:Put', 'other/a.tar'),
        s3Record('ObjectCreated:Put', 'images/a.zip'),
        s3Record('ObjectCreated:Put', 'images/ok.tar'),
      ],
    },
    rules,
    log,
    (r) => reasons.push(r),
  );
  assert.deepEqual(reasons, [
    'NOT_PUT_OR_DELETE',
    'BUCKET_NOT_CONFIGURED',
    'KEY_BAD_ENCODING',
    'FOLDER_PLACEHOLDER',
    'OUTSIDE_PREFIX',
    'SUFFIX_NOT_CONFIGURED',
  ]);
  assert.equal(log.lines.length, 6);
  assert.ok(log.lines.every((l) => l.startsWith('WARN record skipped')));
});

test('s3:TestEvent is ignored explicitly, and skipped records are logged', () => {
  const log = captureLog();
  const testEvent = {
    Service: 'Amazon S3',
    Event: 's3:TestEvent',
    Time: '2026-11-23T10:00:00.000Z',
    Bucket: 'images-bucket',
    RequestId: 'R',
    HostId: 'H',
  } as unknown as S3Event;
  assert.deepEqual(eventsFromNotification(testEvent, anyRules, log), []);
  assert.match(log.lines.join('\n'), /ignoring s3:TestEvent/);

  const log2 = captureLog();
  const events = eventsFromNotification(
    {
      Records: [
        s3Record('ObjectCreated:Put', 'images/a.tar'),
        s3Record('ObjectRestore:Completed', 'images/b.tar'),
        s3Record('ObjectRemoved:Delete', 'images/c.tar'),
      ],
    },
    anyRules,
    log2,
  );
  assert.deepEqual(
    events.map((e) => [e.kind, e.key]),
    [
      ['image.put', 'images/a.tar'],
      ['image.delete', 'images/c.tar'],
    ],
  );
  assert.equal(log2.lines.length, 1);
  assert.match(
    log2.lines[0] ?? '',
    /^WARN record skipped .*"reason":"NOT_PUT_OR_DELETE".*ObjectRestore:Completed/,
  );
});

test('a signature sidecar is a sidecar.put when its image would be published; never an image', () => {
  const rules: FilterRules = { buckets: [], imagePrefix: 'images/', imageSuffixes: ['.tar'] };
  const sig = eventOf(s3Record('ObjectCreated:Put', 'images/web/app.tar.sig'), rules);
  assert.equal(sig.kind, 'sidecar.put');
  assert.equal(sig.key, 'images/web/app.tar.sig');
  assert.equal(sig.eTag, '0123456789abcdef0123456789abcdef');
  const bundle = eventOf(s3Record('ObjectCreated:Put', 'images/app.tar.sigstore.json'), rules);
  assert.equal(bundle.kind, 'sidecar.put');
  // Without a suffix rule an image may be named anything, its sidecar still is one.
  assert.equal(eventOf(s3Record('ObjectCreated:Copy', 'images/app.img.sig')).kind, 'sidecar.put');
  assert.equal(eventOf(s3Record('ObjectCreated:Put', 'images/app.tar'), rules).kind, 'image.put');

  const skipped = (key: string, eventName = 'ObjectCreated:Put') => {
    const r = recordToEvent(s3Record(eventName, key), rules);
    assert.ok('reason' in r, `${key}: expected a skip, got ${JSON.stringify(r)}`);
    return r.reason;
  };
  // The suffix rule is the image's: a sidecar of a key no host takes is not sent either.
  assert.equal(skipped('images/notes.txt.sig'), 'SUFFIX_NOT_CONFIGURED');
  assert.equal(skipped('other/app.tar.sig'), 'OUTSIDE_PREFIX');
  assert.equal(skipped('images/app.tar.sig.sig'), 'SIDECAR_OF_SIDECAR');
  assert.equal(skipped('images/app.tar.sig', 'ObjectRemoved:Delete'), 'SIDECAR_DELETED');
  assert.equal(
    skipped('images/app.tar.sigstore.json', 'ObjectRemoved:DeleteMarkerCreated'),
    'SIDECAR_DELETED',
  );
});
