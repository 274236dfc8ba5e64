/**
 * What verifying an image's signature costs (host-agent/src/trust/): per
 * image, the median of N runs of checkSignature for an ECDSA P-256 and an
 * Ed25519 `.sig` over the manifest-digest payload, an ECDSA `.sig` over a
 * streamed 256 MiB object (the extra SHA-256 pass, and the same pass alone
 * with createHash for comparison), and a keyless Sigstore bundle (the first
 * one in a process, which loads the libraries, and the next ones). Keys,
 * signatures and the private Sigstore are made with openssl as in the tests.
 *
 * Run: npm run build && node dist/test/bench/trust-bench.js [runs]
 * Figures, not assertions (each check must still verify).
 */
import { createHash, randomBytes } from 'node:crypto';
import { loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { checkSignature, type SignatureCheck } from '../../host-agent/src/trust/check-signature.js';
import { effectivePolicy } from '../../host-agent/src/trust/policy.js';
import { manifestDigestPayload } from '../../host-agent/src/trust/signed-payload.js';
import { parseSignaturePolicy } from '../../schema/signature-policy.js';
import { KeyDir } from '../helpers/signing-keys.js';
import { testSigstore } from '../helpers/sigstore-fixtures.js';

const runs = Number(process.argv[2] ?? 15);
const keys = new KeyDir();
try {
  const ec = keys.ecdsa();
  const ed = keys.ed25519();
  const ISSUER = 'https://token.actions.githubusercontent.com';
  const SUBJECT = 'https://github.com/acme/images/.github/workflows/release.yml@refs/heads/main';
  const sigstore = testSigstore(keys);
  const manifest = `sha256:${createHash('sha256').update('m').digest('hex')}`;
  const payload = manifestDigestPayload(manifest);
  const policy = effectivePolicy(
    parseSignaturePolicy(
      {
        mode: 'require',
        publicKeys: [ec.publicKeyPem, ed.publicKeyPem],
        identities: [{ issuer: ISSUER, subject: SUBJECT }],
        sigstore: { trustedRoot: sigstore.trustedRootFile, tlogEntries: 0, ctlogSCTs: 0 },
      },
      '$',
    ),
  );
  const objectBytes = 256 * 1024 * 1024;
  const chunk = randomBytes(1024 * 1024);
  const object = async function* (): AsyncGenerator<Uint8Array> {
    for (let i = 0; i < objectBytes / chunk.length; i++) {
      await Promise.resolve();
      yield chunk;
    }
  };
  const objectHash = createHash('sha256');
  for (let i = 0; i < objectBytes / chunk.length; i++) objectHash.update(chunk);
  const objectSha = objectHash.digest('hex');
  const objectSig = keys.sign(ec, Buffer.concat(Array(objectBytes / chunk.length).fill(chunk)));
  const bundle = Buffer.from(
    JSON.stringify(sigstore.bundle(Buffer.from(manifest), { issuer: ISSUER, subject: SUBJECT })),
  );

  const ecOnly = effectivePolicy(
    parseSignaturePolicy({ mode: 'require', publicKeys: [ec.publicKeyPem] }, '$'),
  );
  const check = async (c: Omit<SignatureCheck, 'policy'>, p = policy): Promise<number> => {
    const t = performance.now();
    const record = await checkSignature({ policy: p, ...c });
    const ms = performance.now() - t;
    if (record?.verdict !== 'verified') throw new Error('did not verify');
    return ms;
  };
  const median = (xs: number[]): number =>
    [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
  const rows: [string, number][] = [];
  const firstBundle = await check({
    payload,
    sidecar: { kind: 'bundle', key: 'k.sigstore.json', bytes: bundle },
  });
  rows.push(['keyless bundle, first in the process (loads @sigstore/*)', firstBundle]);
  const series = async (name: string, n: number, f: () => Promise<number>): Promise<void> => {
    const xs: number[] = [];
    for (let i = 0; i < n; i++) xs.push(await f());
    rows.push([name, median(xs)]);
  };
  await series('ECDSA P-256 .sig, manifest digest', runs, () =>
    check({
      payload,
      sidecar: { kind: 'signature', key: 'k.sig', bytes: Buffer.from(keys.sign(ec, manifest)) },
    }),
  );
  await series('Ed25519 .sig, manifest digest', runs, () =>
    check({
      payload,
      sidecar: { kind: 'signature', key: 'k.sig', bytes: Buffer.from(keys.sign(ed, manifest)) },
    }),
  );
  await series('keyless bundle (next ones)', runs, () =>
    check({ payload, sidecar: { kind: 'bundle', key: 'k.sigstore.json', bytes: bundle } }),
  );
  const objectCheck = (p: typeof policy) => () =>
    check(
      {
        payload: { kind: 'object', sha256: objectSha },
        object: object(),
        sidecar: { kind: 'signature', key: 'k.sig', bytes: Buffer.from(objectSig) },
      },
      p,
    );
  await series(
    'ECDSA P-256 .sig, streamed 256 MiB object, policy of one ECDSA key',
    5,
    objectCheck(ecOnly),
  );
  await series(
    'same, policy also trusting an Ed25519 key (its first 64 MiB held, then given up)',
    5,
    objectCheck(policy),
  );
  await series('(SHA-256 of the same 256 MiB alone)', 5, async () => {
    const t = performance.now();
    const h = createHash('sha256');
    for await (const c of object()) h.update(c);
    h.digest();
    return performance.now() - t;
  });
  console.log(
    `load average ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}; medians of ${runs} (object rows: 5)`,
  );
  for (const [name, ms] of rows) console.log(`${ms.toFixed(2).padStart(9)} ms  ${name}`);
} finally {
  keys.remove();
}
