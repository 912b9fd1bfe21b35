/**
 * The day-ahead auction of one slot, computed off chain: the result DayAheadMarket.clear
 * verifies. Written from the auction rules in the contract's NatSpec, not from its code, so
 * that the tests compare two independent implementations; the master agent submits it.
 *
 * The rules (pay-as-clear, uniform price):
 * - buys are sorted by limit descending, sells by limit ascending, ties by book index
 *   ascending (the earlier placement first); cancelled orders (quantity 0) stay in the lists;
 * - the best remaining buy is matched with the best remaining sell for as long as the buy's
 *   limit is at least the sell's, each match as large as the smaller remainder;
 * - the volume is the sum of the matches; the price is the midpoint, rounded down, of the
 *   limits of the last matched buy and sell; nothing crosses (or a side is empty): 0 and 0.
 *
 * This module does not walk the two lists. It lays each side out as a curve over energy, one
 * Wh after another in sorted order: the buy curve gives, for the x-th Wh demanded, the limit
 * of the buy it belongs to (non-increasing in x), the sell curve the same for supply
 * (non-decreasing). The matching above trades the x-th Wh exactly when the buy limit at x is
 * at least the sell limit at x, and since one curve falls and the other rises these Wh form a
 * prefix: the volume is its length, found by binary search. Each side is then filled in
 * sorted order up to the volume, and the price is the midpoint of the two curves at the last
 * traded Wh. Orders of quantity 0 cover no Wh, so they are never awarded and never set the
 * price.
 */
import { MarketError } from "../errors.js";

/** One order of a slot's book, as DayAheadMarket.orderOf returns it (plus its owner). */
export interface BookOrder {
  account: string;
  isSell: boolean;
  /** 0 for a cancelled order, which stays in the book. */
  qtyWh: bigint;
  /** Limit, token base units per kWh. */
  price: bigint;
  /** Position in the slot's book, fixed at first placement: the time priority. */
  index: number;
}

/** IDayAheadMarket.Clearing without the slot: every order of the slot, sorted, and the result. */
export interface DayAheadClearing {
  /** Buyers by limit descending, ties by book index ascending. */
  buyers: string[];
  /** Sellers by limit ascending, ties by book index ascending. */
  sellers: string[];
  /** Awards in the order of `buyers`. */
  buyAwardsWh: bigint[];
  /** Awards in the order of `sellers`. */
  sellAwardsWh: bigint[];
  /** Uniform price, token base units per kWh; 0 when nothing trades. */
  price: bigint;
  volumeWh: bigint;
}

/** IDayAheadMarket.Clearing as `clear` takes it. */
export interface DayAheadClearingCall extends DayAheadClearing {
  slot: bigint;
}

/** The orders given to clearDayAhead cannot be one slot's book. */
export class ClearingInputError extends MarketError {
  constructor(problem: string) {
    super("CLEARING_INPUT", `day-ahead clearing: ${problem}`);
  }
}

/** Token base units the market escrows for a buy of `qtyWh` at limit `price` (per kWh): rounded up. */
export function escrowOf(qtyWh: bigint, price: bigint): bigint {
  return ceilDiv(qtyWh * price, 1000n);
}

/** What a buyer awarded `awardWh` pays at the clearing `price`: rounded up. */
export function buyCostOf(awardWh: bigint, price: bigint): bigint {
  return ceilDiv(awardWh * price, 1000n);
}

/**
 * Clears one slot's book. Pure and deterministic: the result depends only on the orders'
 * fields, not on the order in which they are given. Throws ClearingInputError for a list that
 * cannot be a book (an account or book index twice, a negative quantity or price).
 */
