/** thinrelay activate IMAGE | deactivate SNAPSHOT | remove IMAGE. */
import {
  activateImage,
  containerConfigOf,
  deactivateSnapshot,
  removeImage,
} from '../../ops/image-ops.js';
import { reconcile } from '../../pipeline/reconcile.js';
import type { Command, CommandContext } from '../command.js';
import { requirePositional } from '../command.js';
import { printJson } from '../output.js';

async function activate(ctx: CommandContext): Promise<number> {
  const ref = requirePositional(ctx, 'IMAGE', activateCommand.usage);
  const rt = ctx.runtime();
  await reconcile(rt);
  const { snapshot, devicePath } = await activateImage(rt, ref);
  if (ctx.json) {
    // What a VM's init needs with the device: the run config (null for a flat rootfs tar).
    const image = rt.store.images.get(snapshot.image_id!)!;
    const container = containerConfigOf(rt, image) as { config?: unknown } | null;
    printJson({ snapshotId: snapshot.id, devicePath, config: container?.config ?? null });
  } else process.stdout.write(devicePath + '\n');
  return 0;
}

async function deactivate(ctx: CommandContext): Promise<number> {
  const ref = requirePositional(ctx, 'SNAPSHOT', deactivateCommand.usage);
  const rt = ctx.runtime();
  await reconcile(rt);
  const snap = await deactivateSnapshot(rt, ref);
  if (ctx.json) printJson({ snapshotId: snap.id, state: snap.state });
  else process.stdout.write(`snapshot ${snap.id} deactivated\n`);
  return 0;
}

async function remove(ctx: CommandContext): Promise<number> {
  const ref = requirePositional(ctx, 'IMAGE', removeCommand.usage);
  const rt = ctx.runtime();
  await reconcile(rt);
  const { image, removedObjects } = await removeImage(rt, ref, {
    force: ctx.values.force === true,
  });
  if (ctx.json) printJson({ imageId: image.id, status: image.status, removedObjects });
  else
    process.stdout.write(
      `image ${image.id} (${image.key}) removed; ${removedObjects} storage object(s) released\n`,
    );
  return 0;
}

export const activateCommand: Command = {
  name: 'activate',
  summary: 'create and activate a new snapshot of a ready image (IMAGE: id or key)',
  usage: 'thinrelay activate IMAGE [--json]',
  options: {},
  examples: ['thinrelay activate images/base.tar.gz'],
  run: activate,
};

export const deactivateCommand: Command = {
  name: 'deactivate',
  summary: 'detach an active snapshot (SNAPSHOT: id, snap-NNNNNNNN or device path)',
  usage: 'thinrelay deactivate SNAPSHOT [--json]',
  options: {},
  examples: ['thinrelay deactivate snap-00000012', 'thinrelay deactivate /dev/loop7'],
  run: deactivate,
};

export const removeCommand: Command = {
  name: 'remove',
  summary:
    'remove an image, its snapshots and its unshared content (refuses active snapshots unless --force)',
  usage: 'thinrelay remove IMAGE [--force] [--json]',
  options: { force: { type: 'boolean' } },
  optionDocs: { force: { text: 'also deactivate its active snapshots' } },
  examples: ['thinrelay remove images/base.tar.gz', 'thinrelay remove 12 --force'],
  run: remove,
};
