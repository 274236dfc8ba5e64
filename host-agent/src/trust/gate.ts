/**
 * The trust gate: where the pipeline applies the host's signature policy
 * (docs/trust.md). Two calls and no other policy logic elsewhere:
 *   - holdForSignature, before a job is claimed: with `require`, an image
 *     whose sidecar has not arrived waits (awaiting-signature, no job, no
 *     storage, no worker) until its deadline, then fails SIGNATURE_MISSING;
 *   - trustGate, once the signed payload is known — a whole object's sha256
 *     after its download, before its volume is sealed; an OCI archive's
 *     manifest digest before the first layer byte is fetched — verifies the
 *     sidecar and records who signed. `require` refuses on failure (an
 *     ImageError: the permanent-failure path); `warn` records and goes on.
 * With `off` both return at once and nothing is read.
 */
import { createHash } from 'node:crypto';
import { AwaitingSignature, ImageError } from '../errors.js';
import type { JobContext, PipelineDeps } from '../pipeline/context.js';
import type { ObjectRef } from '../source/object-ref.js';
import { mapS3Error } from '../source/s3-errors.js';
import type { ImageRow } from '../store/images.js';
import { imageTransitions } from '../store/states.js';
import { checkSignature } from './check-signature.js';
import { readSidecar, sidecarKeysOf, type Sidecar } from './sidecar.js';
import { describePayload, manifestDigestPayload, type SignedPayload } from './signed-payload.js';
import type { TrustRecord } from './trust-record.js';

type GateDeps = Pick<
  PipelineDeps,
  'store' | 'config' | 'logger' | 's3' | 'signal' | 'trustChecked'
>;

/** Which sidecar a check read: its key and ETag (kept on the trust record). */
export interface SidecarSeen {
  key: string;
  eTag: string | null;
}

/** A sidecar read before the job, handed to its gate: one lookup per image, not two. */
export interface SidecarRead {
  sidecar: Sidecar;
  seen: SidecarSeen;
}

/**
 * The image's sidecar (a bundle preferred to a .sig), or null when neither
 * exists. Both keys are asked for at once — one round trip to S3, not two,
 * for the usual `.sig` — and the one not used is abandoned. `seen` learns
 * which one was found before its bytes are judged, so a bad sidecar's
 * failure names it too.
 */
export async function findSidecar(
  deps: Pick<PipelineDeps, 's3' | 'signal'>,
  bucket: string,
  imageKey: string,
  seen?: (sidecar: SidecarSeen) => void,
): Promise<Sidecar | null> {
  const s3 = await deps.s3();
  const { GetObjectCommand } = await import('@aws-sdk/client-s3');
  const lookups = await Promise.all(
    sidecarKeysOf(imageKey).map(({ kind, key }) =>
      s3
        .send(new GetObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: deps.signal })
        .then(
          (out) => ({ kind, key, out, err: null }),
          (err: unknown) => ({
            kind,
            key,
            out: null,
            err: mapS3Error(err, { bucket, key, versionId: null, operation: 'GetObject' }),
          }),
        ),
    ),
  );
  const chosen = lookups.find(
    (l) => !(l.err instanceof ImageError && l.err.code === 'OBJECT_NOT_FOUND'),
  );
  for (const l of lookups) if (l !== chosen) abandon(l.out?.Body);
  if (chosen === undefined) return null;
  if (chosen.out === null) throw chosen.err;
  seen?.({ key: chosen.key, eTag: chosen.out.ETag ?? null });
  const body = chosen.out.Body as AsyncIterable<Uint8Array> | undefined;
  return readSidecar(
    chosen.kind,
    chosen.key,
    chosen.out.ContentLength ?? null,
    body ?? emptyBody(),
  );
}

/** Frees the connection of a sidecar GET whose body is not read. */
function abandon(body: unknown): void {
  (body as { destroy?: () => void } | undefined)?.destroy?.();
}

