/**
 * The group commit under the devmapper pool transactions
 * (storage/devmapper/batcher.ts): calls made together run together, calls
 * arriving while a run is in flight join the next run, each caller gets its
 * own item's outcome, and a run that throws fails only its own callers.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { Batcher } from '../../host-agent/src/storage/devmapper/batcher.js';

test('calls made together form one run; calls during a run join the next one', async () => {
  const runs: number[][] = [];
  let started!: () => void;
  const firstRunStarted = new Promise<void>((resolve) => (started = resolve));
  const b = new Batcher<number, number>(async (items) => {
    runs.push(items);
    started();
    await sleep(30);
    return items.map((i) => ({ status: 'fulfilled' as const, value: i * 10 }));
  });
  const first = [1, 2, 3].map((i) => b.submit(i));
  await firstRunStarted;
  const during = [4, 5].map((i) => b.submit(i));
  const later = await Promise.all([...first, ...during]);
  assert.deepEqual(later, [10, 20, 30, 40, 50]);
  assert.deepEqual(runs, [
    [1, 2, 3],
    [4, 5],
  ]);
  // Idle again: the next call runs at once, alone.
  assert.equal(await b.submit(6), 60);
  assert.deepEqual(runs.at(-1), [6]);
});

test('each caller gets its own outcome; a throwing run fails its callers only', async () => {
  let n = 0;
  const b = new Batcher<string, string>((items) => {
    n++;
    if (items.includes('boom')) return Promise.reject(new Error('the run failed'));
    return Promise.resolve(
      items.map((i) =>
        i === 'bad'
          ? { status: 'rejected' as const, reason: new Error(`refused ${i}`) }
          : { status: 'fulfilled' as const, value: i.toUpperCase() },
      ),
    );
  });
  const [ok, bad] = await Promise.allSettled([b.submit('ok'), b.submit('bad')]);
  assert.deepEqual(ok, { status: 'fulfilled', value: 'OK' });
  assert.match(String((bad as PromiseRejectedResult).reason), /refused bad/);
  await assert.rejects(b.submit('boom'), /the run failed/);
  assert.equal(await b.submit('after'), 'AFTER');
  assert.equal(n, 3);
});

test('a run takes at most maxBatch items; the rest follow', async () => {
  const runs: number[] = [];
  const b = new Batcher<number, number>((items) => {
    runs.push(items.length);
    return Promise.resolve(items.map((i) => ({ status: 'fulfilled' as const, value: i })));
  }, 2);
  assert.deepEqual(await Promise.all([1, 2, 3, 4, 5].map((i) => b.submit(i))), [1, 2, 3, 4, 5]);
  assert.deepEqual(runs, [2, 2, 1]);
});
