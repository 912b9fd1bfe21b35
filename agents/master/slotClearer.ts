import type { Logger } from "../log.js";
import { shortError } from "../meter-agent/meterAgent.js";

/** What a clearer needs of a market contract: its timing and each slot's book. */
export interface ClearableMarket<Book extends { cleared: boolean; size: bigint }> {
  slotSeconds(): Promise<bigint>;
  gateLeadSeconds(): Promise<bigint>;
  book(slot: number): Promise<Book>;
}

/**
 * What the master's two clearers share: the market's timing, read once, and the slots past
 * gate closure that are cleared or empty, where there is nothing more to do. A subclass says
 * which slots are due and how one is cleared.
 */
export abstract class SlotClearer<Book extends { cleared: boolean; size: bigint }, Result> {
  protected slotSeconds = 0;
  protected gateLeadMs = 0;
  /** Slots past gate closure that are cleared or have nothing to clear: nothing more to do there. */
  private readonly done = new Set<number>();

  protected constructor(
    private readonly market: ClearableMarket<Book>,
    protected readonly logger: Logger,
    /** What the failure log calls the market ("day-ahead", "balancing"). */
    private readonly name: string,
  ) {}

  async init(): Promise<void> {
    const [slotSeconds, lead] = await Promise.all([this.market.slotSeconds(), this.market.gateLeadSeconds()]);
    this.slotSeconds = Number(slotSeconds);
    this.gateLeadMs = Number(lead) * 1000;
  }

  /** The slots to clear at `nowMs`, in order: their gate has closed and they have not started. */
  protected abstract dueSlots(nowMs: number): Iterable<number>;

  /** Reads `slot`'s orders or offers, computes the clearing off chain and submits it. */
  protected abstract submit(slot: number, book: Book): Promise<Result>;

  /** Clears every slot due at `nowMs`. */
  async clearDue(nowMs: number): Promise<Result[]> {
    const results: Result[] = [];
    for (const slot of this.dueSlots(nowMs)) {
      const result = await this.clearSlot(slot);
      if (result) results.push(result);
    }
    return results;
  }

  /** Clears `slot` if it has something to clear and is not cleared yet. */
  async clearSlot(slot: number): Promise<Result | undefined> {
    if (this.done.has(slot)) return undefined;
    const book = await this.market.book(slot);
    if (book.cleared || book.size === 0n) {
      this.done.add(slot);
      return undefined;
    }
    try {
      const result = await this.submit(slot, book);
      this.done.add(slot);
      return result;
    } catch (e) {
      this.logger({ level: "error", msg: `${this.name} clearing failed`, slot, error: shortError(e) });
      return undefined;
    }
  }
}
