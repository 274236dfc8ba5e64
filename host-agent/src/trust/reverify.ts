/**
 * `thinrelay verify`: held images checked again against the policy in force
 * now (a key removed, an identity narrowed, a sidecar replaced). With
 * `require`, a ready image that no longer passes becomes `untrusted` — no new
 * snapshot is taken of it (activate and process-image refuse with UNTRUSTED)
 * — and an untrusted one that passes again is ready again. Snapshots in use
 * are reported, never detached: a running VM keeps its disk. With `warn` the
 * check is recorded only; with `off` nothing is checked.
 */
import { ImageError } from '../errors.js';
import type { PipelineDeps } from '../pipeline/context.js';
import type { ImageRow } from '../store/images.js';
import { checkSignature } from './check-signature.js';
import { findSidecar } from './gate.js';
import { describePayload, manifestDigestPayload, type SignedPayload } from './signed-payload.js';
import type { TrustRecord } from './trust-record.js';

export interface ReverifyResult {
  imageId: number;
  key: string;
  /** The status before and after. */
  was: string;
  status: string;
  verdict: 'verified' | 'failed' | 'not-checked';
  code: string | null;
  message: string | null;
  signer: TrustRecord['signer'];
  /** Snapshots of the image attached now: left in place whatever the verdict. */
  activeSnapshots: { id: number; devicePath: string | null }[];
}

/** The payload an image's signature covers, from what was recorded when it was processed. */
function payloadOf(deps: Pick<PipelineDeps, 'store'>, image: ImageRow): SignedPayload | null {
  const config = deps.store.images.configJson(image.id);
  if (config !== null) {
    const digest = (JSON.parse(config) as { manifestDigest?: string | null }).manifestDigest;
    if (typeof digest === 'string') return manifestDigestPayload(digest);
    // An OCI archive processed before its digest was kept: it cannot be checked from here.
    if ((JSON.parse(config) as { format?: string }).format === 'oci-archive') return null;
  }
  return image.sha256 === null ? null : { kind: 'object', sha256: image.sha256 };
}

export async function reverifyImage(deps: PipelineDeps, image: ImageRow): Promise<ReverifyResult> {
  const { store } = deps;
  const policy = deps.config.signatures;
  const active = store.objects
    .snapshotsOfImage(image.id)
    .filter((s) => s.state === 'active')
    .map((s) => ({ id: s.id, devicePath: s.device_path }));
  const base = { imageId: image.id, key: image.key, was: image.status, activeSnapshots: active };
  const payload = payloadOf(deps, image);
  if (policy.mode === 'off' || payload === null)
    return {
      ...base,
      status: image.status,
      verdict: 'not-checked',
      code: null,
      message:
        policy.mode === 'off'
          ? 'the signature policy is off'
          : 'no signed payload recorded for this image (process it again to record one)',
      signer: null,
    };
  let record: TrustRecord;
  try {
    const sidecar = await findSidecar(deps, image.bucket, image.key);
    record = (await checkSignature({
      // warn records a failure; require throws it (below).
      policy,
      payload,
      sidecar,
      reopen: () => reopen(deps, image),
    }))!;
  } catch (err) {
    if (!(err instanceof ImageError)) throw err;
    record = {
      mode: policy.mode,
      verdict: 'failed',
      signer: null,
      payload: describePayload(payload),
      sidecar: null,
      verifiedAt: new Date().toISOString(),
      failure: { code: err.code, message: err.message },
    };
  }
  deps.trustChecked?.(record);
  const status = store.tx(() => {
    store.images.recordTrust(image.id, record);
    const now = store.images.get(image.id)!;
    if (record.verdict === 'verified' && now.status === 'untrusted')
      store.images.setStatus(image.id, 'ready');
    else if (record.verdict === 'failed' && policy.mode === 'require' && now.status === 'ready')
      store.images.setStatus(image.id, 'untrusted', {
        errorCode: record.failure!.code,
        errorMessage: record.failure!.message,
      });
    return store.images.get(image.id)!.status;
  });
  return {
    ...base,
    status,
    verdict: record.verdict,
    code: record.failure?.code ?? null,
    message: record.failure?.message ?? null,
    signer: record.signer,
  };
}

/** The image's object again, pinned to its ETag and version (pure Ed25519 and bundles over bytes). */
async function* reopen(deps: PipelineDeps, image: ImageRow): AsyncGenerator<Uint8Array> {
  const { downloadObject } = await import('../source/download.js');
  const download = downloadObject(
    await deps.s3(),
    {
      bucket: image.bucket,
      key: image.key,
      versionId: image.version_id,
      eTag: image.etag,
      size: image.size,
      checksumSha256: null,
      lastModified: null,
    },
    { signal: deps.signal, logger: deps.logger },
  );
  yield* download.chunks;
  await download.result;
}
