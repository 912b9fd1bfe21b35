import type { DayAheadMarket } from "../chain/types/index.js";
import type { Logger } from "../log.js";
import { clearingCallFor } from "../markets/dayAheadClearing.js";
import { readBook } from "../markets/orderBook.js";
import { shortError } from "../meter-agent/meterAgent.js";

/** The day-ahead result of one slot, as cleared. */
export interface DayAheadSlotResult {
  slot: number;
  orders: number;
  price: bigint;
  volumeWh: bigint;
}

export interface DayAheadClearerOptions {
  /** DayAheadMarket connected with the master's key (anyone may clear; the master pays the gas). */
  market: DayAheadMarket;
  logger: Logger;
  /** Block to search order events from (the market's deployment block on a long chain). */
  fromBlock?: number;
}

/**
 * The master's day-ahead duty: once the gate of a slot has closed, read its book, compute the
 * auction off chain (agents/markets/dayAheadClearing.ts) and submit it. The contract checks
 * the result and would refuse a wrong one; a slot someone else cleared first is skipped.
 */
export class DayAheadClearer {
  private slotSeconds = 0;
  private gateLeadMs = 0;
  /** Slots past gate closure that are cleared or have no orders: nothing more to do there. */
  private readonly done = new Set<number>();

  constructor(private readonly o: DayAheadClearerOptions) {}

  async init(): Promise<void> {
    const [slotSeconds, lead] = await Promise.all([this.o.market.slotSeconds(), this.o.market.gateLeadSeconds()]);
    this.slotSeconds = Number(slotSeconds);
    this.gateLeadMs = Number(lead) * 1000;
  }

  /** Clears every slot whose gate has closed at `nowMs` and that has not started: today's rest and, after gate closure, tomorrow. */
  async clearDue(nowMs: number): Promise<DayAheadSlotResult[]> {
    const dayMs = 86_400_000;
    const tomorrow = (Math.floor(nowMs / dayMs) + 1) * dayMs;
    const lastDay = nowMs >= tomorrow - this.gateLeadMs ? tomorrow + dayMs : tomorrow;
    const slotMs = this.slotSeconds * 1000;
    const results: DayAheadSlotResult[] = [];
    for (let slot = Math.floor(nowMs / slotMs) + 1; slot * slotMs < lastDay; slot++) {
      const result = await this.clearSlot(slot);
      if (result) results.push(result);
    }
    return results;
  }

  /** Clears `slot` if it has orders and is not cleared yet. */
  async clearSlot(slot: number): Promise<DayAheadSlotResult | undefined> {
    const { market, logger } = this.o;
    if (this.done.has(slot)) return undefined;
    const book = await market.book(slot);
    if (book.cleared || book.size === 0n) {
      this.done.add(slot);
      return undefined;
    }
    try {
      const orders = await readBook(market, slot, this.o.fromBlock ?? 0);
      const clearing = clearingCallFor(slot, orders);
      const receipt = await (await market.clear(clearing)).wait();
      this.done.add(slot);
      logger({ level: "info", msg: "day-ahead slot cleared", slot, orders: orders.length, price: clearing.price, volumeWh: clearing.volumeWh, gas: receipt?.gasUsed });
      return { slot, orders: orders.length, price: clearing.price, volumeWh: clearing.volumeWh };
    } catch (e) {
      logger({ level: "error", msg: "day-ahead clearing failed", slot, error: shortError(e) });
      return undefined;
    }
  }
}
