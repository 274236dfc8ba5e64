/**
 * The signer and verification time a host reports in its fleet item, read
 * from the image row however the trust gate stores the signer (the
 * TrustRecord's object, its JSON text, or a line of text).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { signatureOf } from '../../host-agent/src/fleet/member/image-reporter.js';

const at = '2026-12-06T23:00:00.000Z';

test('a key signer, an identity signer, and nothing verified', () => {
  const key = { type: 'key', fingerprint: 'sha256:5f0c', algorithm: 'ecdsa-p256' };
  assert.deepEqual(signatureOf({ signer: key, verifiedAt: at }), {
    signer: 'sha256:5f0c (ecdsa-p256)',
    verifiedAt: Date.parse(at),
  });
  assert.deepEqual(signatureOf({ signer: JSON.stringify(key), verifiedAt: Date.parse(at) }), {
    signer: 'sha256:5f0c (ecdsa-p256)',
    verifiedAt: Date.parse(at),
  });
  const identity = {
    type: 'identity',
    issuer: 'https://token.actions.githubusercontent.com',
    subject: 'https://github.com/acme/images/.github/workflows/release.yml@refs/heads/main',
    matched: 'x',
  };
  assert.equal(
    signatureOf({ signer: identity, verifiedAt: at }).signer,
    `${identity.issuer} ${identity.subject}`,
  );
  assert.deepEqual(signatureOf({ signer: 'sha256:77ee (ed25519)', verifiedAt: at }), {
    signer: 'sha256:77ee (ed25519)',
    verifiedAt: Date.parse(at),
  });
  // Rows from before signatures, or not verified: no signer, no time.
  assert.deepEqual(signatureOf({}), { signer: null, verifiedAt: null });
  assert.deepEqual(signatureOf({ signer: null, verifiedAt: at }), {
    signer: null,
    verifiedAt: null,
  });
  assert.deepEqual(signatureOf({ signer: { type: 'other' } }), { signer: null, verifiedAt: null });
});
