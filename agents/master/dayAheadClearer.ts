import type { DayAheadMarket } from "../chain/types/index.js";
import { slotAt, slotStartMs } from "../clock.js";
import type { Logger } from "../log.js";
import { clearingCallFor } from "../markets/dayAheadClearing.js";
import { readBook } from "../markets/orderBook.js";
import { SlotClearer } from "./slotClearer.js";

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

type Book = Awaited<ReturnType<DayAheadMarket["book"]>>;

/**
 * The master's day-ahead duty: once the gate of a slot has closed, read its book, compute the
 * auction off chain (agents/markets/dayAheadClearing.ts) and submit it. The contract checks
 * the result and would refuse a wrong one; a slot someone else cleared first is skipped.
 */
export class DayAheadClearer extends SlotClearer<Book, DayAheadSlotResult> {
  constructor(private readonly o: DayAheadClearerOptions) {
    super(o.market, o.logger, "day-ahead");
  }

  /** Every slot whose gate has closed at `nowMs` and that has not started: today's rest and, after gate closure, tomorrow. */
  protected *dueSlots(nowMs: number): Iterable<number> {
    const dayMs = 86_400_000;
    const tomorrow = (Math.floor(nowMs / dayMs) + 1) * dayMs;
    const lastDay = nowMs >= tomorrow - this.gateLeadMs ? tomorrow + dayMs : tomorrow;
    for (let slot = slotAt(nowMs, this.slotSeconds) + 1; slotStartMs(slot, this.slotSeconds) < lastDay; slot++) yield slot;
  }

  protected async submit(slot: number): Promise<DayAheadSlotResult> {
    const { market } = this.o;
    const orders = await readBook(market, slot, this.o.fromBlock ?? 0);
    const clearing = clearingCallFor(slot, orders);
    const receipt = await (await market.clear(clearing)).wait();
    this.logger({ level: "info", msg: "day-ahead slot cleared", slot, orders: orders.length, price: clearing.price, volumeWh: clearing.volumeWh, gas: receipt?.gasUsed });
    return { slot, orders: orders.length, price: clearing.price, volumeWh: clearing.volumeWh };
  }
}
