import type { IntradayMarket } from "../chain/types/index.js";
import type { Logger } from "../log.js";
import { balancingCallFor } from "../markets/balancingClearing.js";
import { readOffers } from "../markets/offerBook.js";
import { shortError } from "../meter-agent/meterAgent.js";

/** The balancing result of one slot, as cleared. */
export interface BalancingSlotResult {
  slot: number;
  imbalanceWh: bigint;
  offers: number;
  up: boolean;
  activatedWh: bigint;
  price: bigint;
}

/**
 * The master's balancing duty: at each slot's gate closure (15 minutes before it), read the
 * expected imbalance and the flexibility offers, compute the activation off chain
 * (agents/markets/balancingClearing.ts) and submit it; the contract accepts only the correct one.
 */
export class BalancingClearer {
  private slotSeconds = 0;
  private gateLeadMs = 0;
  private readonly done = new Set<number>();

  constructor(private readonly o: { market: IntradayMarket; logger: Logger; fromBlock?: number }) {}

  async init(): Promise<void> {
    const [slotSeconds, gate] = await Promise.all([this.o.market.slotSeconds(), this.o.market.gateLeadSeconds()]);
    this.slotSeconds = Number(slotSeconds);
    this.gateLeadMs = Number(gate) * 1000;
  }

  /** Clears the slots whose gate has closed at `nowMs` and that have not started. */
  async clearDue(nowMs: number): Promise<BalancingSlotResult[]> {
    const slotMs = this.slotSeconds * 1000;
    const results: BalancingSlotResult[] = [];
    for (let slot = Math.floor(nowMs / slotMs) + 1; slot * slotMs - this.gateLeadMs <= nowMs; slot++) {
      const r = await this.clearSlot(slot);
      if (r) results.push(r);
    }
    return results;
  }

  async clearSlot(slot: number): Promise<BalancingSlotResult | undefined> {
    const { market, logger } = this.o;
    if (this.done.has(slot)) return undefined;
    const book = await market.book(slot);
    if (book.cleared || book.size === 0n) {
      this.done.add(slot);
      return undefined;
    }
    try {
      const offers = await readOffers(market, slot, this.o.fromBlock ?? 0);
      const call = balancingCallFor(slot, book.imbalanceWh, offers);
      const receipt = await (await market.clear(call)).wait();
      this.done.add(slot);
      const up = book.imbalanceWh > 0n;
      logger({ level: "info", msg: "balancing slot cleared", slot, imbalanceWh: book.imbalanceWh, activatedWh: call.volumeWh, price: call.price, gas: receipt?.gasUsed });
      return { slot, imbalanceWh: book.imbalanceWh, offers: offers.length, up, activatedWh: call.volumeWh, price: call.price };
    } catch (e) {
      logger({ level: "error", msg: "balancing clearing failed", slot, error: shortError(e) });
      return undefined;
    }
  }
}
