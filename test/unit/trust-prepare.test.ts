/**
 * A daemon prepares the keyless verifier before its first image
 * (trust/check-signature.ts prepareVerifier): loaded only when the policy
 * trusts identities, and a bad trusted root only warns (the image's own
 * check reports it). Its own file: the libraries' load is per process.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { prepareVerifier } from '../../host-agent/src/trust/check-signature.js';
import { effectivePolicy, type TrustPolicy } from '../../host-agent/src/trust/policy.js';
import { sigstoreLoaded } from '../../host-agent/src/trust/verify-bundle.js';
import { parseSignaturePolicy } from '../../schema/signature-policy.js';
import { KeyDir } from '../helpers/signing-keys.js';
import { testSigstore } from '../helpers/sigstore-fixtures.js';

const keys = new KeyDir();
after(() => keys.remove());
const sigstore = testSigstore(keys);
const identity = {
  issuer: 'https://token.actions.githubusercontent.com',
  subject: 'https://github.com/acme/images/.github/workflows/release.yml@refs/heads/main',
};
const policyOf = (raw: object): TrustPolicy => effectivePolicy(parseSignaturePolicy(raw, '$'));

test('prepared only for identities: the libraries loaded ahead; a bad root only warns', async () => {
  const warnings: string[] = [];
  const warn = (message: string, err: unknown): void => {
    warnings.push(`${message}: ${(err as Error).message}`);
  };
  await prepareVerifier(
    policyOf({ mode: 'require', publicKeys: [keys.ecdsa().publicKeyPem] }),
    warn,
  );
  assert.equal(sigstoreLoaded(), false, 'a key-only policy loads nothing');
  await prepareVerifier(
    policyOf({
      mode: 'require',
      identities: [identity],
      sigstore: { trustedRoot: sigstore.trustedRootFile, tlogEntries: 0, ctlogSCTs: 0 },
    }),
    warn,
  );
  assert.equal(sigstoreLoaded(), true);
  assert.deepEqual(warnings, []);
  await prepareVerifier(
    policyOf({
      mode: 'require',
      identities: [identity],
      sigstore: { trustedRoot: keys.path('missing-root.json'), tlogEntries: 0, ctlogSCTs: 0 },
    }),
    warn,
  );
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /could not prepare the keyless signature verifier: .*missing-root/);
});
