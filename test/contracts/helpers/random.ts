/** A small deterministic PRNG (mulberry32), so that every failing scenario can be replayed from its seed. */
export class Rng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** A float in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** A bigint in [lo, hi]. */
  big(lo: bigint, hi: bigint): bigint {
    const span = hi - lo + 1n;
    // Two draws give 53+ bits, plenty for the ranges the tests use.
    const r = BigInt(Math.floor(this.next() * 2 ** 26)) * 2n ** 26n + BigInt(Math.floor(this.next() * 2 ** 26));
    return lo + (r % span);
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error("pick from an empty list");
    return items[this.int(items.length)] as T;
  }

  /** A shuffled copy (Fisher-Yates). */
  shuffle<T>(items: readonly T[]): T[] {
    const out = [...items];
    for (let i = out.length - 1; i > 0; --i) {
      const j = this.int(i + 1);
      [out[i], out[j]] = [out[j] as T, out[i] as T];
    }
    return out;
  }

  /** A random subset, in random order. */
  subset<T>(items: readonly T[], p = 0.5): T[] {
    return this.shuffle(items.filter(() => this.chance(p)));
  }

  /** Splits `items` into consecutive batches of 1..maxSize. */
  batches<T>(items: readonly T[], maxSize: number): T[][] {
    const out: T[][] = [];
    let i = 0;
    while (i < items.length) {
      const size = 1 + this.int(maxSize);
      out.push(items.slice(i, i + size));
      i += size;
    }
    return out;
  }
}
