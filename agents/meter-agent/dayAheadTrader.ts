import type { DayAheadMarket } from "../chain/types/index.js";
import type { Logger } from "../log.js";

/** Net energy per slot, as the agent metered it: slot number → Wh (+ import, - export). */
export type SlotHistory = Record<string, number>;

/** How a household prices its day-ahead orders, as fractions of the regulator's band [floor, cap]. */
export interface PriceStrategy {
  /** A buy's limit: floor + buyAt × (cap − floor). Higher: more likely to be filled, at worst a higher price. */
  buyAt: number;
  /** A sell's limit: floor + sellAt × (cap − floor). Lower: more likely to be filled. */
  sellAt: number;
  /** Share of the forecast surplus offered, to keep a margin for forecast error (0..1). */
  sellShare: number;
  /** Forecasts smaller than this (Wh) are not worth an order. */
  minOrderWh: number;
}

export const DEFAULT_STRATEGY: PriceStrategy = { buyAt: 0.6, sellAt: 0.3, sellShare: 0.9, minOrderWh: 20 };

export const SLOTS_PER_DAY = 96;

/**
 * Tomorrow's net energy per slot from the household's own metered history: the mean of the
 * same slot on up to `days` recent days ("same slot on recent days" persistence forecast,
 * hard to beat a day ahead for a single household). Slots without history are undefined.
 */
export function forecastDay(history: SlotHistory, firstSlot: number, days = 7, slotsPerDay = SLOTS_PER_DAY): Array<number | undefined> {
  return Array.from({ length: slotsPerDay }, (_, k) => forecastSlot(history, firstSlot + k, days, slotsPerDay));
}

/** One slot of `forecastDay`: the mean of the same slot on up to `days` recent days. */
export function forecastSlot(history: SlotHistory, slot: number, days = 7, slotsPerDay = SLOTS_PER_DAY): number | undefined {
  const seen: number[] = [];
  for (let d = 1; d <= days; d++) {
    const v = history[String(slot - d * slotsPerDay)];
    if (v !== undefined) seen.push(v);
  }
  return seen.length === 0 ? undefined : seen.reduce((a, b) => a + b, 0) / seen.length;
}

export interface OrderInput {
  slot: number;
  isSell: boolean;
  qtyWh: bigint;
  price: bigint;
}

/** The price at `fraction` (clamped to 0..1) of the band [floor, cap], to a millionth of the band. */
export function priceAt(floor: bigint, cap: bigint, fraction: number): bigint {
  return floor + (BigInt(Math.round(Math.min(1, Math.max(0, fraction)) * 1e6)) * (cap - floor)) / 1_000_000n;
}

/** The orders a forecast and a strategy make, within the market's price band. */
export function ordersFromForecast(
  forecast: ReadonlyArray<number | undefined>,
  firstSlot: number,
  strategy: PriceStrategy,
  floor: bigint,
  cap: bigint,
): OrderInput[] {
  const orders: OrderInput[] = [];
  forecast.forEach((wh, k) => {
    if (wh === undefined) return;
    if (wh >= strategy.minOrderWh) {
      orders.push({ slot: firstSlot + k, isSell: false, qtyWh: BigInt(Math.round(wh)), price: priceAt(floor, cap, strategy.buyAt) });
    } else if (-wh * strategy.sellShare >= strategy.minOrderWh) {
      orders.push({ slot: firstSlot + k, isSell: true, qtyWh: BigInt(Math.round(-wh * strategy.sellShare)), price: priceAt(floor, cap, strategy.sellAt) });
    }
  });
  return orders;
}

export interface DayAheadTraderOptions {
  account: string;
  /** DayAheadMarket connected with the meter key (it places orders for the account). */
  market: DayAheadMarket;
  strategy: PriceStrategy;
  /** How long before gate closure the agent trades (ms): late enough to use fresh history. */
  tradeLeadMs: number;
  logger: Logger;
}

/**
 * The household's day-ahead trading: once a day, shortly before gate closure, it forecasts
 * tomorrow from its own history and places all of tomorrow's orders in one transaction.
 * The market holds one order per household and slot, so nothing is ever ordered twice; and
 * orders already on chain (a retry after a crash) are left alone unless the forecast changed
 * them, so that a retry sends only the changes, or nothing.
 */
export class DayAheadTrader {
  private floor = 0n;
  private cap = 0n;
  private gateLeadMs = 0;
  private slotSeconds = 0;

  constructor(private readonly o: DayAheadTraderOptions) {}

  async init(): Promise<void> {
    const m = this.o.market;
    const [floor, cap, lead, slotSeconds] = await Promise.all([m.priceFloor(), m.priceCap(), m.gateLeadSeconds(), m.slotSeconds()]);
    this.floor = floor;
    this.cap = cap;
    this.gateLeadMs = Number(lead) * 1000;
    this.slotSeconds = Number(slotSeconds);
  }

  /** The first slot of the day whose orders should be placed at `nowMs`, or undefined if none is due. */
  dueDay(nowMs: number, tradedFirstSlot: number | undefined): number | undefined {
    const dayMs = 86_400_000;
    const tomorrow = (Math.floor(nowMs / dayMs) + 1) * dayMs;
    const gate = tomorrow - this.gateLeadMs;
    if (nowMs >= gate || nowMs < gate - this.o.tradeLeadMs) return undefined;
    const firstSlot = tomorrow / 1000 / this.slotSeconds;
    return tradedFirstSlot === firstSlot ? undefined : firstSlot;
  }

  /** Forecasts and places the day's orders; returns how many were placed or changed. */
  async trade(firstSlot: number, history: SlotHistory): Promise<number> {
    const forecast = forecastDay(history, firstSlot);
    const wanted = ordersFromForecast(forecast, firstSlot, this.o.strategy, this.floor, this.cap);
    if (wanted.length === 0) {
      this.o.logger({ level: "info", msg: "no day-ahead orders: no history to forecast from yet", firstSlot });
      return 0;
    }
    const orders = await this.notOnChain(wanted);
    if (orders.length === 0) {
      this.o.logger({ level: "info", msg: "day-ahead orders already on chain", firstSlot, orders: wanted.length });
      return 0;
    }
    const tx = await this.o.market.placeOrdersFor(this.o.account, orders);
    const receipt = await tx.wait();
    const buys = orders.filter((x) => !x.isSell).length;
    this.o.logger({ level: "info", msg: "day-ahead orders placed", firstSlot, buys, sells: orders.length - buys, gas: receipt?.gasUsed });
    return orders.length;
  }

  /**
   * The orders that differ from the household's orders on chain. An order on chain keeps its
   * side: the contract refuses a side change, and only the account itself may cancel.
   */
  private async notOnChain(wanted: OrderInput[]): Promise<OrderInput[]> {
    const { market, account } = this.o;
    const placed = await Promise.all(wanted.map((x) => market.orderOf(x.slot, account)));
    return wanted.filter((x, i) => {
      const p = placed[i]!;
      if (!p.placed || p.qtyWh === 0n) return true;
      return p.isSell === x.isSell && (p.qtyWh !== x.qtyWh || p.price !== x.price);
    });
  }
}
