/**
 * The signer and verification time a host reports in its fleet item, read
 * from the image row's last signature check (the `trust` column, a
 * TrustRecord): only a verified check names a signer.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { signatureOf } from '../../host-agent/src/fleet/member/image-reporter.js';
import type { TrustRecord } from '../../host-agent/src/trust/trust-record.js';

const at = '2026-12-06T23:00:00.000Z';
const record = (over: Partial<TrustRecord>): { trust: string } => ({
  trust: JSON.stringify({
    mode: 'require',
    verdict: 'verified',
    signer: { type: 'key', fingerprint: 'sha256:5f0c', algorithm: 'ecdsa-p256' },
    payload: 'object sha256:00',
    sidecar: 'images/a.tar.sig',
    verifiedAt: at,
    failure: null,
    ...over,
  } satisfies TrustRecord),
});

test('a key signer, an identity signer; a failed check, none, or an unreadable one name nobody', () => {
  assert.deepEqual(signatureOf(record({})), {
    signer: 'sha256:5f0c (ecdsa-p256)',
    verifiedAt: Date.parse(at),
  });
  const identity = {
    type: 'identity' as const,
    issuer: 'https://token.actions.githubusercontent.com',
    subject: 'https://github.com/acme/images/.github/workflows/release.yml@refs/heads/main',
    matched: 'x',
  };
  assert.equal(
    signatureOf(record({ signer: identity })).signer,
    `${identity.issuer} ${identity.subject}`,
  );
  const none = { signer: null, verifiedAt: null };
  assert.deepEqual(
    signatureOf(
      record({
        verdict: 'failed',
        signer: null,
        failure: { code: 'SIGNATURE_INVALID', message: 'no key verifies' },
      }),
    ),
    none,
  );
  assert.deepEqual(signatureOf({ trust: null }), none);
  assert.deepEqual(signatureOf({ trust: '{not json' }), none);
});
