import { slotAt, slotStartMs, type Clock } from "../clock.js";
import type { SignedReading } from "../chain/readings.js";
import type { DayAheadMarket, IntradayMarket, ParticipantRegistry, Settlement } from "../chain/types/index.js";
import type { Logger } from "../log.js";
import { shortError } from "../meter-agent/meterAgent.js";
import type { JsonStore } from "../meter-agent/store.js";
import type { BalancingClearer } from "./balancingClearer.js";
import type { DayAheadClearer } from "./dayAheadClearer.js";
import type { ReadingInbox } from "./readingInbox.js";

/** What the master remembers across restarts. */
export interface MasterState {
  /** The last slot whose readings were requested and relayed (or given up on), and whose previous slot was settled. */
  lastHandledSlot: number;
}

export interface MasterOptions {
  /** Settlement, connected with the master's key (MASTER_ROLE; it pays gas for relaying). */
  settlement: Settlement;
  registry: ParticipantRegistry;
  inbox: ReadingInbox;
  store: JsonStore<MasterState>;
  clock: Clock;
  logger: Logger;
  /** How long to wait for agents' readings after asking (real ms). */
  collectTimeoutMs: number;
  /** Readings per relay transaction; 250 keeps a batch under 2^24 gas even with schedules and activations (~45k gas each). */
  readingBatchSize?: number;
  /** Accounts per settle transaction. */
  settleBatchSize?: number;
  /** Blocks to look back for a slot's events (public RPCs limit log ranges). */
  logLookbackBlocks?: number;
  /** Oldest slot a catch-up goes back to, counted from now (default one day). */
  maxCatchUpSlots?: number;
  /** The day-ahead market: cleared at each cycle once gates close, and shown in reports. */
  dayAhead?: { market: DayAheadMarket; clearer: DayAheadClearer } | undefined;
  /** The balancing market: cleared at each slot's gate closure, and shown in reports. */
  intraday?: { market: IntradayMarket; clearer: BalancingClearer } | undefined;
}

/** A participant's bill for a slot, from the Billed event. */
export interface Bill {
  account: string;
  /** Metered net energy in the slot (+ import), from the account's reading. */
  netWh: bigint;
  /** Metered minus scheduled. */
  deviationWh: bigint;
  /** What its scheduled sales earned at the markets' prices (paid to it). */
  earned: bigint;
  amount: bigint;
  shortfall: bigint;
}

/** What happened in one slot's settlement, from the contract's events and state. */
export interface SlotReport {
  slot: number;
  readings: number;
  closed: boolean;
  price: bigint;
  demandWh: bigint;
  supplyWh: bigint;
  localWh: bigint;
  slackSuppliedWh: bigint;
  slackAbsorbedWh: bigint;
  /** Tokens the slack unit took (+) or paid (-). */
  slackAmount: bigint;
  /** The day-ahead result (0 without a market or trade). */
  dayAheadPrice: bigint;
  dayAheadVolumeWh: bigint;
  /** The balancing market: the imbalance forecast an hour ahead, and the flexibility activated (+ up, - down). */
  expectedImbalanceWh: bigint;
  activatedWh: bigint;
  balancingPrice: bigint;
  bills: Bill[];
}

/**
 * The master agent drives the market clock: at the end of each slot it asks every meter
 * agent for its reading (ReadingsRequested), relays the signed readings in batches, and
 * settles the previous slot. It can move no money and change no reading: every step is one
 * that the contract would accept from anyone, and each is safe to repeat.
 */
export class MasterAgent {
  private state: MasterState | undefined;
  private slotSeconds = 0;
  private readingWindowMs = 0;

  constructor(private readonly o: MasterOptions) {}

  async init(): Promise<void> {
    const [slotSeconds, window] = await Promise.all([this.o.settlement.slotSeconds(), this.o.settlement.readingWindow()]);
    this.slotSeconds = Number(slotSeconds);
    this.readingWindowMs = Number(window) * 1000;
    this.state = (await this.o.store.load()) ?? { lastHandledSlot: slotAt(this.o.clock.now(), this.slotSeconds) - 2 };
    this.o.logger({ level: "info", msg: "master ready", lastHandledSlot: this.state.lastHandledSlot });
  }

