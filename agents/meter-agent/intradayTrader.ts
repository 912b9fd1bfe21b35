import type { IntradayMarket } from "../chain/types/index.js";
import { slotAt, slotStartMs } from "../clock.js";
import type { Logger } from "../log.js";
import { forecastSlot, priceAt, SLOTS_PER_DAY, type SlotHistory } from "./dayAheadTrader.js";
import { shortError } from "./meterAgent.js";

/** What the agent's flexible assets offer and do (see flexibility.ts). */
export interface FlexibilitySource {
  /** Reads the assets' state (state of charge, EV session) before offers are worked out. */
  readState?(): Promise<unknown>;
  /** Keeps an activated asset on its target during the slot (called on every step). */
  track?(): Promise<void>;
  /**
   * What the assets can really deliver in `slot`: at most one upward and one downward quantity,
   * only in the directions the household offers (FlexibilityController: assets.preference).
   */
  offersFor(slot: number, slotSeconds: number, now: Date): FlexOffer[];
  /** The offer placed for `slot` (undefined: none), so that later offers allow for its activation. */
  noteOffer?(slot: number, offer: FlexOffer | undefined): void;
  /** The clearing of `slot`, known before it starts (+ downward, - upward, 0: not activated). */
  noteActivation?(slot: number, activatedWh: bigint): void;
  /** Drives the assets through `slot` to deliver `activatedWh` (+ downward: use more, - upward: use less). */
  activate(slot: number, activatedWh: bigint): Promise<unknown>;
  /** Back to automatic operation. */
  release(): Promise<void>;
}

