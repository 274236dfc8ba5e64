/** thinrelay verify [--all | IMAGE]: held images checked again against the signature policy in force. */
import type { S3Client } from '@aws-sdk/client-s3';
import { UsageError } from '../../errors.js';
import { findImage } from '../../ops/image-ops.js';
import { reverifyImage, type ReverifyResult } from '../../trust/reverify.js';
import type { Command, CommandContext } from '../command.js';
import { printJson, printTable, printable } from '../output.js';

async function run(ctx: CommandContext): Promise<number> {
  const all = ctx.values.all === true;
  const ref = ctx.positionals[0];
  if (all === (ref !== undefined))
    throw new UsageError('USAGE', 'give one IMAGE or --all', verifyCommand.usage);
  // The SDK loads on first use: the sidecars are read from S3 only when the policy verifies.
  let s3: Promise<S3Client> | undefined;
  const rt = ctx.runtime({
    s3: () => (s3 ??= import('../../source/s3-client.js').then((m) => m.createS3Client())),
  });
  const images = all
    ? rt.store.images.list().filter((i) => i.status === 'ready' || i.status === 'untrusted')
    : [findImage(rt, ref!)];
  const results: ReverifyResult[] = [];
  for (const image of images) results.push(await reverifyImage(rt, image));
  if (ctx.json) printJson({ mode: rt.config.signatures.mode, images: results });
  else {
    printTable(
      ['IMAGE', 'KEY', 'VERDICT', 'STATUS', 'SIGNER / REASON', 'ACTIVE SNAPSHOTS (left in place)'],
      results.map((r) => [
        r.imageId,
        printable(r.key),
        r.verdict,
        r.was === r.status ? r.status : `${r.was} → ${r.status}`,
        r.signer !== null
          ? r.signer.type === 'key'
            ? r.signer.fingerprint
            : `${r.signer.issuer} ${r.signer.subject}`
          : r.code === null
            ? (r.message ?? '-')
            : `[${r.code}] ${r.message ?? ''}`,
        r.activeSnapshots.map((s) => s.devicePath ?? `snap ${s.id}`).join(' ') || '-',
      ]),
    );
  }
  // Exit 1 when an image does not pass (require: it is untrusted now), as a failed image does.
  return results.some((r) => r.status === 'untrusted') ? 1 : 0;
}

export const verifyCommand: Command = {
  name: 'verify',
  summary:
    'check held images against the signature policy in force; under require, those that fail become untrusted (no new snapshots; ones in use are left)',
  usage: 'thinrelay verify IMAGE | --all [--json]',
  options: { all: { type: 'boolean' } },
  optionDocs: { all: { text: 'every ready or untrusted image' } },
  examples: ['thinrelay verify --all', 'thinrelay verify images/base.tar.zst --json'],
  run,
};
