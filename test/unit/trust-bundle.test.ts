/**
 * Sigstore bundles (`<key>.sigstore.json`) verified offline by @sigstore/verify
 * against a trusted root made in the test (helpers/sigstore-fixtures.ts: a
 * root CA, a leaf with a keyless identity, an RFC 3161 timestamp authority).
 * Rekor entries and SCTs cannot be made offline here: those bundles verify
 * with tlogEntries 0 and ctlogSCTs 0, and the default thresholds refuse them.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import {
  EnvironmentError,
  ImageError,
  type ImageFailureCode,
} from '../../host-agent/src/errors.js';
import { checkSignature } from '../../host-agent/src/trust/check-signature.js';
import { effectivePolicy, type TrustPolicy } from '../../host-agent/src/trust/policy.js';
import type { Sidecar } from '../../host-agent/src/trust/sidecar.js';
import { manifestDigestPayload } from '../../host-agent/src/trust/signed-payload.js';
import { parseSignaturePolicy, type KeylessIdentity } from '../../schema/signature-policy.js';
import { KeyDir } from '../helpers/signing-keys.js';
import { testSigstore } from '../helpers/sigstore-fixtures.js';

const keys = new KeyDir();
after(() => keys.remove());
const sigstore = testSigstore(keys);
const ISSUER = 'https://token.actions.githubusercontent.com';
const RELEASE = 'https://github.com/acme/images/.github/workflows/release.yml@refs/heads/main';
const manifest = `sha256:${createHash('sha256').update('manifest').digest('hex')}`;
const payload = manifestDigestPayload(manifest);
const signed = sigstore.bundle(Buffer.from(manifest), { issuer: ISSUER, subject: RELEASE });

function policy(
  identities: KeylessIdentity[],
  evidence: { tlogEntries?: number; ctlogSCTs?: number; trustedRoot?: string } = {},
): TrustPolicy {
  return effectivePolicy(
    parseSignaturePolicy(
      {
        mode: 'require',
        identities,
        sigstore: {
          trustedRoot: evidence.trustedRoot ?? sigstore.trustedRootFile,
          tlogEntries: evidence.tlogEntries ?? 0,
          ctlogSCTs: evidence.ctlogSCTs ?? 0,
          timestamps: 1,
        },
      },
      '$',
    ),
  );
}

function sidecar(json: unknown): Sidecar {
  return {
    kind: 'bundle',
    key: 'images/app.oci.tar.sigstore.json',
    bytes: Buffer.from(typeof json === 'string' ? json : JSON.stringify(json)),
  };
}

async function rejectsWith(p: Promise<unknown>, code: ImageFailureCode, text?: RegExp) {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof ImageError, String(err));
    assert.equal(err.code, code, err.message);
    if (text) assert.match(err.message, text);
    return true;
  });
}

test('a keyless bundle verifies against the trusted root, for an exact subject and for a pattern', async () => {
  for (const identity of [
    { issuer: ISSUER, subject: RELEASE },
    { issuer: ISSUER, subjectPattern: 'https://github\\.com/acme/images/.*@refs/heads/main' },
  ]) {
    const record = await checkSignature({
      policy: policy([identity]),
      payload,
      sidecar: sidecar(signed),
    });
    assert.equal(record?.verdict, 'verified');
    assert.deepEqual(record?.signer, {
      type: 'identity',
      issuer: ISSUER,
      subject: RELEASE,
      matched:
        'subject' in identity ? `${ISSUER} ${RELEASE}` : `${ISSUER} ~${identity.subjectPattern}`,
    });
  }
});

test('another subject or issuer: SIGNATURE_INVALID naming the identities tried', async () => {
  const other = 'https://github.com/acme/images/.github/workflows/release.yml@refs/heads/dev';
  await rejectsWith(
    checkSignature({
      policy: policy([{ issuer: ISSUER, subject: other }]),
      payload,
      sidecar: sidecar(signed),
    }),
    'SIGNATURE_INVALID',
    new RegExp(`for identity ${ISSUER} ${other}`),
  );
  await rejectsWith(
    checkSignature({
      policy: policy([{ issuer: 'https://accounts.google.com', subject: RELEASE }]),
      payload,
      sidecar: sidecar(signed),
    }),
    'SIGNATURE_INVALID',
    /accounts\.google\.com/,
  );
});

test('a bundle whose signature is not over the payload: SIGNATURE_INVALID', async () => {
  const otherSig = sigstore.bundle(Buffer.from('something else'), {
    issuer: ISSUER,
    subject: RELEASE,
  });
  const forged = structuredClone(signed) as { messageSignature: { signature: string } };
  forged.messageSignature.signature = (otherSig as typeof forged).messageSignature.signature;
  await rejectsWith(
    checkSignature({
      policy: policy([{ issuer: ISSUER, subject: RELEASE }]),
      payload,
      sidecar: sidecar(forged),
    }),
    'SIGNATURE_INVALID',
  );
});

test('a bundle from a CA the trusted root does not hold: SIGNATURE_INVALID', async () => {
  const elsewhere = new KeyDir();
  try {
    const foreign = testSigstore(elsewhere).bundle(Buffer.from(manifest), {
      issuer: ISSUER,
      subject: RELEASE,
    });
    await rejectsWith(
      checkSignature({
        policy: policy([{ issuer: ISSUER, subject: RELEASE }]),
        payload,
        sidecar: sidecar(foreign),
      }),
      'SIGNATURE_INVALID',
    );
  } finally {
    elsewhere.remove();
  }
});

test('Sigstore’s default evidence (a Rekor entry, an SCT) is required unless the policy lowers it', async () => {
  await rejectsWith(
    checkSignature({
      policy: policy([{ issuer: ISSUER, subject: RELEASE }], { tlogEntries: 1 }),
      payload,
      sidecar: sidecar(signed),
    }),
    'SIGNATURE_INVALID',
    /expected 1 tlog entries, got 0/,
  );
  await rejectsWith(
    checkSignature({
      policy: policy([{ issuer: ISSUER, subject: RELEASE }], { ctlogSCTs: 1 }),
      payload,
      sidecar: sidecar(signed),
    }),
    'SIGNATURE_INVALID',
    /expected 1 SCTs, got 0/,
  );
});

test('a bundle for another digest: SIGNATURE_BUNDLE_DIGEST_MISMATCH', async () => {
  const other = manifestDigestPayload(`sha256:${'0'.repeat(64)}`);
  await rejectsWith(
    checkSignature({
      policy: policy([{ issuer: ISSUER, subject: RELEASE }]),
      payload: other,
      sidecar: sidecar(signed),
    }),
    'SIGNATURE_BUNDLE_DIGEST_MISMATCH',
    new RegExp(`is for sha256:${payload.sha256}, not this image's manifest sha256:0{64}`),
  );
});

test('malformed bundles: SIGNATURE_BUNDLE_MALFORMED with the reason', async () => {
  const p = policy([{ issuer: ISSUER, subject: RELEASE }]);
  const noCert = structuredClone(signed) as { verificationMaterial: Record<string, unknown> };
  noCert.verificationMaterial.certificate = { rawBytes: '' };
  const dsse = { ...structuredClone(signed), dsseEnvelope: {} } as Record<string, unknown>;
  delete dsse.messageSignature;
  for (const [json, why] of [
    ['{"mediaType":', /not JSON/],
    ['[]', /not a JSON object/],
    [{ mediaType: 'application/json' }, /not a Sigstore bundle/],
    [dsse, /DSSE attestation/],
    [{ mediaType: 'application/vnd.dev.sigstore.bundle.v0.3+json' }, /no messageSignature/],
    [noCert, /certificate/],
  ] as const) {
    await rejectsWith(
      checkSignature({ policy: p, payload, sidecar: sidecar(json) }),
      'SIGNATURE_BUNDLE_MALFORMED',
      why,
    );
  }
});

test('an unreadable trusted root is the host’s fault (TRUST_ROOT_UNAVAILABLE), not the image’s', async () => {
  await assert.rejects(
    checkSignature({
      policy: policy([{ issuer: ISSUER, subject: RELEASE }], {
        trustedRoot: keys.path('missing.json'),
      }),
      payload,
      sidecar: sidecar(signed),
    }),
    (err: unknown) => err instanceof EnvironmentError && err.code === 'TRUST_ROOT_UNAVAILABLE',
  );
});

test('a bundle carrying a public key verifies with the policy’s keys, like a .sig', async () => {
  const key = keys.ecdsa();
  const stranger = keys.ecdsa();
  const bundle = (signer: typeof key) => ({
    mediaType: 'application/vnd.dev.sigstore.bundle.v0.3+json',
    verificationMaterial: { publicKey: { hint: '' }, tlogEntries: [] },
    messageSignature: {
      messageDigest: {
        algorithm: 'SHA2_256',
        digest: createHash('sha256').update(manifest).digest('base64'),
      },
      signature: keys.sign(signer, manifest),
    },
  });
  const p = effectivePolicy(
    parseSignaturePolicy({ mode: 'require', publicKeys: [key.publicKeyPem] }, '$'),
  );
  const record = await checkSignature({ policy: p, payload, sidecar: sidecar(bundle(key)) });
  assert.deepEqual(record?.signer, {
    type: 'key',
    fingerprint: key.fingerprint,
    algorithm: 'ecdsa-p256',
  });
  await rejectsWith(
    checkSignature({ policy: p, payload, sidecar: sidecar(bundle(stranger)) }),
    'SIGNATURE_INVALID',
    new RegExp(key.fingerprint),
  );
});

test('the Sigstore libraries load only when a bundle is verified', () => {
  const dir = fileURLToPath(new URL('../../host-agent/src/trust/', import.meta.url));
  const script = `
    import { registerHooks } from 'node:module';
    const loaded = [];
    registerHooks({ resolve(spec, ctx, next) { if (spec.startsWith('@sigstore/')) loaded.push(spec); return next(spec, ctx); } });
    const { checkSignature } = await import(${JSON.stringify(dir + 'check-signature.js')});
    const { effectivePolicy } = await import(${JSON.stringify(dir + 'policy.js')});
    const { SIGNATURES_OFF } = await import(${JSON.stringify(dir + '../../../schema/signature-policy.js')});
    const before = loaded.length;
    const policy = effectivePolicy({ ...SIGNATURES_OFF, mode: 'warn', publicKeys: [${JSON.stringify(keys.ecdsa().publicKeyPem)}] });
    const payload = { kind: 'object', sha256: '0'.repeat(64) };
    await checkSignature({ policy, payload, object: Buffer.from('x'), sidecar: { kind: 'signature', key: 'k.sig', bytes: Buffer.from('QUJD') } });
    const afterKey = loaded.length;
    await checkSignature({ policy, payload, object: Buffer.from('x'), sidecar: { kind: 'bundle', key: 'k.sigstore.json', bytes: Buffer.from(${JSON.stringify(JSON.stringify({ ...signed, messageSignature: { messageDigest: { algorithm: 'SHA2_256', digest: Buffer.alloc(32).toString('base64') }, signature: '' } }))}) } });
    console.log(JSON.stringify({ before, afterKey, afterBundle: loaded.length }));
  `;
  const out = JSON.parse(
    execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' }),
  ) as { before: number; afterKey: number; afterBundle: number };
  assert.equal(out.before, 0, 'importing the trust code loads no Sigstore module');
  assert.equal(out.afterKey, 0, 'a key signature loads no Sigstore module');
  assert.ok(out.afterBundle >= 3, `a bundle loads them (${out.afterBundle})`);
});

test('bundled as the CLI is (esbuild, split chunks), a keyless bundle still verifies and loads in its own chunk', async () => {
  const { build } = await import('esbuild');
  const dir = keys.path('esbuild');
  const trust = fileURLToPath(new URL('../../host-agent/src/trust/', import.meta.url));
  const schema = fileURLToPath(new URL('../../schema/', import.meta.url));
  writeFileSync(
    keys.path('entry.mjs'),
    `import { checkSignature } from ${JSON.stringify(trust + 'check-signature.js')};
     import { effectivePolicy } from ${JSON.stringify(trust + 'policy.js')};
     import { manifestDigestPayload } from ${JSON.stringify(trust + 'signed-payload.js')};
     import { parseSignaturePolicy } from ${JSON.stringify(schema + 'signature-policy.js')};
     const policy = effectivePolicy(parseSignaturePolicy(${JSON.stringify({
       mode: 'require',
       identities: [{ issuer: ISSUER, subject: RELEASE }],
       sigstore: { trustedRoot: sigstore.trustedRootFile, tlogEntries: 0, ctlogSCTs: 0 },
     })}, '$'));
     const record = await checkSignature({ policy, payload: manifestDigestPayload(${JSON.stringify(manifest)}),
       sidecar: { kind: 'bundle', key: 'k', bytes: Buffer.from(${JSON.stringify(JSON.stringify(signed))}) } });
     console.log(JSON.stringify(record.signer));`,
  );
  // The options scripts/bundle-cli.mjs bundles the CLI with.
  await build({
    entryPoints: { main: keys.path('entry.mjs') },
    outdir: dir,
    outExtension: { '.js': '.mjs' },
    bundle: true,
    splitting: true,
    chunkNames: 'chunks/[name]-[hash]',
    platform: 'node',
    mainFields: ['module', 'main'],
    format: 'esm',
    target: 'node26',
    banner: {
      js: "import { createRequire as __thinrelayRequire } from 'node:module'; const require = __thinrelayRequire(import.meta.url);",
    },
    logLevel: 'warning',
  });
  assert.equal(
    readFileSync(`${dir}/main.mjs`, 'utf8').includes('TIMESTAMP_ERROR'),
    false,
    'the Sigstore libraries are not in the entry chunk',
  );
  const out = execFileSync(process.execPath, [`${dir}/main.mjs`], { encoding: 'utf8' });
  assert.deepEqual(JSON.parse(out), {
    type: 'identity',
    issuer: ISSUER,
    subject: RELEASE,
    matched: `${ISSUER} ${RELEASE}`,
  });
});
