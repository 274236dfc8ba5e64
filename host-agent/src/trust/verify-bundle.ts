/**
 * Verifies a Sigstore bundle offline with @sigstore/verify against the
 * operator's trusted root file: the certificate chains to one of its CAs at a
 * verified time (a log entry's integration time or an RFC 3161 token from one
 * of its timestamp authorities), the evidence thresholds the policy sets hold,
 * the signature is over the payload, and the certificate names a trusted
 * identity (issuer and subject). A bundle carrying a public key instead of a
 * certificate is checked against the policy's keys, like a `.sig`.
 *
 * The Sigstore libraries load here, on the first bundle only (dynamic
 * import): commands that verify nothing never pay for them.
 */
import { readFile, stat } from 'node:fs/promises';
import { EnvironmentError, ImageError } from '../errors.js';
import type { TrustPolicy, TrustedIdentity } from './policy.js';
import type { BundleSidecar } from './sigstore-bundle.js';
import type { TrustedKey } from './trusted-keys.js';

export type BundleSigner =
  | { type: 'identity'; issuer: string; subject: string; matched: string }
  | { type: 'key'; key: TrustedKey };

interface SigstoreLibs {
  verify: typeof import('@sigstore/verify');
  bundle: typeof import('@sigstore/bundle');
  specs: typeof import('@sigstore/protobuf-specs');
}

let libs: Promise<SigstoreLibs> | undefined;

function loadLibs(): Promise<SigstoreLibs> {
  libs ??= Promise.all([
    import('@sigstore/verify'),
    import('@sigstore/bundle'),
    import('@sigstore/protobuf-specs'),
  ]).then(([verify, bundle, specs]) => ({
    verify: commonJs(verify),
    bundle: commonJs(bundle),
    specs: commonJs(specs),
  }));
  return libs;
}

/**
 * The libraries are CommonJS: Node's import gives their exports by name and as
 * `default`, the CLI's esbuild bundle only as `default`. Take `default`.
 */
function commonJs<T>(ns: T): T {
  return (ns as { default?: T }).default ?? ns;
}

/**
 * Loads the libraries and parses the trusted root before the first keyless
 * image, so that image's check costs what the next ones do (a daemon calls
 * this when its policy trusts identities).
 */
export async function prepareKeyless(policy: TrustPolicy): Promise<void> {
  if (policy.mode === 'off' || policy.identities.length === 0) return;
  const { verify, specs } = await loadLibs();
  await trustMaterial(policy, verify, specs);
}

/** Whether this process has loaded the Sigstore libraries (the cold-start test asks). */
export function sigstoreLoaded(): boolean {
  return libs !== undefined;
}

export async function verifyBundle(
  policy: TrustPolicy,
  sidecar: BundleSidecar,
  payload: Buffer,
): Promise<BundleSigner> {
  const { verify, bundle: bundleLib, specs } = await loadLibs();
  let bundle: ReturnType<typeof bundleLib.bundleFromJSON>;
  let entity: ReturnType<typeof verify.toSignedEntity>;
  try {
    bundle = bundleLib.bundleFromJSON(sidecar.json);
    entity = verify.toSignedEntity(bundle, payload);
  } catch (err) {
    // @sigstore/bundle names the missing or bad fields separately from its one-word message.
    const fields = err instanceof bundleLib.ValidationError ? (err.fields ?? []) : [];
    throw new ImageError(
      'SIGNATURE_BUNDLE_MALFORMED',
      `signature bundle ${sidecar.key}: ${(err as Error).message}${fields.length > 0 ? ` (${fields.join(', ')})` : ''}`,
      'upload the file `cosign sign-blob --bundle <file>` wrote, unchanged',
    );
  }
  if (sidecar.material === 'publicKey')
    return verifyKeyBundle(policy, sidecar, entity, verify, specs);

  if (policy.identities.length === 0)
    throw invalid(sidecar.key, 'a keyless certificate, but the policy trusts no identity', []);
  const verifier = new verify.Verifier(await trustMaterial(policy, verify, specs), {
    tlogThreshold: policy.sigstore.tlogEntries,
    ctlogThreshold: policy.sigstore.ctlogSCTs,
    timestampThreshold: policy.sigstore.timestamps,
  });
  const reasons: string[] = [];
  for (const identity of policy.identities) {
    try {
      const signer = verifier.verify(entity, {
        subjectAlternativeName: identity.subject,
        extensions: { issuer: identity.issuer },
      });
      return {
        type: 'identity',
        issuer: signer.identity?.extensions?.issuer ?? identity.issuer,
        subject: signer.identity?.subjectAlternativeName ?? '',
        matched: identity.label,
      };
    } catch (err) {
      reasons.push(`${identity.label}: ${(err as Error).message}`);
      // The chain, evidence or signature failed: no other identity can change that.
      if (!isPolicyError(err, verify)) break;
    }
  }
  throw invalid(sidecar.key, reasons.join('; '), policy.identities);
}

