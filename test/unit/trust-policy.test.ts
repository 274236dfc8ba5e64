/**
 * The signature policy: parsing (schema/signature-policy.ts, also through the
 * deployment config) with errors naming the path, and the per-host override
 * that may only make a group's policy stricter (trust/policy.ts).
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { InfraConfigError, parseConfig } from '../../infra/lib/config.js';
import { deploymentConfigItem } from '../../infra/lib/deployment-item.js';
import { UsageError } from '../../host-agent/src/errors.js';
import {
  effectivePolicy,
  parseHostOverride,
  type HostSignatureOverride,
} from '../../host-agent/src/trust/policy.js';
import {
  parseSignaturePolicy,
  SignaturePolicyError,
  type SignaturePolicy,
} from '../../schema/signature-policy.js';
import { KeyDir } from '../helpers/signing-keys.js';

const keys = new KeyDir();
after(() => keys.remove());
const ec = keys.ecdsa();
const ed = keys.ed25519();
const ISSUER = 'https://token.actions.githubusercontent.com';
const RELEASE = 'https://github.com/acme/images/.github/workflows/release.yml@refs/heads/main';
const ANY_BRANCH =
  'https://github\\.com/acme/images/\\.github/workflows/release\\.yml@refs/heads/.*';

const group: SignaturePolicy = parseSignaturePolicy(
  {
    mode: 'warn',
    publicKeys: [ec.publicKeyPem, ed.publicKeyPem],
    identities: [
      { issuer: ISSUER, subject: RELEASE },
      { issuer: ISSUER, subjectPattern: ANY_BRANCH },
    ],
    sigstore: { trustedRoot: '/etc/thinrelay/trusted_root.json' },
    awaitSeconds: 600,
  },
  '$.signatures',
);

function rejects(value: unknown, path: string, message: RegExp): void {
  assert.throws(
    () => parseSignaturePolicy(value, '$.signatures'),
    (err: unknown) => {
      assert.ok(err instanceof SignaturePolicyError, String(err));
      assert.equal(err.path, path);
      assert.match(err.message, message);
      return true;
    },
  );
}

test('a full policy parses; an absent one is off', () => {
  assert.equal(group.mode, 'warn');
  assert.equal(group.publicKeys.length, 2);
  assert.deepEqual(group.sigstore, {
    trustedRoot: '/etc/thinrelay/trusted_root.json',
    tlogEntries: 1,
    ctlogSCTs: 1,
    timestamps: 1,
  });
  assert.equal(group.awaitSeconds, 600);
  assert.equal(parseSignaturePolicy(undefined, '$').mode, 'off');
});

test('bad policies are refused naming the path', () => {
  rejects({ mode: 'strict' }, '$.signatures.mode', /one of 'off', 'warn', 'require'/);
  rejects({ mode: 'require' }, '$.signatures', /needs at least one of publicKeys or identities/);
  rejects({ publicKeys: ['hello'] }, '$.signatures.publicKeys[0]', /not a PEM public key/);
  rejects(
    {
      publicKeys: [
        keys.otherPublicKeyPem([
          'genpkey',
          '-algorithm',
          'rsa',
          '-pkeyopt',
          'rsa_keygen_bits:2048',
        ]),
      ],
    },
    '$.signatures.publicKeys[0]',
    /a rsa key: only ECDSA P-256 and Ed25519/,
  );
  rejects(
    {
      publicKeys: [
        keys.otherPublicKeyPem([
          'genpkey',
          '-algorithm',
          'EC',
          '-pkeyopt',
          'ec_paramgen_curve:P-384',
        ]),
      ],
    },
    '$.signatures.publicKeys[0]',
    /an EC key on secp384r1/,
  );
  rejects(
    { identities: [{ issuer: ISSUER, subject: RELEASE }] },
    '$.signatures.sigstore.trustedRoot',
    /required with identities/,
  );
  rejects(
    { identities: [{ issuer: ISSUER, subject: RELEASE, subjectPattern: '.*' }] },
    '$.signatures.identities[0]',
    /exactly one of subject or subjectPattern/,
  );
  rejects(
    { identities: [{ issuer: ISSUER, subjectPattern: '(' }] },
    '$.signatures.identities[0].subjectPattern',
    /not a regular expression/,
  );
  rejects(
    { identities: [{ issuer: 'acme', subject: 'x' }] },
    '$.signatures.identities[0].issuer',
    /OIDC issuer URL/,
  );
  rejects(
    { sigstore: { trustedRoot: 'trusted_root.json' } },
    '$.signatures.sigstore.trustedRoot',
    /absolute path/,
  );
  rejects({ sigstore: { timestamps: 0 } }, '$.signatures.sigstore.timestamps', /at least 1/);
  rejects({ awaitSeconds: -1 }, '$.signatures.awaitSeconds', /whole number/);
  rejects({ mode: 'warn', keys: [] }, '$.signatures', /unknown key\(s\) "keys"/);
});

test('the deployment config: groups inherit the top-level policy or give their own; the CONFIG item carries it', () => {
  const config = parseConfig({
    signatures: { mode: 'require', publicKeys: [ec.publicKeyPem] },
    groups: [
      { name: 'default' },
      { name: 'lab', signatures: { mode: 'warn', publicKeys: [ed.publicKeyPem] } },
    ],
  });
  assert.deepEqual(
    config.groups.map((g) => [g.name, g.signatures.mode, g.signatures.publicKeys]),
    [
      ['default', 'require', [ec.publicKeyPem]],
      ['lab', 'warn', [ed.publicKeyPem]],
    ],
  );
  const item = deploymentConfigItem(config, 'bucket');
  assert.equal(item.signatures?.default?.mode, 'require');
  assert.equal(item.signatures?.lab?.publicKeys[0], ed.publicKeyPem);
  assert.throws(
    () => parseConfig({ groups: [{ name: 'default', signatures: { mode: 'require' } }] }),
    (err: unknown) =>
      err instanceof InfraConfigError &&
      err.path === '$.groups[0].signatures' &&
      /needs at least one of publicKeys or identities/.test(err.message) &&
      !err.message.includes('$.groups[0].signatures: $.groups'),
  );
});

function loosens(override: HostSignatureOverride, message: RegExp): void {
  assert.throws(
    () => effectivePolicy(group, override),
    (err: unknown) =>
      err instanceof UsageError && err.code === 'CONFIG' && message.test(err.message),
  );
}

test('stricter per host: the mode only rises', () => {
  assert.equal(effectivePolicy(group).mode, 'warn');
  assert.equal(effectivePolicy(group, { mode: 'require' }).mode, 'require');
  assert.equal(effectivePolicy(group, { mode: 'warn' }).mode, 'warn');
  loosens({ mode: 'off' }, /'off' is weaker than its group's 'warn'/);
  const off = parseSignaturePolicy({ publicKeys: [ec.publicKeyPem] }, '$');
  assert.equal(effectivePolicy(off, { mode: 'require' }).mode, 'require', 'a host may turn it on');
  assert.throws(
    () => effectivePolicy(parseSignaturePolicy(undefined, '$'), { mode: 'require' }),
    /leaves no key or identity to trust/,
  );
});

test('stricter per host: keys and identities only narrow to ones the group lists', () => {
  const narrowed = effectivePolicy(group, { onlyKeys: [ed.fingerprint] });
  assert.deepEqual(
    narrowed.keys.map((k) => k.fingerprint),
    [ed.fingerprint],
  );
  const stranger = keys.ecdsa();
  loosens({ onlyKeys: [stranger.fingerprint] }, new RegExp(`does not: ${stranger.fingerprint}`));

  const one = effectivePolicy(group, { onlyIdentities: [{ issuer: ISSUER, subject: RELEASE }] });
  assert.deepEqual(
    one.identities.map((i) => i.label),
    [`${ISSUER} ${RELEASE}`],
  );
  // A new subject, a wider pattern, another issuer: each would trust more.
  loosens({ onlyIdentities: [{ issuer: ISSUER, subject: 'https://github.com/evil' }] }, /does not/);
  loosens({ onlyIdentities: [{ issuer: ISSUER, subjectPattern: '.*' }] }, /does not/);
  loosens(
    { onlyIdentities: [{ issuer: 'https://accounts.google.com', subject: RELEASE }] },
    /does not/,
  );
  // Narrowed to nothing while verifying: refused, not "trust nothing and fail everything" silently.
  loosens({ onlyKeys: [], onlyIdentities: [] }, /leaves no key or identity/);
  // The evidence and the wait are the group's.
  const p = effectivePolicy(group, { mode: 'require', onlyKeys: [ec.fingerprint] });
  assert.deepEqual(p.sigstore, group.sigstore);
  assert.equal(p.awaitSeconds, 600);
});

test('identity patterns are anchored: a pattern never matches a longer subject', () => {
  const p = effectivePolicy(group);
  const pattern = p.identities[1]?.subject;
  assert.ok(pattern instanceof RegExp);
  assert.ok(pattern.test(`${RELEASE.replace('main', 'release-1')}`));
  assert.equal(pattern.test(`https://evil.example/${RELEASE}`), false);
  assert.equal(
    pattern.test('https://github.com/acme/images/.github/workflows/release.yml@refs/tags/v1'),
    false,
  );
});

test('the host override from agent.env', () => {
  assert.deepEqual(parseHostOverride({}), {});
  assert.deepEqual(
    parseHostOverride({
      THINRELAY_SIGNATURE_MODE: 'require',
      THINRELAY_SIGNATURE_KEYS: `${ec.fingerprint}, ${ed.fingerprint}`,
      THINRELAY_SIGNATURE_IDENTITIES: JSON.stringify([{ issuer: ISSUER, subject: RELEASE }]),
    }),
    {
      mode: 'require',
      onlyKeys: [ec.fingerprint, ed.fingerprint],
      onlyIdentities: [{ issuer: ISSUER, subject: RELEASE }],
    },
  );
  assert.throws(() => parseHostOverride({ THINRELAY_SIGNATURE_MODE: 'strict' }), /must be one of/);
  assert.throws(
    () => parseHostOverride({ THINRELAY_SIGNATURE_KEYS: 'cosign.pub' }),
    /not a key fingerprint/,
  );
  assert.throws(() => parseHostOverride({ THINRELAY_SIGNATURE_IDENTITIES: '{' }), /not JSON/);
});
