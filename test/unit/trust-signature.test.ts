/**
 * trust/: key signatures made by openssl (ECDSA P-256, Ed25519) over a blob
 * and over the manifest-digest payload, verified with node:crypto through
 * checkSignature; the wrong key, a tampered blob, and each bad sidecar get
 * their own code; warn mode records instead of failing.
 */
import assert from 'node:assert/strict';
import { randomBytes, createHash } from 'node:crypto';
import { after, test } from 'node:test';
import { isPermanentFailureCode } from '../../host-agent/src/pipeline/failure.js';
import { ImageError, type ImageFailureCode } from '../../host-agent/src/errors.js';
import { checkSignature } from '../../host-agent/src/trust/check-signature.js';
import { effectivePolicy } from '../../host-agent/src/trust/policy.js';
import {
  MAX_SIDECAR_BYTES,
  readSidecar,
  sidecarKeysOf,
  sidecarTarget,
  type Sidecar,
} from '../../host-agent/src/trust/sidecar.js';
import {
  manifestDigestPayload,
  signedPayloadOf,
  type SignedPayload,
} from '../../host-agent/src/trust/signed-payload.js';
import { parseSignaturePolicy, type SignatureMode } from '../../schema/signature-policy.js';
import { verifyP256Digest } from '../../host-agent/src/trust/ecdsa-digest.js';
import { trustedKeyOf } from '../../host-agent/src/trust/trusted-keys.js';
import { KeyDir, type TestKey } from '../helpers/signing-keys.js';

const keys = new KeyDir();
after(() => keys.remove());
const ec = keys.ecdsa();
const ed = keys.ed25519();
const stranger = keys.ecdsa();
const blob = randomBytes(256 * 1024 + 17);
const blobSha = createHash('sha256').update(blob).digest('hex');
const manifest = `sha256:${createHash('sha256').update('a manifest').digest('hex')}`;

function policy(trusted: TestKey[], mode: SignatureMode = 'require') {
  return effectivePolicy(
    parseSignaturePolicy({ mode, publicKeys: trusted.map((k) => k.publicKeyPem) }, '$'),
  );
}

function sig(text: string, key = 'images/a.tar.sig'): Sidecar {
  return { kind: 'signature', key, bytes: Buffer.from(text) };
}

/** The bytes as a stream of chunks, as an S3 body arrives. */
async function* chunks(bytes: Buffer, size = 7000): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) {
    await Promise.resolve();
    yield bytes.subarray(i, i + size);
  }
}

async function rejectsWith(p: Promise<unknown>, code: ImageFailureCode, text?: RegExp) {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof ImageError, String(err));
    assert.equal(err.code, code, err.message);
    if (text) assert.match(err.message, text);
    return true;
  });
}

const objectPayload: SignedPayload = { kind: 'object', sha256: blobSha };

test('the fingerprint is sha256 of the DER SubjectPublicKeyInfo, as openssl computes it', () => {
  const p = policy([ec, ed]);
  assert.deepEqual(
    p.keys.map((k) => [k.fingerprint, k.algorithm]),
    [
      [ec.fingerprint, 'ecdsa-p256'],
      [ed.fingerprint, 'ed25519'],
    ],
  );
});

test('what is signed: a flat tar and a legacy docker save by the object, an OCI archive by manifest digest', () => {
  assert.deepEqual(
    signedPayloadOf({ format: 'flat', objectSha256: blobSha, manifestDigest: null }),
    {
      kind: 'object',
      sha256: blobSha,
    },
  );
  assert.deepEqual(
    signedPayloadOf({ format: 'docker-archive', objectSha256: blobSha, manifestDigest: null }),
    { kind: 'object', sha256: blobSha },
    'no manifest blob in a legacy docker save',
  );
  const oci = signedPayloadOf({
    format: 'oci-archive',
    objectSha256: blobSha,
    manifestDigest: manifest,
  });
  assert.equal(oci.kind, 'manifest-digest');
  assert.ok(oci.kind === 'manifest-digest');
  assert.equal(oci.bytes.toString('latin1'), manifest, 'the ASCII digest string, no newline');
  assert.equal(oci.sha256, createHash('sha256').update(manifest).digest('hex'));
  assert.throws(() => manifestDigestPayload('sha256:ABC'), /manifest digest/);
});

