/**
 * Bench helper, the obvious alternative's first half: GetObject to a file,
 * with the same SDK and client settings thinrelay uses.
 */
import { createWriteStream } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { createS3Client } from '../../host-agent/src/source/s3-client.js';

const [bucket, key, file] = process.argv.slice(2);
if (bucket === undefined || key === undefined || file === undefined)
  throw new Error('usage: download-child BUCKET KEY FILE');
const client = createS3Client();
const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
await pipeline(out.Body as Readable, createWriteStream(file));
client.destroy();
