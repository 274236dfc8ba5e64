/** thinrelay config IMAGE: a container image's run config (Entrypoint, Cmd, Env, ...) as JSON, for a VM's init. */
import { NotFoundError } from '../../errors.js';
import { containerConfigOf, findImage } from '../../ops/image-ops.js';
import type { Command, CommandContext } from '../command.js';
import { requirePositional } from '../command.js';
import { printJson } from '../output.js';

function run(ctx: CommandContext): Promise<number> {
  const ref = requirePositional(ctx, 'KEY or ID', configCommand.usage);
  const rt = ctx.runtime();
  const image = findImage(rt, ref);
  const container = containerConfigOf(rt, image);
  if (container === null) {
    throw new NotFoundError(
      'NOT_FOUND',
      `image "${ref}" has no image config: it is a flat rootfs tar, or not unpacked yet`,
      'see `thinrelay show`',
    );
  }
  printJson(container);
  return Promise.resolve(0);
}

export const configCommand: Command = {
  name: 'config',
  summary:
    "a container image's config (entrypoint, cmd, env, workingDir, user, ports, labels) as JSON",
  usage: 'thinrelay config KEY|ID',
  options: {},
  examples: ['thinrelay config images/app.tar.zst', 'thinrelay config 12'],
  run,
};
