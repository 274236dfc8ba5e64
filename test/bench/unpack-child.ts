/**
 * Bench helper: unpack one tar file into a directory with thinrelay's
 * unpacker, in its own process, and report wall time and peak RSS as JSON.
 */
import { createReadStream } from 'node:fs';
import { defaultLimits } from '../../host-agent/src/limits.js';
import { unpackArchive } from '../../host-agent/src/layer/index.js';

const [tarPath, root] = process.argv.slice(2);
if (tarPath === undefined || root === undefined) throw new Error('usage: unpack-child TAR ROOT');
const t0 = performance.now();
const stats = await unpackArchive(createReadStream(tarPath, { highWaterMark: 1024 * 1024 }), {
  root,
  limits: defaultLimits,
});
const ms = performance.now() - t0;
process.stdout.write(
  JSON.stringify({ ms, maxRssBytes: process.resourceUsage().maxRSS * 1024, stats }) + '\n',
);
