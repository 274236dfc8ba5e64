import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  compareSequencers,
  ImageEventError,
  imageKeyOf,
  parseImageEvent,
  serializeImageEvent,
  type ImageEvent,
} from '../../schema/image-event.js';

const put: ImageEvent = {
  schemaVersion: 1,
  kind: 'image.put',
  bucket: 'images-bucket',
  key: 'images/web 2026+ü.tar.gz',
  versionId: '3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY',
  eTag: 'd41d8cd98f00b204e9800998ecf8427e',
  size: 1024,
  sequencer: '0055AED6DCD90281E5',
  eventTime: '2026-11-23T00:00:00.000Z',
};
const del: ImageEvent = { ...put, kind: 'image.delete', eTag: null, size: null, versionId: null };

test('put and delete events round-trip through serialize/parse', () => {
  assert.deepEqual(parseImageEvent(serializeImageEvent(put)), put);
  assert.deepEqual(parseImageEvent(serializeImageEvent(del)), del);
  // Fixed field order: the same event always serializes to the same bytes.
  const shuffled = Object.fromEntries(Object.entries(put).reverse()) as unknown as ImageEvent;
  assert.equal(serializeImageEvent(shuffled), serializeImageEvent(put));
});

function rejects(mutate: Record<string, unknown>, field: string, message: RegExp): void {
  const json = JSON.stringify({ ...put, ...mutate });
  assert.throws(
    () => parseImageEvent(json),
    (err: unknown) => {
      assert.ok(err instanceof ImageEventError, String(err));
      assert.equal(err.field, field);
      assert.match(err.message, message);
      return true;
    },
    `${JSON.stringify(mutate)} should be rejected on ${field}`,
  );
}

test('every field is validated, with an error naming it', () => {
  rejects({ schemaVersion: 2 }, 'schemaVersion', /unsupported schemaVersion 2/);
  rejects({ schemaVersion: '1' }, 'schemaVersion', /unsupported schemaVersion "1"/);
  rejects({ schemaVersion: undefined }, 'schemaVersion', /unsupported schemaVersion/);
  rejects({ extra: true }, 'extra', /unknown field "extra"/);
  rejects({ kind: 'image.update' }, 'kind', /kind must be/);
  rejects({ bucket: '' }, 'bucket', /bucket must be a non-empty string/);
  rejects({ bucket: 7 }, 'bucket', /bucket/);
  rejects({ key: undefined }, 'key', /key must be a non-empty string/);
  rejects({ versionId: 1 }, 'versionId', /versionId must be a non-empty string or null/);
  rejects({ eTag: null }, 'eTag', /eTag must be a non-empty string for image.put/);
  rejects({ kind: 'image.delete', eTag: 'abc' }, 'eTag', /eTag must be null for image.delete/);
  rejects({ size: -1 }, 'size', /size must be a non-negative integer or null/);
  rejects({ size: 1.5 }, 'size', /size/);
  rejects({ size: '10' }, 'size', /size/);
  rejects({ size: undefined }, 'size', /size/);
  rejects({ sequencer: '' }, 'sequencer', /sequencer must be a non-empty string/);
  rejects({ sequencer: '12XZ' }, 'sequencer', /hexadecimal/);
  rejects({ eventTime: 'yesterday' }, 'eventTime', /ISO 8601/);
  rejects({ eventTime: '2026-13-45T99:00:00Z' }, 'eventTime', /ISO 8601/);
  rejects({ eventTime: '2026-11-23T00:00:00+01:00' }, 'eventTime', /ISO 8601 UTC/);
});

test('non-objects and non-JSON are rejected', () => {
  assert.throws(() => parseImageEvent('{'), /not JSON/);
  assert.throws(() => parseImageEvent('[]'), /expected a JSON object/);
  assert.throws(() => parseImageEvent('null'), /expected a JSON object/);
  assert.throws(() => parseImageEvent('"x"'), /expected a JSON object/);
});

test('serialize refuses an invalid event', () => {
  assert.throws(() => serializeImageEvent({ ...put, eTag: null }), ImageEventError);
});

test('sequencers order like S3 says: right-pad with zeros, compare as strings', () => {
  assert.ok(compareSequencers('0055AED6DCD90281E5', '0055AED6DCD90281E6') < 0);
  assert.ok(compareSequencers('0055AED6DCD90281E6', '0055AED6DCD90281E5') > 0);
  assert.equal(compareSequencers('0055AED6DCD90281E5', '0055AED6DCD90281E5'), 0);
  // Different lengths: the shorter is padded on the right, not the left.
  assert.equal(compareSequencers('0055AE', '0055AE0000'), 0);
  assert.ok(compareSequencers('0055AF', '0055AE9999') > 0);
  assert.ok(compareSequencers('0055AE', '0055AE0001') < 0);
  assert.ok(compareSequencers('1', '0FFFFFFFFFFFF') > 0);
  // Case-insensitive hex.
  assert.equal(compareSequencers('0055aed6', '0055AED6'), 0);
  assert.ok(compareSequencers('0055aed7', '0055AED6') > 0);
  assert.ok(compareSequencers('0055AED6', '0055aed7') < 0);
  assert.throws(() => compareSequencers('xyz', '00'), /not hexadecimal/);
});

test('a sidecar.put carries the sidecar key and an ETag; imageKeyOf names the image it signs', () => {
  const sig: ImageEvent = { ...put, kind: 'sidecar.put', key: `${put.key}.sig` };
  const bundle: ImageEvent = { ...sig, key: `${put.key}.sigstore.json` };
  assert.deepEqual(parseImageEvent(serializeImageEvent(sig)), sig);
  assert.equal(imageKeyOf(sig), put.key);
  assert.equal(imageKeyOf(bundle), put.key);
  assert.equal(imageKeyOf(put), put.key);
  assert.equal(imageKeyOf(del), put.key);
  rejects({ kind: 'sidecar.put', key: 'images/a.tar' }, 'key', /\.sig or \.sigstore\.json/);
  rejects({ kind: 'sidecar.put', key: 'images/a.tar.sig', eTag: null }, 'eTag', /for sidecar\.put/);
  rejects({ kind: 'sidecar.delete' }, 'kind', /"sidecar\.put"/);
});
