/** thinrelay pool create | status | destroy. */
import { parseSize } from '../../config.js';
import { UsageError } from '../../errors.js';
import { collectGarbage } from '../../ops/gc.js';
import { createBackend } from '../../storage/index.js';
import { currentOwner } from '../../store/owner.js';
import { removeImage } from '../../ops/image-ops.js';
import type { PoolStatus } from '../../storage/backend.js';
import type { Command, CommandContext } from '../command.js';
import { formatBytes, printJson } from '../output.js';

function printStatus(ctx: CommandContext, s: PoolStatus): void {
  if (ctx.json) {
    printJson(s);
    return;
  }
  const pct = (used: number, total: number): string =>
    total > 0 ? `${((100 * used) / total).toFixed(1)}%` : '-';
  const out = process.stdout;
  out.write(
    `backend   ${s.backend}\nlocation  ${s.location}\nexists    ${s.exists}\nhealthy   ${s.healthy}\n`,
  );
  out.write(
    `data      ${formatBytes(s.dataUsedBytes)} used of ${formatBytes(s.dataTotalBytes)} (${pct(s.dataUsedBytes, s.dataTotalBytes)})\n`,
  );
  if (s.dataSharedBytes !== undefined && s.dataSharedBytes > 0) {
    out.write(
      `shared    ${formatBytes(s.dataSharedBytes)} shared between volumes, counted once (${formatBytes(s.dataReferencedBytes ?? 0)} without sharing)\n`,
    );
  }
  if (s.metadataTotalBytes !== null && s.metadataUsedBytes !== null) {
    out.write(
      `metadata  ${formatBytes(s.metadataUsedBytes)} used of ${formatBytes(s.metadataTotalBytes)} (${pct(s.metadataUsedBytes, s.metadataTotalBytes)})\n`,
    );
  }
  out.write(`free      ${formatBytes(s.freeBytes)} for new volumes\ndetail    ${s.detail}\n`);
}

async function run(ctx: CommandContext): Promise<number> {
  const sub = ctx.positionals[0];
  if (sub === 'status') {
    // Read-only: the backend alone reports the pool; no state is opened or created.
    const backend = createBackend(ctx.config(), {
      store: null,
      owner: currentOwner(),
      logger: ctx.logger,
    });
    printStatus(ctx, await backend.poolStatus());
    return 0;
  }
  if (sub !== 'create' && sub !== 'destroy') {
    throw new UsageError(
      'USAGE',
      `unknown pool command "${sub ?? ''}"`,
      `usage: ${poolCommand.usage}`,
    );
  }
  const rt = ctx.runtime();
  const backend = rt.objects.backend;
  switch (sub) {
    case 'create': {
      const size = ctx.values.size as string | undefined;
      const devices = (ctx.values.devices as string | undefined)
        ?.split(',')
        .filter((d) => d !== '');
      printStatus(
        ctx,
        await backend.createPool({
          sizeBytes: size === undefined ? undefined : parseSize(size, '--size'),
          devices,
        }),
      );
      return 0;
    }
    case 'destroy':
      if (ctx.values.force === true) {
        for (const image of rt.store.images.list())
          await removeImage(rt, String(image.id), { force: true });
        await collectGarbage(rt);
      }
      await backend.destroyPool();
      if (!ctx.json) process.stdout.write('pool destroyed\n');
      else printJson({ destroyed: true });
      return 0;
  }
}

export const poolCommand: Command = {
  name: 'pool',
  summary: 'create, inspect or destroy the storage pool',
  usage:
    'thinrelay pool create [--size 20G] [--devices DATA,META] | pool status | pool destroy [--force]',
  options: { size: { type: 'string' }, devices: { type: 'string' }, force: { type: 'boolean' } },
  optionDocs: {
    size: {
      text: 'devmapper: size of the loop-file pool under the state dir (testing)',
      arg: 'SIZE',
      default: '20G',
    },
    devices: {
      text: 'devmapper: build the pool on these data and metadata block devices',
      arg: 'DATA,META',
    },
    force: { text: 'destroy: remove every image and collect garbage first' },
  },
  examples: [
    'thinrelay pool status',
    'thinrelay --backend devmapper pool create --devices /dev/vg0/thin-data,/dev/vg0/thin-meta',
    'thinrelay pool status --backend devmapper --json',
  ],
  run,
};
