/**
 * Runs work for one S3 key at a time, in arrival order. Events for a key must
 * apply in sequencer order and a duplicate must see its twin's outcome, so
 * two messages for the same key never run concurrently.
 */
export class KeyLock {
  private readonly tails = new Map<string, Promise<void>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const tail = previous.then(() => mine);
    this.tails.set(key, tail);
    await previous;
    try {
      return await fn();
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }

  get size(): number {
    return this.tails.size;
  }
}

/** The lock name of one S3 object key (events and catch-up sync share it). */
export function imageLockKey(bucket: string, key: string): string {
  return `${bucket}/${key}`;
}
