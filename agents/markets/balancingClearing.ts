/**
 * The intra-day balancing auction of one slot, computed off chain: the result
 * IntradayMarket.clear verifies. Written from the auction rules in the contract's NatSpec, not
 * from its code, so that the tests compare two independent implementations; the master agent
 * submits it.
 *
 * The rules (pay-as-clear, one direction per slot):
 * - the slot's expected imbalance R is the sum over participants of forecast minus schedule
 *   (the contract keeps it: IntradayMarket.book(slot).imbalanceWh);
 * - upward offers (the participant sells: more generation, less consumption) are sorted by
 *   limit ascending, downward offers (it buys) by limit descending, ties by book index ascending
 *   (the earlier placement first); both lists hold every offer of the slot;
 * - R > 0: upward offers are activated in their order until R is covered, the last one partly;
 *   R < 0: downward offers cover -R the same way; R = 0, or no offer in the needed direction:
 *   nothing is activated. The other direction is never activated;
 * - the volume is min(|R|, quantity offered in the needed direction); the price is the limit of
 *   the last activated offer, 0 when nothing is activated.
 *
 * An offer of quantity 0 (if the book keeps cancelled offers) covers nothing: it is listed, never
 * activated, and never sets the price.
 */
import { MarketError } from "../errors.js";

/** One offer of a slot's book, as IntradayMarket.offerOf returns it (plus its owner). */
export interface BalancingOffer {
  account: string;
  /** Upward: the participant sells flexibility (more generation or less consumption). */
  isUp: boolean;
  qtyWh: bigint;
  /** Limit, token base units per kWh: the least an upward offer takes, the most a downward one pays. */
  price: bigint;
  /** Position in the slot's book, fixed at first placement: the time priority. */
  index: number;
}

/** IIntradayMarket.Clearing without the slot: every offer of the slot, sorted, and the result. */
export interface BalancingClearing {
  /** Upward offers by limit ascending, ties by book index ascending. */
  ups: string[];
  /** Downward offers by limit descending, ties by book index ascending. */
  downs: string[];
  /** Activations in the order of `ups`. */
  upActivationsWh: bigint[];
  /** Activations in the order of `downs`. */
  downActivationsWh: bigint[];
  /** Limit of the last activated offer, token base units per kWh; 0 when nothing is activated. */
  price: bigint;
  /** Activated energy, min(|imbalance|, offered in the needed direction). */
  volumeWh: bigint;
}

/** IIntradayMarket.Clearing as `clear` takes it. */
export interface BalancingClearingCall extends BalancingClearing {
  slot: bigint;
}

/** The offers given to clearBalancing cannot be one slot's book. */
export class BalancingInputError extends MarketError {
  constructor(problem: string) {
    super("BALANCING_INPUT", `balancing clearing: ${problem}`);
  }
}

/** Token base units the market escrows for a downward offer of `qtyWh` at limit `price` (per kWh): rounded up. */
export function downEscrowOf(qtyWh: bigint, price: bigint): bigint {
  return ceilDiv(qtyWh * price, 1000n);
}

/** What a downward offer activated for `activatedWh` pays at the balancing `price`: rounded up. */
export function downCostOf(activatedWh: bigint, price: bigint): bigint {
  return ceilDiv(activatedWh * price, 1000n);
}

/** What an upward offer activated for `activatedWh` is paid at the balancing `price` when the slot is settled: rounded down. */
export function upPaymentOf(activatedWh: bigint, price: bigint): bigint {
  return (activatedWh * price) / 1000n;
}

/**
 * Clears one slot's balancing book against its expected imbalance `imbalanceWh` (+: the
 * neighbourhood will use more than scheduled, upward flexibility is needed). Pure and
 * deterministic: the result depends only on the offers' fields, not on the order in which they
 * are given. Throws BalancingInputError for a list that cannot be a book (an account or book
 * index twice, a negative quantity or price).
 */
export function clearBalancing(imbalanceWh: bigint, offers: readonly BalancingOffer[]): BalancingClearing {
  check(offers);
  const ups = offers.filter((o) => o.isUp).sort(byPriority(1));
  const downs = offers.filter((o) => !o.isUp).sort(byPriority(-1));

  const need = imbalanceWh < 0n ? -imbalanceWh : imbalanceWh;
  const side = imbalanceWh > 0n ? ups : imbalanceWh < 0n ? downs : [];
  const activations = activate(side, need);
  let price = 0n;
  let volumeWh = 0n;
  side.forEach((o, k) => {
    const a = activations[k] as bigint;
    if (a > 0n) {
      price = o.price;
      volumeWh += a;
    }
  });

  const none = (list: readonly BalancingOffer[]) => list.map(() => 0n);
  return {
    ups: ups.map((o) => o.account),
    downs: downs.map((o) => o.account),
    upActivationsWh: imbalanceWh > 0n ? activations : none(ups),
    downActivationsWh: imbalanceWh < 0n ? activations : none(downs),
    price,
    volumeWh,
  };
}

/** clearBalancing with the slot, ready for IntradayMarket.clear. */
export function balancingCallFor(slot: bigint | number, imbalanceWh: bigint, offers: readonly BalancingOffer[]): BalancingClearingCall {
  return { slot: BigInt(slot), ...clearBalancing(imbalanceWh, offers) };
}

/** Each offer of the sorted `side` activated in turn until `need` Wh are covered. */
function activate(side: readonly BalancingOffer[], need: bigint): bigint[] {
  let left = need;
  return side.map((o) => {
    const a = o.qtyWh < left ? o.qtyWh : left;
    left -= a;
    return a;
  });
}

/** Limit in `direction` (1 ascending, -1 descending), then book index ascending. */
function byPriority(direction: 1 | -1): (a: BalancingOffer, b: BalancingOffer) => number {
  return (a, b) => {
    if (a.price !== b.price) return (a.price < b.price ? -1 : 1) * direction;
    return a.index - b.index;
  };
}

function check(offers: readonly BalancingOffer[]): void {
  const accounts = new Set<string>();
  const indices = new Set<number>();
  for (const o of offers) {
    const account = o.account.toLowerCase();
    if (accounts.has(account)) throw new BalancingInputError(`${o.account} has two offers; a slot's book holds one per account`);
    accounts.add(account);
    if (!Number.isSafeInteger(o.index) || o.index < 0) throw new BalancingInputError(`offer of ${o.account} has book index ${o.index}`);
    if (indices.has(o.index)) throw new BalancingInputError(`book index ${o.index} appears twice`);
    indices.add(o.index);
    if (o.qtyWh < 0n) throw new BalancingInputError(`offer of ${o.account} has quantity ${o.qtyWh}`);
    if (o.price < 0n) throw new BalancingInputError(`offer of ${o.account} has price ${o.price}`);
  }
}

function ceilDiv(a: bigint, b: bigint): bigint {
  return (a + b - 1n) / b;
}