async function* emptyBody(): AsyncGenerator<Uint8Array> {
  // A GET without a body reads as an empty sidecar.
}

/**
 * Before a job: with `require` and no sidecar, the image waits until its
 * deadline (kept in the store, so a restart keeps it) and AwaitingSignature
 * is thrown; past the deadline it fails SIGNATURE_MISSING. Returns when the
 * image may be processed: the sidecar it read (for the job's gate), or
 * undefined when the policy does not wait.
 */
export async function holdForSignature(
  deps: GateDeps,
  image: ImageRow,
  ref: ObjectRef,
  now: () => Date = () => new Date(),
): Promise<SidecarRead | undefined> {
  const policy = deps.config.signatures;
  if (policy.mode !== 'require') return undefined;
  const { store } = deps;
  const read: { sidecar: SidecarSeen | null } = { sidecar: null };
  try {
    const sidecar = await findSidecar(deps, ref.bucket, ref.key, (s) => (read.sidecar = s));
    if (sidecar !== null) return { sidecar, seen: read.sidecar! };
  } catch (err) {
    // A sidecar that is no signature (empty, too large): the image fails with its code, the
    // sidecar read recorded (so the catch-up sync evaluates it again only once it is replaced).
    if (err instanceof ImageError && err.code.startsWith('SIGNATURE_')) {
      const failed = failedRecord(deps, null, read.sidecar, err, now);
      store.tx(() => {
        store.images.recordTrust(image.id, failed);
        if (imageTransitions[store.images.get(image.id)!.status].includes('failed'))
          store.images.fail(image.id, err.code, err.message);
      });
      deps.trustChecked?.(failed);
    }
    throw err;
  }
  const row = store.images.get(image.id)!;
  const missing = (): ImageError =>
    new ImageError(
      'SIGNATURE_MISSING',
      `no signature arrived for ${ref.key} within ${policy.awaitSeconds} s (neither ${ref.key}.sig nor ${ref.key}.sigstore.json)`,
      'upload the signature sidecar next to the image; the sidecar’s arrival processes it again',
    );
  // Already failed for want of a signature: it stays so until a sidecar arrives.
  if (row.status === 'failed' && row.error_code === 'SIGNATURE_MISSING') throw missing();
  const deadline =
    row.status === 'awaiting-signature' && row.signature_deadline !== null
      ? new Date(row.signature_deadline)
      : new Date(now().getTime() + policy.awaitSeconds * 1000);
  if (now() >= deadline) {
    const err = missing();
    store.tx(() => store.images.fail(image.id, err.code, err.message));
    deps.trustChecked?.(failedRecord(deps, null, null, err, now));
    throw err;
  }
  const reason = `waiting for ${ref.key}.sig or ${ref.key}.sigstore.json until ${deadline.toISOString()}`;
  const waits = store.tx(() => {
    // A job began meanwhile (the sidecar's own event woke it): join that instead.
    if (store.jobs.openForImage(image.id) !== undefined) return false;
    if (store.images.get(image.id)!.status !== 'awaiting-signature')
      store.images.awaitSignature(image.id, deadline.toISOString(), reason);
    return true;
  });
  if (!waits) return undefined;
  deps.logger.info('awaiting signature', { deadline: deadline.toISOString() });
  throw new AwaitingSignature(`${ref.key}: ${reason}`, deadline);
}

/** What the signature of an image covers, as the pipeline learns it. */
export interface GateSubject {
  /** An OCI archive's manifest digest ("sha256:<hex>"); null: the object's bytes are signed. */
  manifestDigest: string | null;
  /** The object's sha256 (hex), known once it was read whole; needed when manifestDigest is null. */
  objectSha256: string | null;
}

/**
 * Verifies the image's signature against the host's policy and records the
 * check on the image. `require`: throws the SIGNATURE_* ImageError on
 * failure. `warn`: returns the failed record. `off`: null.
 */