function isPolicyError(err: unknown, verify: SigstoreLibs['verify']): boolean {
  return err instanceof verify.PolicyError;
}

function invalid(key: string, why: string, identities: readonly TrustedIdentity[]): ImageError {
  const tried = identities.map((i) => i.label).join(', ');
  return new ImageError(
    'SIGNATURE_INVALID',
    `signature bundle ${key} does not verify${tried ? ` for identit${identities.length === 1 ? 'y' : 'ies'} ${tried}` : ''}: ${why}`,
    'sign as an identity the group policy trusts; the bundle must chain to the trusted root',
  );
}

function verifyKeyBundle(
  policy: TrustPolicy,
  sidecar: BundleSidecar,
  entity: ReturnType<SigstoreLibs['verify']['toSignedEntity']>,
  verify: SigstoreLibs['verify'],
  specs: SigstoreLibs['specs'],
): BundleSigner {
  // The policy's keys are the trust here, as for a `.sig`: no log or timestamp is required.
  const empty = specs.TrustedRoot.fromJSON({
    mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
  });
  for (const key of policy.keys) {
    const material = verify.toTrustMaterial(empty, () => ({
      publicKey: key.key,
      validFor: () => true,
    }));
    const verifier = new verify.Verifier(material, {
      tlogThreshold: 0,
      ctlogThreshold: 0,
      timestampThreshold: 0,
    });
    try {
      // The key is the trust: log entries and timestamps (cosign 3 uploads one by default) are not checked.
      verifier.verify({ ...entity, tlogEntries: [], timestamps: [] });
      return { type: 'key', key };
    } catch {
      // Not this key: try the next.
    }
  }
  throw new ImageError(
    'SIGNATURE_INVALID',
    `signature bundle ${sidecar.key} does not verify with any trusted key: ${policy.keys.map((k) => `${k.fingerprint} (${k.algorithm})`).join(', ') || 'none'}`,
    'sign with a key in the group policy',
  );
}

type TrustMaterial = ReturnType<SigstoreLibs['verify']['toTrustMaterial']>;

/** Parsed once per file version (path, size, mtime): an agent verifies many images against one root. */
let cachedMaterial: { version: string; material: TrustMaterial } | undefined;

async function trustMaterial(
  policy: TrustPolicy,
  verify: SigstoreLibs['verify'],
  specs: SigstoreLibs['specs'],
): Promise<TrustMaterial> {
  const file = policy.sigstore.trustedRoot;
  const info = file === null ? null : await stat(file).catch(() => null);
  const version = info === null ? null : `${file}\0${info.size}\0${info.mtimeMs}`;
  if (version !== null && cachedMaterial?.version === version) return cachedMaterial.material;
  const material = verify.toTrustMaterial(await trustedRoot(policy, specs));
  if (version !== null) cachedMaterial = { version, material };
  return material;
}

/** The operator's trusted root: a missing or bad file is this host's fault, never the image's. */
async function trustedRoot(
  policy: TrustPolicy,
  specs: SigstoreLibs['specs'],
): Promise<ReturnType<SigstoreLibs['specs']['TrustedRoot']['fromJSON']>> {
  const file = policy.sigstore.trustedRoot;
  if (file === null)
    throw new EnvironmentError(
      'TRUST_ROOT_UNAVAILABLE',
      'the signature policy names no trusted root',
    );
  let json: unknown;
  try {
    json = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new EnvironmentError(
      'TRUST_ROOT_UNAVAILABLE',
      `cannot read the Sigstore trusted root ${file}: ${(err as Error).message}`,
      'install the trusted_root.json the group policy names on this host',
    );
  }
  if (
    typeof json !== 'object' ||
    json === null ||
    !String((json as { mediaType?: unknown }).mediaType).startsWith(
      'application/vnd.dev.sigstore.trustedroot',
    )
  )
    throw new EnvironmentError(
      'TRUST_ROOT_UNAVAILABLE',
      `${file} is not a Sigstore trusted root (no trustedroot mediaType)`,
    );
  return specs.TrustedRoot.fromJSON(json);
}
