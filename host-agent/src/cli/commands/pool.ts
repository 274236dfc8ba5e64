/** thinrelay pool create | status | evict | destroy. */
import { parseSize } from '../../config.js';
import { collectGarbage } from '../../ops/gc.js';
import { createBackend } from '../../storage/index.js';
import { currentOwner } from '../../store/owner.js';
import { removeImage } from '../../ops/image-ops.js';
import type { PoolStatus } from '../../storage/backend.js';
import { existsSync } from 'node:fs';
import { reconcile } from '../../pipeline/reconcile.js';
import type { HolderSummary } from '../../pool/holders.js';
import { assessPool, evictionPass, type PassResult } from '../../pool/keeper.js';
import type { PoolPolicy } from '../../pool/policy.js';
import type { PoolUsage } from '../../pool/usage.js';
import { databasePath } from '../../store/db.js';
import type { Command, CommandContext } from '../command.js';
import { formatBytes, printJson } from '../output.js';
import { unknownSubcommand } from '../help.js';

/** What `pool status` adds when the host has state: usage against the policy and what holds it. */
interface PolicyView {
  policy: PoolPolicy;
  usage: PoolUsage;
  holders: HolderSummary;
  degraded: string | null;
}

function printStatus(ctx: CommandContext, s: PoolStatus, view?: PolicyView | null): void {
  if (ctx.json) {
    printJson(view === undefined || view === null ? s : { ...s, ...view });
    return;
  }
  const pct = (used: number, total: number): string =>
    total > 0 ? `${((100 * used) / total).toFixed(1)}%` : '-';
  const out = process.stdout;
  out.write(`backend   ${s.backend}\nlocation  ${s.location}\nexists    ${s.exists}\n`);
  // No pool yet is no verdict: `detail` says it is made on first use (or how to make it).
  if (s.healthy !== null) out.write(`healthy   ${s.healthy}\n`);
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
  if (view === undefined || view === null) return;
  const { policy: p, usage: u, holders: h } = view;
  out.write(
    `use       ${u.dataPercent.toFixed(1)}% of ${formatBytes(u.capacityBytes)} capacity` +
      (u.metadataPercent === null ? '' : `, metadata ${u.metadataPercent.toFixed(1)}%`) +
      '\n',
  );
  out.write(
    p.enabled
      ? `policy    evict above ${p.dataHighPercent}% down to ${p.dataLowPercent}%` +
          (u.metadataPercent === null
            ? ''
            : ` (metadata ${p.metadataHighPercent}% → ${p.metadataLowPercent}%)`) +
          `; keep ${p.retainVersions} version(s) per key; pins ${p.pins.length === 0 ? 'none configured' : p.pins.join(' ')}\n`
      : 'policy    off (THINRELAY_POOL_POLICY=off): no retention, no eviction\n',
  );
  out.write(
    `held by   in use ${formatBytes(h.inUseBytes)} (${h.images['in-use']}), pinned ${formatBytes(h.pinnedBytes)} (${h.images.pinned}), ` +
      `busy ${formatBytes(h.busyBytes)} (${h.images.busy}), current ${formatBytes(h.currentBytes)} (${h.images.current}), ` +
      `failed ${formatBytes(h.failedBytes)} (${h.images.failed})\n`,
  );
  out.write(
    `evictable ${formatBytes(h.evictableBytes)} in ${h.images.evictable} older version(s); current versions go after them, least recently used first\n`,
  );
  if (view.degraded !== null) out.write(`DEGRADED  ${view.degraded}\n`);
}

/** The policy view, when the host has a state database (read-only; never created). */
async function policyView(ctx: CommandContext): Promise<PolicyView | null> {
  const config = ctx.config();
  if (!existsSync(databasePath(config.stateDir))) return null;
  const rt = ctx.runtime({ readonly: true });
  const a = await assessPool(rt);
  return { policy: config.pool, ...a };
}

function printPass(ctx: CommandContext, r: PassResult): void {
  if (ctx.json) {
    printJson({
      trigger: r.trigger,
      before: r.before,
      after: r.after,
      evicted: r.evicted.map((e) => ({
        image: e.image.id,
        key: e.image.key,
        etag: e.image.etag,
        freedBytes: e.freedBytes,
      })),
      collected: r.collected,
      holders: r.holders,
      degraded: r.degraded,
      durationMs: r.durationMs,
    });
    return;
  }
  const out = process.stdout;
  for (const e of r.evicted)
    out.write(
      `evicted   image ${e.image.id} ${e.image.key} (${formatBytes(e.freedBytes)} freed)\n`,
    );
  out.write(
    `pass      ${r.evicted.length} evicted, ${r.collected} leftover object(s) collected; data ${r.before.dataPercent.toFixed(1)}% → ${r.after.dataPercent.toFixed(1)}% in ${r.durationMs} ms\n`,
  );
  if (r.degraded !== null) out.write(`DEGRADED  ${r.degraded}\n`);
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
    const status = await backend.poolStatus();
    printStatus(ctx, status, status.exists ? await policyView(ctx) : null);
    return 0;
  }
  if (sub === 'evict') {
    const rt = ctx.runtime();
    await reconcile(rt);
    printPass(ctx, await evictionPass(rt, { trigger: 'operator' }));
    return 0;
  }
  if (sub !== 'create' && sub !== 'destroy') {
    throw unknownSubcommand(poolCommand, sub, ['create', 'status', 'evict', 'destroy']);
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
  summary: 'create, inspect, evict from or destroy the storage pool',
  usage:
    'thinrelay pool create [--size 20G] [--devices DATA,META] | pool status | pool evict | pool destroy [--force]',
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
    'thinrelay pool evict --json',
    'thinrelay --backend devmapper pool create --devices /dev/vg0/thin-data,/dev/vg0/thin-meta',
    'thinrelay pool status --backend devmapper --json',
  ],
  run,
};
