/** Image events as the fan-out Lambda sends them, for tests that feed agents' queues directly. */
import type { ImageEvent } from '../../schema/image-event.js';

/** S3-style sequencers (hex, increasing) starting above `start`; one counter per test file. */
export function sequencerCounter(start: number): () => string {
  let seq = start;
  return () => (seq += 16).toString(16).toUpperCase().padStart(16, '0');
}

export function putImageEvent(
  bucket: string,
  key: string,
  eTag: string,
  sequencer: string,
): ImageEvent {
  return {
    schemaVersion: 1,
    kind: 'image.put',
    bucket,
    key,
    versionId: null,
    eTag,
    size: null,
    sequencer,
    eventTime: new Date().toISOString().replace(/\.\d+Z$/, '.000Z'),
  };
}