  get lastHandledSlot(): number {
    return this.mustState().lastHandledSlot;
  }

  /**
   * Handles every ended slot not handled yet: after a restart or a skipped run it settles the
   * slots whose reading window has passed and runs the full cycle for the one still open.
   */
  async catchUp(): Promise<SlotReport[]> {
    const ended = slotAt(this.o.clock.now(), this.slotSeconds) - 1;
    const state = this.mustState();
    const from = Math.max(state.lastHandledSlot + 1, ended - (this.o.maxCatchUpSlots ?? 96));
    const reports: SlotReport[] = [];
    for (let slot = from; slot <= ended; slot++) {
      const report = await this.handleSlotEnd(slot);
      if (report) reports.push(report);
    }
    return reports;
  }

  /**
   * The cycle for `slot`, which just ended: request its readings, collect them, relay them
   * (which bills most of `slot - 1` on the way), then settle what is left of `slot - 1`.
   * Returns the report of `slot - 1`.
   */
  async handleSlotEnd(slot: number): Promise<SlotReport | undefined> {
    const state = this.mustState();
    if (slot <= state.lastHandledSlot) {
      this.o.logger({ level: "debug", msg: "slot handled already", slot });
      return undefined;
    }
    const deadlineMs = slotStartMs(slot + 1, this.slotSeconds) + this.readingWindowMs;
    if (this.o.clock.now() <= deadlineMs) {
      await this.requestAndRelay(slot);
    } else {
      this.o.logger({ level: "warn", msg: "reading window passed; settling only", slot });
    }
    // Saved only once `slot - 1` is settled as well: a cycle that fails at any step is run again
    // by the next catchUp (requesting, relaying and settling again are harmless), rather than
    // leaving `slot - 1` unsettled for good.
    const report = await this.settleSlot(slot - 1);
    state.lastHandledSlot = slot;
    await this.o.store.save(state);
    await this.o.dayAhead?.clearer.clearDue(this.o.clock.now());
    await this.o.intraday?.clearer.clearDue(this.o.clock.now());
    return report;
  }

  /** Bills every unbilled reading of `slot` (after its deadline) and reports the slot. */
  async settleSlot(slot: number): Promise<SlotReport> {
    const { settlement } = this.o;
    const view = await settlement.slotState(slot);
    if (!view.closed && view.readings > 0n) {
      const readers = await this.readersOf(slot);
      const states = await Promise.all(readers.map((a) => settlement.accountState(a)));
      const unbilled = readers.filter((_, i) => Number(states[i]!.lastSlot) === slot && !states[i]!.billed);
      const size = this.o.settleBatchSize ?? 500;
      for (let i = 0; i < unbilled.length; i += size) {
        const batch = unbilled.slice(i, i + size);
        const tx = await settlement.settle(slot, batch);
        const receipt = await tx.wait();
        this.o.logger({ level: "info", msg: "slot settled", slot, accounts: batch.length, gas: receipt?.gasUsed });
      }
    }
    return await this.report(slot);
  }

  private async requestAndRelay(slot: number): Promise<void> {
    const { settlement, inbox } = this.o;
    try {
      await (await settlement.requestReadings(slot)).wait();
    } catch (e) {
      // Agents then submit on their own; the cycle goes on with what arrives.
      this.o.logger({ level: "warn", msg: "requestReadings failed", slot, error: shortError(e) });
    }
    const expected = await this.expectedReaders();
    const got = await inbox.waitFor(slot, expected, this.o.collectTimeoutMs);
    const readings = inbox.take(slot);
    if (got < expected) this.o.logger({ level: "warn", msg: "readings missing at timeout", slot, got, expected });
    const valid = await this.validOnes(readings);
    const size = this.o.readingBatchSize ?? 250;
    for (let i = 0; i < valid.length; i += size) {
      const batch = valid.slice(i, i + size);
      try {
        const receipt = await (await settlement.submitReadings(batch)).wait();
        this.o.logger({ level: "info", msg: "readings relayed", slot, count: batch.length, gas: receipt?.gasUsed });
      } catch (e) {
        this.o.logger({ level: "error", msg: "relay failed; agents will submit alone", slot, error: shortError(e, settlement.interface) });
      }
    }
  }