export async function trustGate(
  ctx: JobContext,
  subject: GateSubject,
  now: () => Date = () => new Date(),
): Promise<TrustRecord | null> {
  const policy = ctx.config.signatures;
  if (policy.mode === 'off') return null;
  const { store, image, ref } = ctx;
  const started = performance.now();
  let record: TrustRecord | null;
  let payload: SignedPayload | null = null;
  const read: { sidecar: SidecarSeen | null } = { sidecar: null };
  try {
    payload = await payloadOf(ctx, subject);
    // The sidecar the hold read for this job; a resumed job or `warn` reads it now.
    if (ctx.sidecar !== undefined) read.sidecar = ctx.sidecar.seen;
    const sidecar =
      ctx.sidecar?.sidecar ??
      (await findSidecar(ctx, ref.bucket, ref.key, (s) => (read.sidecar = s)));
    record = await checkSignature({
      policy,
      payload,
      sidecar,
      now,
      // Pure Ed25519 and bundles over a whole object need its bytes: read again, pinned.
      reopen: () => reopenObject(ctx),
    });
  } catch (err) {
    if (err instanceof ImageError && err.code.startsWith('SIGNATURE_')) {
      const failed = failedRecord(ctx, payload, read.sidecar, err, now);
      store.images.recordTrust(image.id, failed);
      ctx.trustChecked?.(failed);
    }
    throw err;
  }
  if (record === null) return null;
  record = { ...record, sidecarETag: read.sidecar?.eTag ?? null };
  store.images.recordTrust(image.id, record);
  ctx.trustChecked?.(record);
  const fields = {
    verdict: record.verdict,
    mode: record.mode,
    payload: record.payload,
    sidecar: record.sidecar,
    signer: record.signer,
    // What the check cost this image: the sidecar's GET (unless the hold read it) and the verification.
    ms: Math.round((performance.now() - started) * 10) / 10,
  };
  if (record.verdict === 'verified') ctx.logger.info('signature verified', fields);
  else
    ctx.logger.warn('signature check failed (warn mode: the image activates anyway)', {
      ...fields,
      code: record.failure?.code,
      error: record.failure?.message,
    });
  return record;
}

/**
 * The payload: the manifest digest, or the object's sha256 — read once more
 * when the pipeline did not read the object whole (a legacy docker save read
 * by range, or spooled from a compressed object).
 */
async function payloadOf(ctx: JobContext, subject: GateSubject): Promise<SignedPayload> {
  if (subject.manifestDigest !== null) return manifestDigestPayload(subject.manifestDigest);
  if (subject.objectSha256 !== null) return { kind: 'object', sha256: subject.objectSha256 };
  const hash = createHash('sha256');
  for await (const chunk of reopenObject(ctx)) hash.update(chunk);
  return { kind: 'object', sha256: hash.digest('hex') };
}

function failedRecord(
  deps: Pick<PipelineDeps, 'config'>,
  payload: SignedPayload | null,
  sidecar: SidecarSeen | null,
  err: ImageError,
  now: () => Date,
): TrustRecord {
  return {
    mode: deps.config.signatures.mode,
    verdict: 'failed',
    signer: null,
    payload: payload === null ? 'unknown (not downloaded)' : describePayload(payload),
    sidecar: sidecar?.key ?? null,
    sidecarETag: sidecar?.eTag ?? null,
    verifiedAt: now().toISOString(),
    failure: { code: err.code, message: err.message },
  };
}

/** The pinned object's bytes again (ETag and version as pinned). */
async function* reopenObject(ctx: JobContext): AsyncGenerator<Uint8Array> {
  const { downloadObject } = await import('../source/download.js');
  const download = downloadObject(await ctx.s3(), ctx.ref, {
    partSize: ctx.config.download.partSizeBytes,
    concurrency: ctx.config.download.concurrency,
    signal: ctx.signal,
    logger: ctx.logger,
  });
  yield* download.chunks;
  await download.result;
}
