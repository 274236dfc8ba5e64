/** thinrelay pin | unpin: keep an image, or a key's current version, out of eviction and retention. */
import { NotFoundError } from '../../errors.js';
import type { Command, CommandContext } from '../command.js';
import { requirePositional } from '../command.js';
import { printJson } from '../output.js';

/**
 * A number names one image (that exact version: never retired or evicted by
 * policy); anything else is a key or a glob (`images/base/*`), whose
 * current version — the newest ready one, whichever it is — is never evicted.
 */
function pinOrUnpin(pin: boolean) {
  return (ctx: CommandContext): Promise<number> => {
    const command = pin ? pinCommand : unpinCommand;
    const target = requirePositional(ctx, 'KEY|IMAGE', command.usage);
    const rt = ctx.runtime();
    const { images } = rt.store;
    let result: Record<string, unknown>;
    if (/^\d+$/.test(target)) {
      const image = images.get(Number(target));
      if (image === undefined || image.status === 'removed')
        throw new NotFoundError(
          'NOT_FOUND',
          `no image ${target} on this host`,
          'see `thinrelay images`',
        );
      rt.store.tx(() => images.setPinned(image.id, pin));
      result = { image: image.id, key: image.key, etag: image.etag, pinned: pin };
    } else {
      const changed = rt.store.tx(() =>
        pin ? images.addKeyPin(target) : images.removeKeyPin(target),
      );
      if (!pin && !changed)
        throw new NotFoundError(
          'NOT_FOUND',
          `"${target}" is not pinned on this host`,
          rt.config.pool.pins.includes(target)
            ? "it is pinned by configuration (THINRELAY_PINS or the group's pool.pins)"
            : 'see `thinrelay pin --list`',
        );
      result = { pattern: target, pinned: pin, changed };
    }
    if (ctx.json) printJson(result);
    else process.stdout.write(`${pin ? 'pinned' : 'unpinned'} ${target}\n`);
    return Promise.resolve(0);
  };
}

function listPins(ctx: CommandContext): Promise<number> {
  const rt = ctx.runtime({ readonly: true });
  const stored = rt.store.images.keyPins();
  const pinnedImages = rt.store.images
    .list()
    .filter((i) => i.pinned === 1)
    .map((i) => ({ image: i.id, key: i.key, etag: i.etag }));
  const view = { keys: stored, configured: rt.config.pool.pins, images: pinnedImages };
  if (ctx.json) printJson(view);
  else {
    for (const p of stored) process.stdout.write(`key     ${p}\n`);
    for (const p of rt.config.pool.pins) process.stdout.write(`key     ${p} (configuration)\n`);
    for (const i of pinnedImages) process.stdout.write(`image   ${i.image} ${i.key} ${i.etag}\n`);
  }
  return Promise.resolve(0);
}

export const pinCommand: Command = {
  name: 'pin',
  summary:
    "keep an image (IMAGE id) or a key's current version (KEY or glob) out of eviction and retention",
  usage: 'thinrelay pin KEY|IMAGE [--json] | pin --list [--json]',
  options: { list: { type: 'boolean' } },
  optionDocs: { list: { text: 'list the pins: keys (stored and configured) and images' } },
  examples: [
    'thinrelay pin images/base.tar',
    "thinrelay pin 'images/base/*'",
    'thinrelay pin 12',
    'thinrelay pin --list',
  ],
  run: (ctx) => (ctx.values.list === true ? listPins(ctx) : pinOrUnpin(true)(ctx)),
};

export const unpinCommand: Command = {
  name: 'unpin',
  summary: 'undo thinrelay pin',
  usage: 'thinrelay unpin KEY|IMAGE [--json]',
  options: {},
  examples: ['thinrelay unpin images/base.tar', 'thinrelay unpin 12'],
  run: pinOrUnpin(false),
};
