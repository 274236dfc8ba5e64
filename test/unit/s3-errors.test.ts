import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ImageError, TransientError, UsageError } from '../../host-agent/src/errors.js';
import { normalizeETag, sameETag } from '../../schema/etag.js';
import { fullObjectSha256, objectUrl } from '../../host-agent/src/source/object-ref.js';
import { isTransientS3Error, mapS3Error } from '../../host-agent/src/source/s3-errors.js';

/** An error shaped like the SDK's ServiceException / network errors. */
function sdkError(name: string, status?: number, message = name): Error {
  const e = new Error(message) as Error & { $metadata?: { httpStatusCode?: number } };
  e.name = name;
  if (status !== undefined) e.$metadata = { httpStatusCode: status };
  return e;
}
function netError(code: string, message = code): Error {
  return Object.assign(new Error(message), { code });
}

const ctx = { bucket: 'b-images', key: 'x/y.tar', operation: 'GetObject' };

function code(err: unknown): string {
  const mapped = mapS3Error(err, ctx);
  const kind =
    mapped instanceof TransientError
      ? 'transient'
      : mapped instanceof UsageError
        ? 'usage'
        : mapped instanceof ImageError
          ? 'image'
          : 'other';
  return `${kind}:${'code' in mapped ? String(mapped.code) : mapped.name}`;
}

describe('mapS3Error', () => {
  it('maps missing objects (GET NoSuchKey, HEAD NotFound) and only those', () => {
    assert.equal(code(sdkError('NoSuchKey', 404)), 'image:OBJECT_NOT_FOUND');
    assert.equal(code(sdkError('NotFound', 404)), 'image:OBJECT_NOT_FOUND');
    assert.equal(code(sdkError('NoSuchVersion', 404)), 'image:OBJECT_NOT_FOUND');
    const msg = mapS3Error(sdkError('NoSuchKey', 404), ctx).message;
    assert.match(msg, /b-images/);
    assert.match(msg, /x\/y\.tar/);
  });

  it('maps 403 AccessDenied, a bodiless HEAD 403 and KMS refusals to ACCESS_DENIED, naming the grant', () => {
    assert.equal(code(sdkError('AccessDenied', 403)), 'image:ACCESS_DENIED');
    assert.equal(code(sdkError('Unknown', 403)), 'image:ACCESS_DENIED');
    assert.equal(code(sdkError('KMS.DisabledException', 400)), 'image:ACCESS_DENIED');
    const s3 = mapS3Error(sdkError('AccessDenied', 403), ctx) as ImageError;
    assert.match(s3.hint ?? '', /s3:GetObject on arn:aws:s3:::b-images\/x\/y\.tar/);
    const versioned = mapS3Error(sdkError('AccessDenied', 403), { ...ctx, versionId: 'v1' });
    assert.match((versioned as ImageError).hint ?? '', /s3:GetObjectVersion/);
    const kmsErr = Object.assign(sdkError('AccessDenied', 403), {
      message: 'User: arn:aws:sts::1:assumed-role/r is not authorized to perform: kms:Decrypt',
    });
    assert.match((mapS3Error(kmsErr, ctx) as ImageError).hint ?? '', /kms:Decrypt/);
  });

  it('maps preconditions and ranges to OBJECT_CHANGED', () => {
    assert.equal(code(sdkError('PreconditionFailed', 412)), 'image:OBJECT_CHANGED');
    assert.equal(code(sdkError('Unknown', 412)), 'image:OBJECT_CHANGED');
    assert.equal(code(sdkError('InvalidRange', 416)), 'image:OBJECT_CHANGED');
  });

  it('maps credentials, bucket and endpoint problems to UsageError CONFIG', () => {
    for (const name of ['InvalidAccessKeyId', 'SignatureDoesNotMatch', 'ExpiredToken']) {
      assert.equal(code(sdkError(name, 403)), 'usage:CONFIG', name);
    }
    assert.equal(code(sdkError('CredentialsProviderError')), 'usage:CONFIG');
    assert.equal(code(sdkError('NoSuchBucket', 404)), 'usage:CONFIG');
    assert.equal(code(sdkError('PermanentRedirect', 301)), 'usage:CONFIG');
    assert.equal(code(sdkError('AuthorizationHeaderMalformed', 400)), 'usage:CONFIG');
    const err = mapS3Error(sdkError('NoSuchBucket', 404), ctx);
    assert.ok(err instanceof UsageError && err.hint);
  });

  it('maps network trouble, 5xx and throttling to TransientError DOWNLOAD_FAILED', () => {
    assert.equal(code(sdkError('InternalError', 500)), 'transient:DOWNLOAD_FAILED');
    assert.equal(code(sdkError('Unknown', 503)), 'transient:DOWNLOAD_FAILED');
    assert.equal(code(sdkError('SlowDown', 503)), 'transient:DOWNLOAD_FAILED');
    assert.equal(code(sdkError('TooManyRequests', 429)), 'transient:DOWNLOAD_FAILED');
    assert.equal(code(sdkError('TimeoutError')), 'transient:DOWNLOAD_FAILED');
    assert.equal(code(netError('ECONNRESET')), 'transient:DOWNLOAD_FAILED');
    assert.equal(code(netError('ECONNREFUSED')), 'transient:DOWNLOAD_FAILED');
    assert.equal(code(new Error('socket hang up')), 'transient:DOWNLOAD_FAILED');
  });

  it('leaves other client errors permanent, and abort errors unchanged', () => {
    assert.equal(code(sdkError('InvalidRequest', 400)), 'image:DOWNLOAD_FAILED');
    const abort = sdkError('AbortError');
    assert.equal(mapS3Error(abort, ctx), abort);
    assert.equal(isTransientS3Error(abort), false);
  });
});

describe('object-ref helpers', () => {
  it('fullObjectSha256 accepts only full-object SHA-256 values', () => {
    const sha = 'n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=';
    assert.equal(fullObjectSha256(sha, 'FULL_OBJECT'), sha);
    assert.equal(fullObjectSha256(sha, undefined), sha);
    assert.equal(fullObjectSha256(sha, 'COMPOSITE'), null);
    assert.equal(fullObjectSha256(`${sha}-12`, undefined), null);
    assert.equal(fullObjectSha256('not-base64', undefined), null);
    assert.equal(fullObjectSha256(undefined, 'FULL_OBJECT'), null);
  });

  it('compares ETags without quotes or weak prefix', () => {
    assert.equal(normalizeETag('"abc"'), 'abc');
    assert.equal(normalizeETag('W/"abc"'), 'abc');
    assert.ok(sameETag('"abc"', 'abc'));
    assert.ok(!sameETag('"abc"', '"abd"'));
  });

  it('objectUrl names bucket, key and version', () => {
    assert.equal(objectUrl({ bucket: 'b', key: 'k/1.tar' }), 's3://b/k/1.tar');
    assert.equal(objectUrl({ bucket: 'b', key: 'k', versionId: 'v9' }), 's3://b/k?versionId=v9');
  });
});
