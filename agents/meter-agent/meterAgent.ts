import type { Wallet } from "ethers";
import { slotAt, slotStartMs, type Clock } from "../clock.js";
import { fromJson, readingDomain, signReading, toJson, type SignedReading, type SignedReadingJson } from "../chain/readings.js";
import type { Settlement } from "../chain/types/index.js";
import type { Logger } from "../log.js";
import { SLOTS_PER_DAY, type DayAheadTrader, type SlotHistory } from "./dayAheadTrader.js";
import type { IntradayTrader } from "./intradayTrader.js";
import type { JsonStore } from "./store.js";

/** What the agent needs of a meter: its cumulative registers, now. */
export interface MeterSource {
  read(): Promise<{ importWh: bigint; exportWh: bigint }>;
}

/** A reading the agent signed and has not yet seen on chain. */
interface PendingReading {
  signed: SignedReadingJson;
  /** Handed to the master for relaying. */
  sentToMaster: boolean;
}

/** What survives a restart. Written atomically before anything is sent. */
export interface MeterAgentState {
  /** The last slot whose closing reading was taken (or skipped as missed). */
  lastClosedSlot: number;
  /** Registers of the last reading signed, to refuse a meter that ran backwards. */
  lastImportWh: string;
  lastExportWh: string;
  pending: Record<string, PendingReading>;
  /** The slot of the last signed reading, to tell a contiguous slot from a gap. */
  lastSignedSlot?: number;
  /** Net energy per slot over the last days: what the day-ahead forecast learns from. */
  history?: SlotHistory;
  /** First slot of the last day whose day-ahead orders were placed. */
  dayAheadFirstSlot?: number;
}

export interface MeterAgentOptions {
  /** The participant's wallet account the readings are for. */
  account: string;
  /** The meter agent's key: signs readings and pays gas when the agent submits them itself. */
  meterKey: Wallet;
  /** Settlement contract, connected with `meterKey` as signer. */
  settlement: Settlement;
  meter: MeterSource;
  store: JsonStore<MeterAgentState>;
  clock: Clock;
  logger: Logger;
  /** Where the master takes signed readings (POST /readings); none: always self-submit. */
  masterUrl?: string | undefined;
  /** Day-ahead trading for the household, if it takes part. */
  dayAhead?: DayAheadTrader | undefined;
  /** Balancing forecasts, flexibility offers and their actuation, if it takes part. */
  intraday?: IntradayTrader | undefined;
  /** After a slot ends, how long to wait for the master before submitting alone (ms). */
  selfSubmitAfterMs: number;
  /** The latest a poll after a slot's end still counts as that slot's closing reading (ms). */
  captureLagMs: number;
}

/**
 * The meter agent of one household. Each `tick` polls the meter; the first poll after a slot
 * ends becomes that slot's signed reading, kept on disk until it is seen on chain. It is
 * handed to the master when the master asks (ReadingsRequested), and submitted by the agent
 * itself when the master stays silent, so the master is not a single point of failure.
 * Re-sending is harmless: the contract ignores an identical reading.
 */
export class MeterAgent {
  private state: MeterAgentState | undefined;
  private slotSeconds = 0;
  private readingWindowMs = 0;
  private domain: Awaited<ReturnType<typeof readingDomain>> | undefined;
  private readonly requested = new Set<number>();
  private requestsSeenToBlock: number | undefined;
  private busy: Promise<void> = Promise.resolve();
  private stopping = false;

  constructor(private readonly o: MeterAgentOptions) {}


  /** Loads state and the contract's timing; call once before `tick`. */
  async init(): Promise<void> {
    const { settlement } = this.o;
    const [slotSeconds, window, network, address] = await Promise.all([
      settlement.slotSeconds(),
      settlement.readingWindow(),
      settlement.runner!.provider!.getNetwork(),
      settlement.getAddress(),
    ]);
    this.slotSeconds = Number(slotSeconds);
    this.readingWindowMs = Number(window) * 1000;
    this.domain = readingDomain(network.chainId, address);
    await this.o.dayAhead?.init();
    await this.o.intraday?.init();
    this.state = (await this.o.store.load()) ?? {
      lastClosedSlot: slotAt(this.o.clock.now(), this.slotSeconds) - 1,
      lastImportWh: "0",
      lastExportWh: "0",
      pending: {},
    };
    const pending = Object.keys(this.state.pending).length;
    this.o.logger({ level: "info", msg: "meter agent ready", account: this.o.account, lastClosedSlot: this.state.lastClosedSlot, pending });
  }

  /** The master asked for `slot`'s reading (from the ReadingsRequested event). */
  onReadingsRequested(slot: number): Promise<void> {
    this.requested.add(slot);
    return this.serialize(() => this.flush());
  }

