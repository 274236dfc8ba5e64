/** thinrelay show KEY|ID: an image and its latest job's timeline. */
import { containerConfigOf, findImage } from '../../ops/image-ops.js';
import { objectName } from '../../storage/names.js';
import { isOwnerAlive, ownerPid } from '../../store/owner.js';
import type { Command, CommandContext } from '../command.js';
import { requirePositional } from '../command.js';
import type { Signer, TrustRecord } from '../../trust/trust-record.js';
import { camelKeys, printJson, printTable, printable } from '../output.js';

function run(ctx: CommandContext): Promise<number> {
  const ref = requirePositional(ctx, 'KEY or ID', showCommand.usage);
  const rt = ctx.runtime({ readonly: true });
  const image = findImage(rt, ref);
  const job = rt.store.jobs.latestForImage(image.id);
  const steps = job === undefined ? [] : rt.store.jobs.steps(job.id);
  const snapshots = rt.store.snapshots.forImage(image.id);
  const trust = trustOf(image.trust);
  if (ctx.json) {
    printJson({
      image: {
        ...camelKeys(image),
        pinned: rt.store.images.isPinned(image.id, rt.config.pool.pins),
        // The last signature check (docs/trust.md): who signed, when it was verified.
        trust,
        signer: trust?.signer ?? null,
        verifiedAt: trust?.verdict === 'verified' ? trust.verifiedAt : null,
      },
      job: job === undefined ? null : camelKeys(job),
      steps: steps.map((s) =>
        camelKeys({ ...s, detail: s.detail === null ? null : (JSON.parse(s.detail) as unknown) }),
      ),
      snapshots: snapshots.map(camelKeys),
      // Base first: each layer's chain ID, the volume holding it, and how many live images share it.
      layers: rt.store.images.layers(image.id).map((l) =>
        camelKeys({
          ...l,
          volume: l.volume_id === null ? null : objectName('volume', l.volume_id),
        }),
      ),
      // docker save / OCI archives: format, layers and run config; null for a flat tar.
      container: containerConfigOf(rt, image),
    });
    return Promise.resolve(0);
  }
  const out = process.stdout;
  out.write(printable(`image ${image.id}: s3://${image.bucket}/${image.key}`) + '\n');
  out.write(
    `  status ${image.status}  etag ${image.etag}  version ${image.version_id ?? '-'}  size ${image.size}\n`,
  );
  out.write(`  sha256 ${image.sha256 ?? '-'}\n`);
  out.write(
    `  ${rt.store.images.isPinned(image.id, rt.config.pool.pins) ? 'pinned' : 'not pinned'}  last activated ${image.last_activated_at ?? '-'}  last seen in use ${image.last_used_at ?? '-'}\n`,
  );
  if (image.error_code !== null)
    out.write(printable(`  error [${image.error_code}] ${image.error_message}`) + '\n');
  if (image.signature_deadline !== null)
    out.write(`  awaiting its signature until ${image.signature_deadline}\n`);
  if (trust !== null)
    out.write(
      printable(
        `  signature ${trust.verdict} (${trust.mode}) by ${signerLabel(trust.signer)} at ${trust.verifiedAt}${trust.failure === null ? '' : ` [${trust.failure.code}]`}  ${trust.payload}`,
      ) + '\n',
    );
  for (const s of snapshots) out.write(`  snapshot ${s.object_id} active at ${s.device_path}\n`);
  for (const l of rt.store.images.layers(image.id))
    out.write(
      `  layer ${l.position + 1} ${l.chain_id ?? '(no chain id)'} ${l.status} vol ${l.volume_id ?? '-'} shared by ${l.shared_by}\n`,
    );
  if (job === undefined) return Promise.resolve(0);
  // The job's serial counts its own transitions (job and steps, store/jobs.ts):
  // a retried job has more, so it orders nothing between jobs; say what it is.
  out.write(
    `job ${job.id}: ${job.status}  transitions ${job.serial}  created ${job.created_at}  finished ${job.finished_at ?? '-'}\n`,
  );
  if (job.finished_at === null) {
    const alive = isOwnerAlive(job.owner);
    out.write(
      `  owner pid ${ownerPid(job.owner) ?? '-'} (${alive ? 'running' : 'gone: interrupted, resumes on the next process-image'})\n`,
    );
  }
  printTable(
    ['STEP', 'STATUS', 'ATTEMPTS', 'STARTED', 'ENDED', 'ERROR'],
    steps.map((s) => [
      s.name,
      s.status,
      s.attempts,
      s.started_at,
      s.ended_at,
      s.error_code === null ? null : `[${s.error_code}] ${s.error_message}`,
    ]),
  );
  return Promise.resolve(0);
}

function trustOf(json: string | null): TrustRecord | null {
  return json === null ? null : (JSON.parse(json) as TrustRecord);
}

/** A key's fingerprint, or a keyless identity's issuer and subject. */
function signerLabel(s: Signer | null): string {
  if (s === null) return '-';
  return s.type === 'key' ? `key ${s.fingerprint} (${s.algorithm})` : `${s.issuer} ${s.subject}`;
}

export const showCommand: Command = {
  name: 'show',
  summary:
    "an image and its job's timeline (each step: status, start, end, error; how many transitions the job made)",
  usage: 'thinrelay show KEY|ID [--json]',
  options: {},
  examples: ['thinrelay show images/base.tar.gz', 'thinrelay show 12 --json'],
  run,
};