export interface FlexOffer {
  slot: number;
  isUp: boolean;
  qtyWh: bigint;
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
 * method was off over the last `recent` metered slots. Such errors persist for a while (a
 * cloudy morning, a guest's EV) but fade: the correction is weighted by `decay` per slot
 * between the last metered slot and `slot`, so that a step change (a car that finished
 * charging earlier than yesterday's) is not carried an hour ahead at full size.
 */
export function hourAheadForecast(history: SlotHistory, slot: number, recent = 4, decay = 0.85): number | undefined {
  const base = forecastSlot(history, slot);
  if (base === undefined) return undefined;
  const errors: number[] = [];
  let lastKnown: number | undefined;
  for (let s = slot - 1; s >= slot - 8 && errors.length < recent; s--) {
    const actual = history[String(s)];
    const predicted = forecastSlot(history, s);
    if (actual !== undefined && predicted !== undefined) {
      errors.push(actual - predicted);
      lastKnown ??= s;
    }
  }
  if (lastKnown === undefined) return base;
  const bias = errors.reduce((a, b) => a + b, 0) / errors.length;
  return base + bias * decay ** (slot - lastKnown);
}

export interface IntradayTraderOptions {
  account: string;
  /** IntradayMarket connected with the meter key. */
  market: IntradayMarket;
  flexibility?: FlexibilitySource | undefined;
  pricing: FlexPricing;
  logger: Logger;
  /**
   * How long before a slot's gate closure its flexibility offer is placed (default: one slot
   * length). Forecasts go in when the window opens; the offer waits until the neighbourhood's
   * forecasts are in the book, so that it goes the way the slot needs, and it allows for the
   * clearings of the slots before (or, not cleared yet, their offers), so that the assets can
   * deliver it.
   */
  offerLeadSeconds?: number;
}

/**
 * The household's part in the balancing market: when a slot's window opens it sends its
 * updated forecast; shortly before the slot's gate it offers what its assets can deliver in
 * the direction the neighbourhood's expected imbalance calls for; when an offer is activated
 * it drives the assets through the slot over Modbus and lets them go afterwards.
 */
export class IntradayTrader {
  private slotSeconds = 0;
  private openLeadMs = 0;
  private gateLeadMs = 0;
  private offerLeadMs = 0;
  private floor = 0n;
  private cap = 0n;
  private readonly forecast = new Set<number>();
  private readonly offered = new Set<number>();
  /** Slots offered whose clearing the assets have not been told of yet. */
  private readonly awaitingClearing = new Set<number>();
  private active: number | undefined;
  private checked = new Set<number>();
  /** Devices a crashed agent may have left under control, not yet returned to automatic. */
  private releaseDue = false;
  /** Whether the forecasts and offers already on chain (from before a restart) were read. */
  private recovered = false;
  private stopped = false;

  constructor(private readonly o: IntradayTraderOptions) {}

  async init(): Promise<void> {
    // A crashed agent may have left devices under control. A device link that is down must
    // not keep the agent from metering: it is retried on every step until it answers.
    this.releaseDue = this.o.flexibility !== undefined;
    await this.releaseIfDue();
    const m = this.o.market;
    const [slotSeconds, open, gate, floor, cap] = await Promise.all([m.slotSeconds(), m.openLeadSeconds(), m.gateLeadSeconds(), m.priceFloor(), m.priceCap()]);
    this.slotSeconds = Number(slotSeconds);
    this.openLeadMs = Number(open) * 1000;
    this.gateLeadMs = Number(gate) * 1000;
    this.offerLeadMs = (this.o.offerLeadSeconds ?? this.slotSeconds) * 1000;
    this.floor = floor;
    this.cap = cap;
  }

  /** Slots whose balancing window is open at `nowMs`. */
  private openSlots(nowMs: number): number[] {
    const current = slotAt(nowMs, this.slotSeconds);
    const open: number[] = [];
    for (let slot = current + 1; slot <= current + 8; slot++) {
      const start = slotStartMs(slot, this.slotSeconds);
      const opens = Math.floor(start / 3_600_000) * 3_600_000 - this.openLeadMs;
      if (nowMs >= opens && nowMs < start - this.gateLeadMs) open.push(slot);
    }
    return open;
  }

  /** Whether `slot`'s offer is due at `nowMs` (at most offerLead before its gate). */
  private offerTime(slot: number, nowMs: number): boolean {
    return nowMs >= slotStartMs(slot, this.slotSeconds) - this.gateLeadMs - this.offerLeadMs;
  }

  /** Slots whose window is open at `nowMs` and whose forecast the agent has not sent yet. */
  dueSlots(nowMs: number): number[] {
    return this.openSlots(nowMs).filter((s) => !this.forecast.has(s));
  }

  /** Slots whose offer is due at `nowMs`: inside the window, at most offerLead before the gate. */
  offerSlots(nowMs: number): number[] {
    return this.openSlots(nowMs).filter((s) => !this.offered.has(s) && this.offerTime(s, nowMs));
  }

  /** The activation of the slot now running, the clearings learnt since, forecasts and offers that are due. */
  async step(nowMs: number, history: SlotHistory): Promise<void> {
    await this.releaseIfDue();
    if (!(await this.recover(nowMs))) return;
    await this.actuate(nowMs);
    const flex = this.o.flexibility;
    if (flex !== undefined) await this.learnClearings(nowMs, flex);
    const due = this.dueSlots(nowMs);
    if (due.length > 0) await this.submitForecasts(due, history);
    const offers = flex === undefined || this.stopped ? [] : this.offerSlots(nowMs);
    if (flex !== undefined && offers.length > 0) await this.offer(offers, nowMs, flex);
  }

  /** The agent is shutting down: no more offers, which nobody would be there to deliver. */
  stop(): void {
    this.stopped = true;
  }

  /** Returns devices to automatic if that is still due (they did not answer before). */
  private async releaseIfDue(): Promise<void> {
    if (!this.releaseDue) return;
    try {
      await this.o.flexibility?.release();
      this.releaseDue = false;
    } catch (e) {
      this.o.logger({ level: "warn", msg: "devices do not answer; will retry returning them to automatic", error: shortError(e) });
    }
  }

  /**
   * Once, before the first step: the household's forecasts and offers on chain for the slots
   * ahead, sent before a restart. They are not sent again, and the assets allow for the offers
   * until their clearing is known, so that a restart neither re-offers what is offered (the
   * market holds one offer per slot, which a re-offer would change) nor offers energy the
   * assets may have to deliver already.
   */
  private async recover(nowMs: number): Promise<boolean> {
    if (this.recovered) return true;
    const { market, account, flexibility: flex } = this.o;
    const current = slotAt(nowMs, this.slotSeconds);
    const slots = Array.from({ length: 8 }, (_, k) => current + 1 + k);
    try {
      const [forecasts, offers] = await Promise.all([
        Promise.all(slots.map((s) => market.forecastOf(s, account))),
        Promise.all(slots.map((s) => market.offerOf(s, account))),
      ]);
      slots.forEach((slot, k) => {
        if (forecasts[k]!.set) this.forecast.add(slot);
        const o = offers[k]!;
        if (!o.placed || o.qtyWh === 0n) return;
        this.offered.add(slot);
        if (flex !== undefined) {
          flex.noteOffer?.(slot, { slot, isUp: o.isUp, qtyWh: o.qtyWh });
          this.awaitingClearing.add(slot);
        }
      });
      this.recovered = true;
      const found = { forecasts: slots.filter((s) => this.forecast.has(s)), offers: slots.filter((s) => this.offered.has(s)) };
      if (found.forecasts.length + found.offers.length > 0) this.o.logger({ level: "info", msg: "balancing forecasts and offers on chain from before a restart", ...found });
      return true;
    } catch (e) {
      this.o.logger({ level: "warn", msg: "balancing state unreadable; will retry", error: shortError(e) });
      return false;
    }
  }

  /** Sends the forecasts of `slots` (a contiguous run) in one transaction; without history for every slot, none. */
  private async submitForecasts(slots: number[], history: SlotHistory): Promise<void> {
    const { market, account, logger } = this.o;
    try {
      const forecasts = slots.map((s) => hourAheadForecast(history, s));
      const complete = forecasts.every((f) => f !== undefined);
      const wh = forecasts.map((f) => Math.round(f ?? 0));
      if (complete) await (await market.submitForecasts(account, slots[0]!, wh)).wait();
      for (const s of slots) this.forecast.add(s);
      logger({ level: "info", msg: "balancing forecasts sent", slots, forecastsWh: complete ? wh : [] });
    } catch (e) {
      logger({ level: "warn", msg: "balancing forecasts failed; will retry", slots, error: shortError(e, market.interface) });
    }
  }

  /**
   * Offers for `slots`: what the assets can deliver, one offer per slot, in the direction
   * the slot's expected imbalance (the neighbourhood's forecasts minus schedules, in the
   * book) calls for: short (+) takes upward offers, long (-) downward ones; the other
   * direction would never be activated, and a downward offer would only tie up escrow. A slot
   * that needs a direction the assets do not offer (upOnly, downOnly) gets no offer.
   */
  private async offer(slots: number[], nowMs: number, flex: FlexibilitySource): Promise<void> {
    const { market, account, logger } = this.o;
    try {
      await flex.readState?.();
      const chosen: FlexOffer[] = [];
      const imbalancesWh: bigint[] = [];
      // In order: each slot's offer allows for those chosen before it.
      for (const s of slots) {
        const possible = flex.offersFor(s, this.slotSeconds, new Date(nowMs)).filter((x) => x.qtyWh > 0n);
        const imbalance = possible.length === 0 ? 0n : (await market.book(s)).imbalanceWh;
        imbalancesWh.push(imbalance);
        const offer = imbalance === 0n ? undefined : possible.find((x) => x.isUp === imbalance > 0n);
        flex.noteOffer?.(s, offer);
        if (offer !== undefined) chosen.push(offer);
      }
      if (chosen.length > 0) {
        const inputs = chosen.map((x) => ({ slot: x.slot, isUp: x.isUp, qtyWh: x.qtyWh, price: priceAt(this.floor, this.cap, x.isUp ? this.o.pricing.upAt : this.o.pricing.downAt) }));
        await (await market.placeOffers(account, inputs)).wait();
      }
      for (const s of slots) this.offered.add(s);
      for (const x of chosen) this.awaitingClearing.add(x.slot);
      logger({
        level: "info",
        msg: "balancing offers sent",
        slots,
        imbalancesWh,
        offers: chosen.map((x) => ({ slot: x.slot, isUp: x.isUp, qtyWh: x.qtyWh })),
      });
    } catch (e) {
      for (const s of slots) flex.noteOffer?.(s, undefined);
      logger({ level: "warn", msg: "balancing offers failed; will retry", slots, error: shortError(e, market.interface) });
    }
  }

  /** Tells the assets how offered slots whose gate has passed were cleared, before they start. */
  private async learnClearings(nowMs: number, flex: FlexibilitySource): Promise<void> {
    for (const slot of [...this.awaitingClearing].sort((a, b) => a - b)) {
      const start = slotStartMs(slot, this.slotSeconds);
      if (start <= nowMs) {
        this.awaitingClearing.delete(slot); // started: actuate() has it
        continue;
      }
      if (nowMs < start - this.gateLeadMs) continue;
      try {
        const [book, [activated]] = await Promise.all([this.o.market.book(slot), this.o.market.activationOf(slot, this.o.account)]);
        if (!book.cleared) continue; // not yet: the offer still counts as possibly activated
        flex.noteActivation?.(slot, activated);
        this.awaitingClearing.delete(slot);
      } catch (e) {
        this.o.logger({ level: "warn", msg: "balancing result unreadable; will retry", slot, error: shortError(e) });
      }
    }
  }

  private async actuate(nowMs: number): Promise<void> {
    const flex = this.o.flexibility;
    if (!flex) return;
    const current = slotAt(nowMs, this.slotSeconds);
    if (this.active !== undefined && this.active !== current) {
      try {
        await flex.release();
        this.o.logger({ level: "info", msg: "flexibility released", slot: this.active });
        this.active = undefined;
      } catch (e) {
        this.o.logger({ level: "warn", msg: "release failed; will retry", slot: this.active, error: shortError(e) });
        return;
      }
    }
    if (this.active === current) {
      try {
        await flex.track?.();
      } catch (e) {
        this.o.logger({ level: "warn", msg: "tracking failed; will retry", slot: current, error: shortError(e) });
      }
    }
    if (this.checked.has(current)) return;
    try {
      const [activated] = await this.o.market.activationOf(current, this.o.account);
      this.checked.add(current);
      if (activated === 0n) flex.noteActivation?.(current, 0n); // an offer not taken up: nothing to allow for
      if (activated !== 0n) {
        await flex.activate(current, activated);
        this.active = current;
        this.o.logger({ level: "info", msg: "flexibility activated", slot: current, activatedWh: activated });
      }
    } catch (e) {
      this.o.logger({ level: "warn", msg: "activation failed; will retry", slot: current, error: shortError(e) });
    }
    if (this.checked.size > 4 * SLOTS_PER_DAY) this.checked = new Set([current]);
    for (const set of [this.forecast, this.offered]) if (set.size > 4 * SLOTS_PER_DAY) for (const s of set) if (s < current) set.delete(s);
  }
}