  /**
   * One poll: read the meter, close the slot that ended, look for the master's requests,
   * push pending readings along. Requests are found by reading logs rather than through a
   * subscription, so a node that restarts in between costs a retry, not a lost request.
   */
  tick(): Promise<void> {
    return this.serialize(async () => {
      await this.poll();
      await this.checkRequests();
      await this.flush();
      if (this.stopping) return;
      await this.tradeDayAhead();
      await this.o.intraday?.step(this.o.clock.now(), this.mustState().history ?? {});
    });
  }

  /** Resolves once the step in progress, if any, is done. */
  idle(): Promise<void> {
    return this.busy;
  }

  /**
   * Stops trading before the process ends: the step in flight places no further orders or
   * offers (nobody would deliver them), later steps only meter. Resolves once the step is done.
   */
  stop(): Promise<void> {
    this.stopping = true;
    this.o.intraday?.stop();
    return this.idle();
  }

  /** Pending (unconfirmed) readings, oldest first. */
  pendingSlots(): number[] {
    return Object.keys(this.mustState().pending).map(Number).sort((a, b) => a - b);
  }

  private async poll(): Promise<void> {
    const state = this.mustState();
    const now = this.o.clock.now();
    const ended = slotAt(now, this.slotSeconds) - 1;
    if (ended <= state.lastClosedSlot) return;
    let registers: { importWh: bigint; exportWh: bigint };
    try {
      registers = await this.o.meter.read();
    } catch (e) {
      this.o.logger({ level: "warn", msg: "meter read failed", error: (e as Error).message });
      return;
    }
    const lagMs = now - slotStartMs(ended + 1, this.slotSeconds);
    if (lagMs > this.o.captureLagMs) {
      // Too late to stand for the end of that slot: leave the gap to the next reading.
      this.o.logger({ level: "warn", msg: "slot end missed; the next reading absorbs it", slot: ended, lagMs });
      state.lastClosedSlot = ended;
      await this.o.store.save(state);
      return;
    }
    if (registers.importWh < BigInt(state.lastImportWh) || registers.exportWh < BigInt(state.lastExportWh)) {
      this.o.logger({ level: "error", msg: "meter registers went backwards; not signing", slot: ended, ...strings(registers) });
      return;
    }
    const signed = await signReading(this.o.meterKey, this.domain!, { account: this.o.account, slot: ended, ...registers });
    state.pending[String(ended)] = { signed: toJson(signed), sentToMaster: false };
    if (state.lastSignedSlot === ended - 1) {
      const net = registers.importWh - BigInt(state.lastImportWh) - (registers.exportWh - BigInt(state.lastExportWh));
      this.recordHistory(ended, Number(net));
    }
    state.lastSignedSlot = ended;
    state.lastClosedSlot = ended;
    state.lastImportWh = registers.importWh.toString();
    state.lastExportWh = registers.exportWh.toString();
    await this.o.store.save(state); // on disk before it is sent anywhere
    this.o.logger({ level: "info", msg: "reading signed", slot: ended, ...strings(registers) });
  }

  private async checkRequests(): Promise<void> {
    if (this.pendingSlots().length === 0) return;
    const { settlement } = this.o;
    try {
      const latest = await settlement.runner!.provider!.getBlockNumber();
      const from = this.requestsSeenToBlock === undefined ? Math.max(0, latest - 100) : this.requestsSeenToBlock + 1;
      if (from > latest) return;
      const logs = await settlement.queryFilter(settlement.filters.ReadingsRequested(), from, latest);
      for (const log of logs) this.requested.add(Number(log.args.slot));
      this.requestsSeenToBlock = latest;
    } catch (e) {
      this.o.logger({ level: "warn", msg: "node unreachable; will retry", error: shortError(e) });
    }
  }

  /** Adds what the household used (+) or fed in (-) in `slot`, keeping eight days. */
  recordHistory(slot: number, netWh: number): void {
    const state = this.mustState();
    const history = (state.history ??= {});
    history[String(slot)] = netWh;
    for (const key of Object.keys(history)) if (Number(key) < slot - 8 * SLOTS_PER_DAY) delete history[key];
  }

  /** The day-ahead orders of the household, once a day before gate closure. */
  private async tradeDayAhead(): Promise<void> {
    const trader = this.o.dayAhead;
    if (trader === undefined) return;
    const state = this.mustState();
    const firstSlot = trader.dueDay(this.o.clock.now(), state.dayAheadFirstSlot);
    if (firstSlot === undefined) return;
    try {
      await trader.trade(firstSlot, state.history ?? {});
      state.dayAheadFirstSlot = firstSlot;
      await this.o.store.save(state);
    } catch (e) {
      this.o.logger({ level: "warn", msg: "day-ahead orders failed; will retry", firstSlot, error: shortError(e) });
    }
  }

