/**
 * Retry delays. Every retry and back-off in the agent is jittered, so a fleet
 * that hit the same failure at once does not retry in lockstep.
 */

/** "Full jitter": uniform in [0, min(cap, base·2^(attempt-1))]. attempt counts from 1. */
export function backoffDelay(baseMs: number, attempt: number, capMs = 20_000): number {
  return Math.round(Math.random() * Math.min(capMs, baseMs * 2 ** Math.max(0, attempt - 1)));
}

/** `ms` spread by ±`spread` (a share, default 20 %): for fixed delays and polling. */
export function jittered(ms: number, spread = 0.2): number {
  return Math.max(0, Math.round(ms * (1 - spread + 2 * spread * Math.random())));
}
