/**
 * The record of one signature check, as the state database will keep it and
 * `show --json` / `fleet status` will print it: who signed (a key's
 * fingerprint or a keyless identity), over what payload, from which sidecar,
 * and when it was verified. In `warn` mode a failed check is a record too
 * (verdict `failed` with its code); `require` turns it into the image failure.
 */
import type { SignatureMode } from '../../../schema/signature-policy.js';
import type { KeyAlgorithm } from './trusted-keys.js';

export type Signer =
  | { type: 'key'; fingerprint: string; algorithm: KeyAlgorithm }
  | {
      type: 'identity';
      /** The certificate's OIDC issuer and subject (SAN) as signed. */
      issuer: string;
      subject: string;
      /** The policy entry it matched ("<issuer> <subject>" or "<issuer> ~<pattern>"). */
      matched: string;
    };

export interface TrustRecord {
  mode: SignatureMode;
  verdict: 'verified' | 'failed';
  signer: Signer | null;
  /** "object sha256:<hex>" or "manifest sha256:<hex>". */
  payload: string;
  /** The sidecar's S3 key; null when none was found. */
  sidecar: string | null;
  /**
   * The sidecar's ETag as it was read: a sidecar listed with another ETag was
   * replaced since (a re-sign whose event was lost: the catch-up sync
   * evaluates a failed image again). Absent in records made before it was kept.
   */
  sidecarETag?: string | null;
  /** ISO 8601, UTC. */
  verifiedAt: string;
  /** Set when verdict is failed: the reason code and message. */
  failure: { code: string; message: string } | null;
}
