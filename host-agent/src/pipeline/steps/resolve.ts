/**
 * resolve: decide how this image gets its content. If S3 vouches for the
 * object's SHA-256 and a ready blob has those bytes, link to it and skip the
 * download; otherwise say how large a volume it asks for.
 */
import { volumeSizeFor } from '../../config.js';
import { trustGate } from '../../trust/gate.js';
import type { JobContext, StepOutcome } from '../context.js';
import type { Step } from './index.js';

function base64ToHex(b64: string): string {
  return Buffer.from(b64, 'base64').toString('hex');
}

async function run(ctx: JobContext): Promise<StepOutcome> {
  const { store, ref, image } = ctx;
  if (ref.checksumSha256 !== null) {
    const existing = store.blobs.readyBySha256(base64ToHex(ref.checksumSha256));
    if (existing !== undefined) {
      // The same bytes as a flat tar held here: its signature covers them, checked before sharing.
      await trustGate(ctx, { manifestDigest: null, objectSha256: existing.sha256 });
      store.tx(() => {
        store.images.setBlobs(image.id, [existing.id]);
        store.images.recordDigest(image.id, existing.sha256);
      });
      ctx.logger.info('content already unpacked: sharing its volume', { blob: existing.id });
      return { status: 'complete', detail: { dedupedToBlob: existing.id } };
    }
  }
  // Room is made (and checked) by the unpack step, once it knows which layers the host holds.
  const volumeSizeBytes = volumeSizeFor(ref.size, ctx.config);
  return { status: 'complete', detail: { volumeSizeBytes } };
}

export const resolveStep: Step = { name: 'resolve', jobStatus: 'downloading', run };