for (const key of [ec, ed]) {
  test(`${key.algorithm}: a signature over the blob verifies, whole and streamed`, async () => {
    const sidecar = sig(keys.sign(key, blob) + '\n');
    for (const object of [blob, chunks(blob)]) {
      const record = await checkSignature({
        policy: policy([stranger, key]),
        payload: objectPayload,
        object,
        sidecar,
        now: () => new Date('2026-12-06T20:00:00Z'),
      });
      assert.deepEqual(record, {
        mode: 'require',
        verdict: 'verified',
        signer: { type: 'key', fingerprint: key.fingerprint, algorithm: key.algorithm },
        payload: `object sha256:${blobSha}`,
        sidecar: 'images/a.tar.sig',
        verifiedAt: '2026-12-06T20:00:00.000Z',
        failure: null,
      });
    }
  });

  test(`${key.algorithm}: a signature over the manifest-digest payload verifies`, async () => {
    const record = await checkSignature({
      policy: policy([key]),
      payload: manifestDigestPayload(manifest),
      sidecar: sig(keys.sign(key, manifest)),
    });
    assert.equal(record?.verdict, 'verified');
    assert.equal(record?.payload, `manifest ${manifest}`);
    // The same signature over "sha256:…\n" (echo instead of printf) is another payload.
    await rejectsWith(
      checkSignature({
        policy: policy([key]),
        payload: manifestDigestPayload(manifest),
        sidecar: sig(keys.sign(key, manifest + '\n')),
      }),
      'SIGNATURE_INVALID',
    );
  });

  test(`${key.algorithm}: a tampered blob does not verify`, async () => {
    const tampered = Buffer.from(blob);
    tampered.writeUInt8(tampered.readUInt8(1000) ^ 1, 1000);
    for (const object of [tampered, chunks(tampered)]) {
      await rejectsWith(
        checkSignature({
          policy: policy([key]),
          payload: objectPayload,
          object,
          sidecar: sig(keys.sign(key, blob)),
        }),
        'SIGNATURE_INVALID',
        new RegExp(key.fingerprint),
      );
    }
  });
}

test('signed by another key: SIGNATURE_INVALID names every trusted key tried', async () => {
  await rejectsWith(
    checkSignature({
      policy: policy([ec, ed]),
      payload: objectPayload,
      object: blob,
      sidecar: sig(keys.sign(stranger, blob)),
    }),
    'SIGNATURE_INVALID',
    new RegExp(`${ec.fingerprint} \\(ecdsa-p256\\), ${ed.fingerprint} \\(ed25519\\)`),
  );
});

test('no sidecar: SIGNATURE_MISSING', async () => {
  await rejectsWith(
    checkSignature({ policy: policy([ec]), payload: objectPayload, object: blob, sidecar: null }),
    'SIGNATURE_MISSING',
  );
});

test('a sidecar that is not base64: SIGNATURE_NOT_BASE64', async () => {
  const raw = Buffer.from(keys.sign(ec, blob), 'base64').toString('latin1');
  for (const text of [raw, 'not base64!', 'QUJD', 'QUJDRA=']) {
    const p = checkSignature({
      policy: policy([ec]),
      payload: objectPayload,
      object: blob,
      sidecar: sig(text),
    });
    if (text === 'QUJD') await rejectsWith(p, 'SIGNATURE_INVALID', /does not verify/);
    else await rejectsWith(p, 'SIGNATURE_NOT_BASE64');
  }
});

// eslint-disable-next-line @typescript-eslint/require-await -- a body that fails if it is ever read
async function* never(): AsyncGenerator<Uint8Array> {
  yield* [];
  throw new Error('the body of an oversized sidecar was read');
}

