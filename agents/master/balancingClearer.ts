import type { IntradayMarket } from "../chain/types/index.js";
import { slotAt, slotStartMs } from "../clock.js";
import type { Logger } from "../log.js";
import { balancingCallFor } from "../markets/balancingClearing.js";
import { readOffers } from "../markets/offerBook.js";
import { SlotClearer } from "./slotClearer.js";

/** The balancing result of one slot, as cleared. */
export interface BalancingSlotResult {
  slot: number;
  imbalanceWh: bigint;
  offers: number;
  up: boolean;
  activatedWh: bigint;
  price: bigint;
}

type Book = Awaited<ReturnType<IntradayMarket["book"]>>;

/**
 * The master's balancing duty: at each slot's gate closure (15 minutes before it), read the
 * expected imbalance and the flexibility offers, compute the activation off chain
 * (agents/markets/balancingClearing.ts) and submit it; the contract accepts only the correct one.
 */
export class BalancingClearer extends SlotClearer<Book, BalancingSlotResult> {
  constructor(private readonly o: { market: IntradayMarket; logger: Logger; fromBlock?: number }) {
    super(o.market, o.logger, "balancing");
  }

  /** The slots whose gate has closed at `nowMs` and that have not started. */
  protected *dueSlots(nowMs: number): Iterable<number> {
    for (let slot = slotAt(nowMs, this.slotSeconds) + 1; slotStartMs(slot, this.slotSeconds) - this.gateLeadMs <= nowMs; slot++) yield slot;
  }

  protected async submit(slot: number, book: Book): Promise<BalancingSlotResult> {
    const { market } = this.o;
    const offers = await readOffers(market, slot, this.o.fromBlock ?? 0);
    const call = balancingCallFor(slot, book.imbalanceWh, offers);
    const receipt = await (await market.clear(call)).wait();
    const up = book.imbalanceWh > 0n;
    this.logger({ level: "info", msg: "balancing slot cleared", slot, imbalanceWh: book.imbalanceWh, activatedWh: call.volumeWh, price: call.price, gas: receipt?.gasUsed });
    return { slot, imbalanceWh: book.imbalanceWh, offers: offers.length, up, activatedWh: call.volumeWh, price: call.price };
  }
}
