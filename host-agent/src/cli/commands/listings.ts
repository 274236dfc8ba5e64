/** thinrelay images | snapshots | failed: what this host holds. */
import { isOwnerAlive } from '../../store/owner.js';
import type { ImageRow } from '../../store/images.js';
import type { Runtime } from '../../runtime.js';
import type { Command, CommandContext } from '../command.js';
import { camelKeys, formatBytes, printJson, printTable } from '../output.js';

/**
 * Honest status: an image whose job's owner died is not being processed,
 * it is interrupted (the next process-image or the daemon resumes it).
 */
type ImageView = Omit<ImageRow, 'status'> & { status: ImageRow['status'] | 'interrupted' };

function displayStatus(rt: Runtime, image: ImageRow): ImageView {
  if (image.status !== 'processing') return image;
  const job = rt.store.jobs.openForImage(image.id);
  return job !== undefined && !isOwnerAlive(job.owner)
    ? { ...image, status: 'interrupted' }
    : image;
}

function images(ctx: CommandContext): Promise<number> {
  const rt = ctx.runtime({ readonly: true });
  const includeRemoved = ctx.values.all === true;
  if (ctx.json) {
    const interrupted = rt.store.images
      .listProcessing()
      .filter((i) => displayStatus(rt, i).status === 'interrupted')
      .map((i) => i.id);
    process.stdout.write(
      rt.store.images.listJson({ includeRemoved, interrupted, configPins: rt.config.pool.pins }) +
        '\n',
    );
    return Promise.resolve(0);
  }
  const rows = rt.store.images.list({ includeRemoved }).map((r) => displayStatus(rt, r));
  const pins = rt.config.pool.pins;
  printTable(
    ['ID', 'STATUS', 'KEY', 'SIZE', 'SHA256', 'UPDATED', 'ERROR', 'PIN'],
    rows.map((r) => [
      r.id,
      // Why it left: removed (operator), deleted (bucket), superseded (newer versions), evicted (space).
      r.status === 'removed' && r.removed_reason !== null && r.removed_reason !== 'removed'
        ? r.removed_reason
        : r.status,
      r.key,
      formatBytes(r.size),
      r.sha256?.slice(0, 12),
      r.updated_at,
      r.error_code,
      r.status !== 'removed' && rt.store.images.isPinned(r.id, pins) ? 'pinned' : '',
    ]),
  );
  return Promise.resolve(0);
}

function snapshots(ctx: CommandContext): Promise<number> {
  const rt = ctx.runtime({ readonly: true });
  const active = new Map(rt.store.snapshots.list().map((s) => [s.object_id, s]));
  const rows = rt.store.objects
    .listLive()
    .filter((o) => o.kind === 'snapshot')
    .map((o) => {
      const image = o.image_id === null ? undefined : rt.store.images.get(o.image_id);
      return {
        id: o.id,
        name: `snap-${String(o.id).padStart(8, '0')}`,
        state: o.state,
        devicePath: active.get(o.id)?.device_path ?? null,
        imageId: o.image_id,
        key: image?.key ?? null,
        origin: o.parent_id,
        createdAt: o.created_at,
      };
    });
  if (ctx.json) printJson(rows);
  else
    printTable(
      ['ID', 'STATE', 'DEVICE', 'IMAGE', 'KEY', 'CREATED'],
      rows.map((r) => [r.id, r.state, r.devicePath, r.imageId, r.key, r.createdAt]),
    );
  return Promise.resolve(0);
}

function failed(ctx: CommandContext): Promise<number> {
  const rt = ctx.runtime({ readonly: true });
  const images = rt.store.images.listFailed();
  // Failures that never got as far as an image (the object could not even be
  // looked at): only the message journal knows them.
  const messages = rt.store.events.failedWithoutImage();
  if (ctx.json) {
    printJson([
      ...images.map(camelKeys),
      ...messages.map((m) => ({
        id: null,
        bucket: m.bucket,
        key: m.key,
        errorCode: m.reason_code,
        errorMessage: m.reason,
        updatedAt: m.last_seen_at,
        messageId: m.message_id,
      })),
    ]);
  } else
    printTable(
      ['ID', 'KEY', 'CODE', 'MESSAGE', 'WHEN'],
      [
        ...images.map((r) => [r.id, r.key, r.error_code, r.error_message, r.updated_at]),
        ...messages.map((m) => ['-', m.key, m.reason_code, m.reason, m.last_seen_at]),
      ],
    );
  return Promise.resolve(0);
}

export const imagesCommand: Command = {
  name: 'images',
  summary: 'list images on this host',
  usage: 'thinrelay images [--all] [--json]',
  options: { all: { type: 'boolean' } },
  optionDocs: { all: { text: 'include removed images' } },
  examples: ['thinrelay images', 'thinrelay images --all --json'],
  run: images,
};

export const snapshotsCommand: Command = {
  name: 'snapshots',
  summary: 'list snapshots and their devices',
  usage: 'thinrelay snapshots [--json]',
  options: {},
  examples: ['thinrelay snapshots --json'],
  run: snapshots,
};

export const failedCommand: Command = {
  name: 'failed',
  summary: 'list failed images with reason codes',
  usage: 'thinrelay failed [--json]',
  options: {},
  examples: ['thinrelay failed'],
  run: failed,
};