test('empty and oversized sidecars get their codes; 10 MB is refused without reading it whole', async () => {
  await rejectsWith(
    readSidecar('signature', 'k.sig', 0, chunks(Buffer.alloc(0))),
    'SIGNATURE_SIDECAR_EMPTY',
  );
  await rejectsWith(
    readSidecar('signature', 'k.sig', 3, chunks(Buffer.from(' \n\n'))),
    'SIGNATURE_SIDECAR_EMPTY',
  );
  // Declared 10 MB: refused before the first byte.
  await rejectsWith(
    readSidecar('bundle', 'k.sigstore.json', 10 * 1024 * 1024, never()),
    'SIGNATURE_SIDECAR_TOO_LARGE',
    /10485760 bytes/,
  );
  // Declared small (or unknown), 10 MB sent: abandoned right after the cap.
  let read = 0;
  async function* tenMegabytes(): AsyncGenerator<Uint8Array> {
    for (let i = 0; i < 640; i++) {
      await Promise.resolve();
      read += 16 * 1024;
      yield Buffer.alloc(16 * 1024, 0x41);
    }
  }
  await rejectsWith(
    readSidecar('signature', 'k.sig', null, tenMegabytes()),
    'SIGNATURE_SIDECAR_TOO_LARGE',
  );
  assert.ok(read <= MAX_SIDECAR_BYTES + 16 * 1024, `read ${read} bytes of 10 MB`);
  const ok = await readSidecar('signature', 'k.sig', 5, chunks(Buffer.from('QUJD\n')));
  assert.equal(ok.bytes.toString(), 'QUJD\n');
});

test('warn mode: a failed check is a record with its code, not a failure', async () => {
  const record = await checkSignature({
    policy: policy([ec], 'warn'),
    payload: objectPayload,
    object: blob,
    sidecar: sig(keys.sign(stranger, blob)),
  });
  assert.equal(record?.verdict, 'failed');
  assert.equal(record?.failure?.code, 'SIGNATURE_INVALID');
  assert.equal(record?.signer, null);
  const missing = await checkSignature({
    policy: policy([ec], 'warn'),
    payload: objectPayload,
    object: blob,
    sidecar: null,
  });
  assert.equal(missing?.failure?.code, 'SIGNATURE_MISSING');
  assert.equal(
    await checkSignature({ policy: policy([ec], 'off'), payload: objectPayload, sidecar: null }),
    null,
    'off: nothing is checked',
  );
});

test('sidecar names: <key>.sig and <key>.sigstore.json', () => {
  assert.deepEqual(sidecarKeysOf('images/a.tar'), [
    { kind: 'bundle', key: 'images/a.tar.sigstore.json' },
    { kind: 'signature', key: 'images/a.tar.sig' },
  ]);
  assert.deepEqual(sidecarTarget('images/a.tar.sig'), {
    kind: 'signature',
    imageKey: 'images/a.tar',
  });
  assert.deepEqual(sidecarTarget('images/a.tar.sigstore.json'), {
    kind: 'bundle',
    imageKey: 'images/a.tar',
  });
  assert.equal(sidecarTarget('images/a.tar'), null);
  assert.equal(sidecarTarget('.sig'), null);
});

test('every signature code is a permanent image failure (toward the DLQ)', () => {
  for (const code of [
    'SIGNATURE_MISSING',
    'SIGNATURE_INVALID',
    'SIGNATURE_SIDECAR_EMPTY',
    'SIGNATURE_SIDECAR_TOO_LARGE',
    'SIGNATURE_NOT_BASE64',
    'SIGNATURE_BUNDLE_MALFORMED',
    'SIGNATURE_BUNDLE_DIGEST_MISMATCH',
  ])
    assert.equal(isPermanentFailureCode(code), true, code);
});

test('ECDSA from the recorded sha256 (no second read) agrees with openssl on good and bad signatures', () => {
  const key = keys.ecdsa();
  const { key: pub } = trustedKeyOf(key.publicKeyPem, 'k');
  const otherKey = trustedKeyOf(keys.ecdsa().publicKeyPem, 'o').key;
  for (let i = 0; i < 12; i++) {
    const blob = randomBytes(1000 + i * 37);
    const sig = Buffer.from(keys.sign(key, blob), 'base64');
    const digest = createHash('sha256').update(blob).digest();
    assert.equal(verifyP256Digest(pub, digest, sig), true, `signature ${i}`);
    const flipped = Buffer.from(digest);
    flipped[i % 32]! ^= 1 << (i % 8);
    assert.equal(verifyP256Digest(pub, flipped, sig), false, `tampered digest ${i}`);
    assert.equal(verifyP256Digest(otherKey, digest, sig), false, `other key ${i}`);
    const badSig = Buffer.from(sig);
    badSig[badSig.length - 1]! ^= 1;
    assert.equal(verifyP256Digest(pub, digest, badSig), false, `tampered signature ${i}`);
  }
  assert.equal(
    verifyP256Digest(pub, Buffer.alloc(32), Buffer.from('3006020100020100', 'hex')),
    false,
  );
});
