import type { IntradayMarket } from "../chain/types/index.js";
import type { Logger } from "../log.js";
import { forecastSlot, SLOTS_PER_DAY, type SlotHistory } from "./dayAheadTrader.js";
import { shortError } from "./meterAgent.js";

/** What the agent's flexible assets offer and do (see flexibility.ts). */
export interface FlexibilitySource {
  /** Reads the assets' state (state of charge, EV session) before offers are worked out. */
  readState?(): Promise<unknown>;
  /** Keeps an activated asset on its target during the slot (called on every step). */
  track?(): Promise<void>;
  /** What the assets can really deliver in `slot`: at most one upward and one downward quantity. */
  offersFor(slot: number, slotSeconds: number, now: Date): Array<{ slot: number; isUp: boolean; qtyWh: bigint }>;
  /** Drives the assets through `slot` to deliver `activatedWh` (+ downward: use more, - upward: use less). */
  activate(slot: number, activatedWh: bigint): Promise<unknown>;
  /** Back to automatic operation. */
  release(): Promise<void>;
}

/** Prices of flexibility, as fractions of the regulator's band [floor, cap]. */
export interface FlexPricing {
  /** The least an upward offer (the household sells) takes. */
  upAt: number;
  /** The most a downward offer (the household buys) pays. */
  downAt: number;
}

export const DEFAULT_FLEX_PRICING: FlexPricing = { upAt: 0.55, downAt: 0.35 };

/**
 * The hour-ahead forecast: the same-slot-on-recent-days forecast, corrected by how far that
 * method was off over the last `recent` metered slots (errors persist for an hour or so: a
 * cloudy morning, a guest's EV).
 */
export function hourAheadForecast(history: SlotHistory, slot: number, recent = 4): number | undefined {
  const base = forecastSlot(history, slot);
  if (base === undefined) return undefined;
  const errors: number[] = [];
  for (let s = slot - 1; s >= slot - 8 && errors.length < recent; s--) {
    const actual = history[String(s)];
    const predicted = forecastSlot(history, s);
    if (actual !== undefined && predicted !== undefined) errors.push(actual - predicted);
  }
  const bias = errors.length === 0 ? 0 : errors.reduce((a, b) => a + b, 0) / errors.length;
  return base + bias;
}

export interface IntradayTraderOptions {
  account: string;
  /** IntradayMarket connected with the meter key. */
  market: IntradayMarket;
  flexibility?: FlexibilitySource | undefined;
  pricing: FlexPricing;
  logger: Logger;
}

/**
 * The household's part in the balancing market: in each slot's window it sends an updated
 * forecast and offers what its assets can deliver; when an offer is activated it drives the
 * assets through the slot over Modbus and lets them go afterwards.
 */
export class IntradayTrader {
  private slotSeconds = 0;
  private openLeadMs = 0;
  private gateLeadMs = 0;
  private floor = 0n;
  private cap = 0n;
  private readonly submitted = new Set<number>();
  private active: number | undefined;
  private checked = new Set<number>();

  constructor(private readonly o: IntradayTraderOptions) {}

  async init(): Promise<void> {
    await this.o.flexibility?.release(); // a crashed agent may have left devices under control
    const m = this.o.market;
    const [slotSeconds, open, gate, floor, cap] = await Promise.all([m.slotSeconds(), m.openLeadSeconds(), m.gateLeadSeconds(), m.priceFloor(), m.priceCap()]);
    this.slotSeconds = Number(slotSeconds);
    this.openLeadMs = Number(open) * 1000;
    this.gateLeadMs = Number(gate) * 1000;
    this.floor = floor;
    this.cap = cap;
  }

