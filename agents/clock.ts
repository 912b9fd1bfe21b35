/**
 * Time, as the agents see it. Production uses the system clock; the demo and tests use a
 * SimClock they move forward, so that a day runs in seconds. Contracts trust only the
 * chain's block time; the demo keeps both in step.
 */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

/** A clock that stands still until told to move. */
export class SimClock implements Clock {
  constructor(private ms: number) {}

  now(): number {
    return this.ms;
  }

  /** Moves to `ms`; time never runs backwards. */
  set(ms: number): void {
    if (ms < this.ms) throw new RangeError(`SimClock cannot go back from ${this.ms} to ${ms}`);
    this.ms = ms;
  }

  advance(ms: number): void {
    this.set(this.ms + ms);
  }
}

/** The market slot containing `ms`, for slots of `slotSeconds`. */
export function slotAt(ms: number, slotSeconds: number): number {
  return Math.floor(ms / 1000 / slotSeconds);
}

/** The moment (ms) slot `slot` starts. */
export function slotStartMs(slot: number, slotSeconds: number): number {
  return slot * slotSeconds * 1000;
}