  /** Drops readings the contract would refuse (wrong key, conflict, on chain already...); one per account. */
  private async validOnes(readings: SignedReading[]): Promise<SignedReading[]> {
    const { settlement } = this.o;
    const verdicts = await Promise.all(
      readings.map(async (s) => {
        try {
          const [last, , ] = await settlement.lastReading(s.reading.account);
          if (Number(last) >= s.reading.slot) return false; // on chain already: nothing to relay
          await settlement.submitReading.staticCall(s.reading, s.r, s.vs);
          return true;
        } catch (e) {
          this.o.logger({ level: "warn", msg: "reading refused", account: s.reading.account, slot: s.reading.slot, error: shortError(e) });
          return false;
        }
      }),
    );
    const seen = new Set<string>();
    return readings.filter((s, i) => {
      const key = s.reading.account.toLowerCase();
      if (!verdicts[i] || seen.has(key)) return false;
      seen.add(key);
      return true;
    });
  }

  /** How many readings to wait for: every registered participant but the slack unit. */
  private async expectedReaders(): Promise<number> {
    const { registry } = this.o;
    const [count, slack] = await Promise.all([registry.participantCount(), registry.slackUnit()]);
    return Number(count) - (slack === "0x0000000000000000000000000000000000000000" ? 0 : 1);
  }

  /** Accounts with a reading recorded for `slot`, from ReadingRecorded events. */
  private async readersOf(slot: number): Promise<string[]> {
    const { settlement } = this.o;
    const latest = await settlement.runner!.provider!.getBlockNumber();
    const from = Math.max(0, latest - (this.o.logLookbackBlocks ?? 5_000));
    const logs = await settlement.queryFilter(settlement.filters.ReadingRecorded(undefined, slot), from, latest);
    return [...new Set(logs.map((l) => l.args.account))];
  }

  private async report(slot: number): Promise<SlotReport> {
    const { settlement } = this.o;
    const latest = await settlement.runner!.provider!.getBlockNumber();
    const from = Math.max(0, latest - (this.o.logLookbackBlocks ?? 5_000));
    const [view, book, balancing, billed, closed, readings] = await Promise.all([
      settlement.slotState(slot),
      this.o.dayAhead?.market.book(slot),
      this.o.intraday?.market.book(slot),
      settlement.queryFilter(settlement.filters.Billed(undefined, slot), from, latest),
      settlement.queryFilter(settlement.filters.SlotClosed(slot), from, latest),
      settlement.queryFilter(settlement.filters.ReadingRecorded(undefined, slot), from, latest),
    ]);
    const netOf = new Map(readings.map((l) => [l.args.account, l.args.importDeltaWh - l.args.exportDeltaWh]));
    const close = closed[0]?.args;
    return {
      slot,
      readings: Number(view.readings),
      closed: view.closed,
      price: view.price,
      demandWh: view.demandWh,
      supplyWh: view.supplyWh,
      localWh: view.localWh,
      slackSuppliedWh: close?.slackSuppliedWh ?? 0n,
      slackAbsorbedWh: close?.slackAbsorbedWh ?? 0n,
      slackAmount: close?.slackAmount ?? 0n,
      dayAheadPrice: book?.price ?? 0n,
      dayAheadVolumeWh: book?.volumeWh ?? 0n,
      expectedImbalanceWh: balancing?.imbalanceWh ?? 0n,
      activatedWh: balancing === undefined ? 0n : balancing.up ? balancing.activatedWh : -balancing.activatedWh,
      balancingPrice: balancing?.price ?? 0n,
      bills: billed.map((l) => ({
        account: l.args.account,
        netWh: netOf.get(l.args.account) ?? 0n,
        deviationWh: l.args.deviationWh,
        earned: l.args.scheduledEarnings,
        amount: l.args.amount,
        shortfall: l.args.shortfall,
      })),
    };
  }

  private mustState(): MasterState {
    if (this.state === undefined) throw new Error("MasterAgent.init() was not called");
    return this.state;
  }
}