  /** Takes part in the balancing market from now on. */
  async enableIntraday(trader: IntradayTrader): Promise<void> {
    await trader.init();
    this.o.intraday = trader;
  }

  /** The first slot of the last day traded day-ahead, if any. */
  get dayAheadFirstSlot(): number | undefined {
    return this.mustState().dayAheadFirstSlot;
  }

  private async flush(): Promise<void> {
    const state = this.mustState();
    const slots = this.pendingSlots();
    if (slots.length === 0) return;
    const now = this.o.clock.now();
    let onChain: number;
    try {
      onChain = Number((await this.o.settlement.lastReading(this.o.account))[0]);
    } catch (e) {
      this.o.logger({ level: "warn", msg: "node unreachable; will retry", error: (e as Error).message });
      return;
    }
    let changed = false;
    for (const slot of slots) {
      const p = state.pending[String(slot)]!;
      const endMs = slotStartMs(slot + 1, this.slotSeconds);
      if (onChain >= slot) {
        delete state.pending[String(slot)];
        changed = true;
        this.o.logger({ level: "info", msg: "reading on chain", slot });
        continue;
      }
      if (now > endMs + this.readingWindowMs) {
        delete state.pending[String(slot)];
        changed = true;
        this.o.logger({ level: "warn", msg: "reading window passed; the next reading absorbs it", slot });
        continue;
      }
      if (this.requested.has(slot) && !p.sentToMaster && this.o.masterUrl !== undefined) {
        p.sentToMaster = await this.sendToMaster(p.signed);
        changed ||= p.sentToMaster;
      }
      if (now >= endMs + this.o.selfSubmitAfterMs || this.o.masterUrl === undefined) {
        if (await this.submit(fromJson(p.signed))) {
          delete state.pending[String(slot)];
          changed = true;
        }
      }
    }
    if (changed) await this.o.store.save(state);
  }

  private async sendToMaster(signed: SignedReadingJson): Promise<boolean> {
    try {
      const res = await fetch(new URL("/readings", this.o.masterUrl), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(signed),
        signal: AbortSignal.timeout(5_000),
      });
      if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
      this.o.logger({ level: "info", msg: "reading handed to master", slot: signed.reading.slot });
      return true;
    } catch (e) {
      this.o.logger({ level: "warn", msg: "master unreachable; will submit alone if it stays silent", error: (e as Error).message });
      return false;
    }
  }

  private async submit(s: SignedReading): Promise<boolean> {
    try {
      const tx = await this.o.settlement.submitReading(s.reading, s.r, s.vs);
      await tx.wait();
      this.o.logger({ level: "info", msg: "reading submitted by agent", slot: s.reading.slot, tx: tx.hash });
      return true;
    } catch (e) {
      this.o.logger({ level: "warn", msg: "own submission failed; will retry", slot: s.reading.slot, error: shortError(e, this.o.settlement.interface) });
      return false;
    }
  }

  /** Ticks, requests and the timer never interleave, so state is written by one at a time. */
  private serialize(work: () => Promise<void>): Promise<void> {
    const next = this.busy.then(work, work);
    this.busy = next.catch(() => {});
    return next;
  }

  private mustState(): MeterAgentState {
    if (this.state === undefined) throw new Error("MeterAgent.init() was not called");
    return this.state;
  }
}

function strings(r: { importWh: bigint; exportWh: bigint }): { importWh: string; exportWh: string } {
  return { importWh: r.importWh.toString(), exportWh: r.exportWh.toString() };
}

/**
 * ethers errors carry long payloads; the first line and any revert name is what a log needs.
 * ethers does not decode custom errors of a sent transaction, so pass the contract's
 * interface (`contract.interface`) to have them named.
 */
export function shortError(e: unknown, iface?: { parseError(data: string): { name: string; args: ArrayLike<unknown> } | null }): string {
  const err = e as { shortMessage?: string; revert?: { name?: string; args?: unknown[] }; message?: string; data?: unknown };
  if (err.revert?.name) return `${err.revert.name}(${(err.revert.args ?? []).map(String).join(", ")})`;
  if (iface && typeof err.data === "string" && err.data.length >= 10) {
    try {
      const parsed = iface.parseError(err.data);
      if (parsed) return `${parsed.name}(${Array.from(parsed.args).map(String).join(", ")})`;
    } catch {
      // not one of this contract's errors: fall through to the message
    }
  }
  return err.shortMessage ?? err.message?.split("\n")[0] ?? String(e);
}
