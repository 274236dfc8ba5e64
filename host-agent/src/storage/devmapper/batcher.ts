/**
 * Group commit for device-mapper work: the first call runs as soon as the
 * calls made in the same turn of the event loop are in (setImmediate), and
 * calls that arrive while a run is in flight join the next run, so N
 * concurrent callers cost a few runs instead of N. Each caller gets its own
 * item's outcome.
 */
export class Batcher<I, O> {
  private queue: { item: I; resolve: (o: O) => void; reject: (e: unknown) => void }[] = [];
  private running = false;

  /** `runBatch` settles each item (same order); a throw fails the whole batch. */
  constructor(
    private readonly runBatch: (items: I[]) => Promise<PromiseSettledResult<O>[]>,
    private readonly maxBatch = 256,
  ) {}

  submit(item: I): Promise<O> {
    const done = new Promise<O>((resolve, reject) => this.queue.push({ item, resolve, reject }));
    if (!this.running) {
      this.running = true;
      setImmediate(() => void this.drain());
    }
    return done;
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.maxBatch);
        try {
          const results = await this.runBatch(batch.map((b) => b.item));
          batch.forEach((b, i) => {
            const r = results[i];
            if (r?.status === 'fulfilled') b.resolve(r.value);
            else b.reject(r === undefined ? new Error('no outcome for a batched call') : r.reason);
          });
        } catch (err) {
          for (const b of batch) b.reject(err);
        }
      }
    } finally {
      this.running = false;
    }
  }
}