  /** Slots whose balancing window is open at `nowMs` and that the agent has not yet served. */
  dueSlots(nowMs: number): number[] {
    const slotMs = this.slotSeconds * 1000;
    const due: number[] = [];
    for (let slot = Math.floor(nowMs / slotMs) + 1; slot <= Math.floor(nowMs / slotMs) + 8; slot++) {
      const start = slot * slotMs;
      const opens = Math.floor(start / 3_600_000) * 3_600_000 - this.openLeadMs;
      const closes = start - this.gateLeadMs;
      if (nowMs >= opens && nowMs < closes && !this.submitted.has(slot)) due.push(slot);
    }
    return due;
  }

  /** Forecasts and offers for every due slot, then the activation of the slot now running. */
  async step(nowMs: number, history: SlotHistory): Promise<void> {
    const due = this.dueSlots(nowMs);
    if (due.length > 0) await this.submit(due, nowMs, history);
    await this.actuate(nowMs);
  }

  private async submit(slots: number[], nowMs: number, history: SlotHistory): Promise<void> {
    const { market, account, logger } = this.o;
    try {
      const forecasts = slots.map((s) => hourAheadForecast(history, s));
      const first = slots[0]!;
      const contiguous = forecasts.every((f) => f !== undefined) && slots.every((s, i) => s === first + i);
      if (contiguous) {
        await (await market.submitForecasts(account, first, forecasts.map((f) => Math.round(f!)))).wait();
      }
      if (this.o.flexibility) await this.o.flexibility.readState?.();
      const offers = this.o.flexibility
        ? slots.flatMap((s) => this.o.flexibility!.offersFor(s, this.slotSeconds, new Date(nowMs))).filter((x) => x.qtyWh > 0n)
        : [];
      // One offer per slot: in the direction the neighbourhood's expected imbalance so far
      // calls for (short: up), else the larger one.
      const books = await Promise.all(slots.map((s) => market.book(s)));
      const chosen = slots.flatMap((s, i) => {
        const forSlot = offers.filter((x) => x.slot === s);
        if (forSlot.length <= 1) return forSlot;
        const imbalance = books[i]!.imbalanceWh;
        if (imbalance === 0n) return [forSlot.reduce((a, b) => (b.qtyWh > a.qtyWh ? b : a))];
        return forSlot.filter((x) => x.isUp === imbalance > 0n).slice(0, 1);
      });
      if (chosen.length > 0) {
        const at = (f: number): bigint => this.floor + (BigInt(Math.round(f * 1e6)) * (this.cap - this.floor)) / 1_000_000n;
        const inputs = chosen.map((x) => ({ slot: x.slot, isUp: x.isUp, qtyWh: x.qtyWh, price: at(x.isUp ? this.o.pricing.upAt : this.o.pricing.downAt) }));
        await (await market.placeOffers(account, inputs)).wait();
      }
      for (const s of slots) this.submitted.add(s);
      logger({ level: "info", msg: "balancing forecasts and offers sent", slots, offers: chosen.length });
    } catch (e) {
      logger({ level: "warn", msg: "balancing submission failed; will retry", slots, error: shortError(e, market.interface) });
    }
  }

  private async actuate(nowMs: number): Promise<void> {
    const flex = this.o.flexibility;
    if (!flex) return;
    const current = Math.floor(nowMs / 1000 / this.slotSeconds);
    if (this.active !== undefined && this.active !== current) {
      await flex.release();
      this.o.logger({ level: "info", msg: "flexibility released", slot: this.active });
      this.active = undefined;
    }
    if (this.active === current) await flex.track?.();
    if (this.checked.has(current)) return;
    try {
      const [activated] = await this.o.market.activationOf(current, this.o.account);
      this.checked.add(current);
      if (activated !== 0n) {
        await flex.activate(current, activated);
        this.active = current;
        this.o.logger({ level: "info", msg: "flexibility activated", slot: current, activatedWh: activated });
      }
    } catch (e) {
      this.o.logger({ level: "warn", msg: "activation failed; will retry", slot: current, error: shortError(e) });
    }
    if (this.checked.size > 4 * SLOTS_PER_DAY) this.checked = new Set([current]);
  }
}
