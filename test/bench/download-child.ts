/**
 * Bench helper: download one object with thinrelay's downloader (part size,
 * concurrency and the SDK's HTTP agent settings from argv), discard the
 * bytes, report wall time, peak RSS and the sha256 as JSON.
 */
import { Agent } from 'node:http';
import { headObject } from '../../host-agent/src/source/head.js';
import { downloadObject } from '../../host-agent/src/source/download.js';
import { createS3Client } from '../../host-agent/src/source/s3-client.js';

const [bucket, key, part, conc, keepAlive] = process.argv.slice(2);
if (bucket === undefined || key === undefined || part === undefined || conc === undefined)
  throw new Error('usage: download-child BUCKET KEY PART_BYTES CONCURRENCY [KEEPALIVE 1|0]');
const t0 = performance.now();
const client = createS3Client(
  keepAlive === '0'
    ? {
        requestHandler: {
          connectionTimeout: 10_000,
          socketTimeout: 30_000,
          httpAgent: new Agent({ keepAlive: false, maxSockets: 50 }),
        },
      }
    : {},
);
const ref = await headObject(client, bucket, key, { maxBlobBytes: 1024 ** 4 });
const dl = downloadObject(client, ref, { partSize: Number(part), concurrency: Number(conc) });
let chunks = 0;
for await (const chunk of dl.chunks) chunks += chunk.byteLength > 0 ? 1 : 0;
const { sha256 } = await dl.result;
const ms = performance.now() - t0;
client.destroy();
process.stdout.write(
  JSON.stringify({ ms, maxRssBytes: process.resourceUsage().maxRSS * 1024, sha256, chunks }) + '\n',
);
