/**
 * thinrelay activate IMAGE | deactivate SNAPSHOT | remove IMAGE. activate
 * asks the daemon serving this state dir first (docs/snapshotter.md,
 * "thinrelay activate through the service") and does the work itself only
 * when no service there can answer.
 */
import {
  activateImage,
  containerConfigOf,
  deactivateSnapshot,
  removeImage,
} from '../../ops/image-ops.js';
import { reconcile } from '../../pipeline/reconcile.js';
import { activationSocketOf } from '../../snapshotter/settings.js';
import type { Command, CommandContext } from '../command.js';
import { requirePositional } from '../command.js';
import { printJson } from '../output.js';

/** The one way an activation is printed, whichever process did it. */
function printActivation(
  ctx: CommandContext,
  a: { snapshotId: number; devicePath: string; config: unknown },
): void {
  // What a VM's init needs with the device: the run config (null for a flat rootfs tar).
  if (ctx.json) printJson({ snapshotId: a.snapshotId, devicePath: a.devicePath, config: a.config });
  else process.stdout.write(a.devicePath + '\n');
}

/** --verbose: which way the activation went, on stderr (always in the debug log). */
function tell(ctx: CommandContext, line: string): void {
  ctx.logger.debug(line);
  if (ctx.values.verbose === true) process.stderr.write(`thinrelay: activate: ${line}\n`);
}

/**
 * Through the daemon's Activation service when one serves this state dir:
 * true when it answered (printed, or its error thrown), false to go in-process.
 */
async function activateThroughService(ctx: CommandContext, ref: string): Promise<boolean> {
  const socket = activationSocketOf(process.env);
  if (socket === null) {
    tell(ctx, 'THINRELAY_SNAPSHOTTER_SOCKET is off: activating in this process');
    return false;
  }
  const config = ctx.config();
  // Loaded only here: node:http2 stays out of every other command's start.
  const client = await import('../../snapshotter/activation-client.js');
  let outcome: Awaited<ReturnType<typeof client.activateThroughService>>;
  try {
    outcome = await client.activateThroughService(socket, {
      stateDir: config.stateDir,
      backend: config.backend,
      image: ref,
    });
  } catch (err) {
    tell(ctx, `failed in the service on ${socket}`);
    throw err;
  }
  if (outcome.kind === 'fallback') {
    tell(ctx, `no service at ${socket} (${outcome.reason}): activating in this process`);
    return false;
  }
  tell(ctx, `done by the service on ${socket}`);
  const { snapshotId, devicePath, configJson } = outcome.response;
  printActivation(ctx, { snapshotId, devicePath, config: JSON.parse(configJson) as unknown });
  return true;
}

async function activate(ctx: CommandContext): Promise<number> {
  const ref = requirePositional(ctx, 'IMAGE', activateCommand.usage);
  if (ctx.values['in-process'] !== true && (await activateThroughService(ctx, ref))) return 0;
  const rt = ctx.runtime();
  await reconcile(rt);
  const { snapshot, devicePath } = await activateImage(rt, ref);
  const image = rt.store.images.get(snapshot.image_id!)!;
  const container = containerConfigOf(rt, image) as { config?: unknown } | null;
  printActivation(ctx, { snapshotId: snapshot.id, devicePath, config: container?.config ?? null });
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
  usage: 'thinrelay activate IMAGE [--in-process] [--verbose] [--json]',
  options: { 'in-process': { type: 'boolean' }, verbose: { type: 'boolean' } },
  optionDocs: {
    'in-process': {
      text: 'do the work in this process even when the agent or snapshotter serves this state dir',
    },
    verbose: {
      text: "say on stderr whether the daemon's service did it (on THINRELAY_SNAPSHOTTER_SOCKET, else /run/thinrelay/snapshotter.sock) or this process",
    },
  },
  examples: ['thinrelay activate images/base.tar.gz', 'thinrelay activate 12 --json --verbose'],
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