export function clearDayAhead(orders: readonly BookOrder[]): DayAheadClearing {
  check(orders);
  const buys = orders.filter((o) => !o.isSell).sort(byPriority(-1));
  const sells = orders.filter((o) => o.isSell).sort(byPriority(1));
  const demand = Curve.of(buys);
  const supply = Curve.of(sells);

  // The x-th Wh trades iff demand.limitAt(x) >= supply.limitAt(x); true on a prefix of x.
  // Binary search for the length of that prefix: lo always trades-through, hi never does.
  let lo = 0n;
  let hi = min(demand.total, supply.total);
  while (lo < hi) {
    const mid = (lo + hi + 1n) / 2n; // does the mid-th Wh (index mid - 1) trade?
    if (demand.limitAt(mid - 1n) >= supply.limitAt(mid - 1n)) lo = mid;
    else hi = mid - 1n;
  }
  const volumeWh = lo;
  const price = volumeWh === 0n ? 0n : (demand.limitAt(volumeWh - 1n) + supply.limitAt(volumeWh - 1n)) / 2n;

  return {
    buyers: buys.map((o) => o.account),
    sellers: sells.map((o) => o.account),
    buyAwardsWh: demand.fill(volumeWh),
    sellAwardsWh: supply.fill(volumeWh),
    price,
    volumeWh,
  };
}

/** clearDayAhead with the slot, ready for DayAheadMarket.clear. */
export function clearingCallFor(slot: bigint | number, orders: readonly BookOrder[]): DayAheadClearingCall {
  return { slot: BigInt(slot), ...clearDayAhead(orders) };
}

/**
 * One side laid out over energy: order k covers the Wh [start[k], start[k] + qty[k]).
 * Orders of quantity 0 cover nothing.
 */
class Curve {
  private constructor(
    private readonly orders: readonly BookOrder[],
    /** ends[k]: the Wh after the last one order k covers (cumulative quantity). */
    private readonly ends: readonly bigint[],
    readonly total: bigint,
  ) {}

  static of(sorted: readonly BookOrder[]): Curve {
    let total = 0n;
    const ends = sorted.map((o) => (total += o.qtyWh));
    return new Curve(sorted, ends, total);
  }

  /** The limit of the order covering the x-th Wh (0 <= x < total). */
  limitAt(x: bigint): bigint {
    // The first order whose end is beyond x covers it (empty orders end where the previous does).
    let lo = 0;
    let hi = this.ends.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((this.ends[mid] as bigint) > x) hi = mid;
      else lo = mid + 1;
    }
    return (this.orders[lo] as BookOrder).price;
  }

  /** Each order's share of the first `volume` Wh. */
  fill(volume: bigint): bigint[] {
    return this.orders.map((o, k) => {
      const start = (this.ends[k] as bigint) - o.qtyWh;
      return max(0n, min(o.qtyWh, volume - start));
    });
  }
}

/** Limit in `direction` (1 ascending, -1 descending), then book index ascending. */
function byPriority(direction: 1 | -1): (a: BookOrder, b: BookOrder) => number {
  return (a, b) => {
    if (a.price !== b.price) return (a.price < b.price ? -1 : 1) * direction;
    return a.index - b.index;
  };
}

function check(orders: readonly BookOrder[]): void {
  const accounts = new Set<string>();
  const indices = new Set<number>();
  for (const o of orders) {
    const account = o.account.toLowerCase();
    if (accounts.has(account)) throw new ClearingInputError(`${o.account} has two orders; a slot's book holds one per account`);
    accounts.add(account);
    if (!Number.isSafeInteger(o.index) || o.index < 0) throw new ClearingInputError(`order of ${o.account} has book index ${o.index}`);
    if (indices.has(o.index)) throw new ClearingInputError(`book index ${o.index} appears twice`);
    indices.add(o.index);
    if (o.qtyWh < 0n) throw new ClearingInputError(`order of ${o.account} has quantity ${o.qtyWh}`);
    if (o.price < 0n) throw new ClearingInputError(`order of ${o.account} has price ${o.price}`);
  }
}

function ceilDiv(a: bigint, b: bigint): bigint {
  return (a + b - 1n) / b;
}

function min(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

function max(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}
