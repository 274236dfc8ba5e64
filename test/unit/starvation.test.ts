import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { StarvationMeter } from '../../host-agent/src/source/starvation.js';

/** A meter on a clock the test moves: `wait(ms)` advances it by `ms` and records the wait. */
function meter(): { wait: (ms: number) => boolean; pass: (ms: number) => void } {
  let t = 0;
  const m = new StarvationMeter(() => t);
  return {
    wait: (ms) => {
      t += ms;
      return m.waited(ms);
    },
    pass: (ms) => void (t += ms),
  };
}

describe('StarvationMeter (when the parallel download widens)', () => {
  it('a single 20 ms wait right after a window starts is a stall, not a slow link', () => {
    const m = meter();
    m.pass(1001); // the first window is over: the next wait starts a new one
    assert.equal(m.wait(20), false);
    const first = meter();
    assert.equal(first.wait(20), false, 'nor as the very first wait');
  });

  it('a fast link with a brief stall now and then never widens', () => {
    const m = meter();
    for (let i = 0; i < 100; i++) {
      m.pass(180);
      assert.equal(m.wait(20), false, `stall ${i}`);
      for (let j = 0; j < 10; j++) assert.equal(m.wait(1), false);
      m.pass(40);
    }
  });

  it('a slow link (the consumer waits most of the time) widens within a tenth of a second', () => {
    const m = meter();
    let widened = -1;
    for (let ms = 0; ms < 100 && widened < 0; ms += 10) {
      m.pass(1);
      if (m.wait(9)) widened = ms;
    }
    assert.ok(widened >= 0, 'widened');
    // Once widened the count starts again: the next widening needs its own starvation.
    assert.equal(m.wait(9), false);
  });

  it('a link that slows down later is still noticed', () => {
    const m = meter();
    m.pass(5000);
    let widened = false;
    for (let i = 0; i < 20 && !widened; i++) widened = m.wait(18) || (m.pass(2), false);
    assert.ok(widened);
  });
});
