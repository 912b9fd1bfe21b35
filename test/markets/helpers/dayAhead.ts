import type { HardhatEthers, HardhatEthersSigner } from "@nomicfoundation/hardhat-ethers/types";
import type { NetworkHelpers } from "@nomicfoundation/hardhat-network-helpers/types";
import { expect } from "chai";
import { MaxUint256, ZeroAddress, type ContractTransactionReceipt, type Interface, type LogDescription } from "ethers";
import type { DayAheadMarket, IntradayMarket } from "../../../agents/chain/types/index.js";
import { escrowOf } from "../../../agents/markets/dayAheadClearing.js";
import { deployMarket, FEED_IN, RETAIL, type Market, type MarketOptions } from "../../contracts/helpers/market.js";

/**
 * A day-ahead market on top of the contract tests' market (token, registry, settlement with
 * named participants): DayAheadMarket deployed with the settlement as its schedule sink and
 * source, every participant approving it, and the clock arithmetic of its gates.
 */

export const DAY = 86_400n;
export const SLOT_SECONDS = 900n;
/** Orders for day D close at 12:00 UTC on D-1. */
export const GATE_LEAD = 43_200n;
export const SLOTS_PER_DAY = DAY / SLOT_SECONDS;
/** The price bounds: the slack unit's feed-in and retail prices. */
export const FLOOR = FEED_IN;
export const CAP = RETAIL;

export interface DayAheadOptions extends MarketOptions {
  floor?: bigint;
  cap?: bigint;
  /** Participants that do not approve the market (default: all approve an unlimited amount). */
  noApproval?: string[];
}

export class DayAhead {
  constructor(
    readonly market: Market,
    readonly dayAhead: DayAheadMarket,
    readonly address: string,
  ) {}

  get ethers(): HardhatEthers {
    return this.market.ethers;
  }

  get helpers(): NetworkHelpers {
    return this.market.helpers;
  }

  get token() {
    return this.market.token;
  }

  get settlement() {
    return this.market.settlement;
  }

  /** The first slot of a day whose gate is still at least half a day ahead. */
  async freshDay(daysAhead = 2n): Promise<bigint> {
    const now = BigInt(await this.helpers.time.latest());
    return (now / DAY + daysAhead) * SLOTS_PER_DAY;
  }

  /** When orders for `slot` close (12:00 UTC the day before its day). */
  gate(slot: bigint): bigint {
    return ((slot * SLOT_SECONDS) / DAY) * DAY - GATE_LEAD;
  }

  starts(slot: bigint): bigint {
    return slot * SLOT_SECONDS;
  }

  /** Makes the next block's timestamp `t`. */
  async at(t: bigint): Promise<void> {
    await this.market.at(t);
  }

  /** The next block is the first after `slot`'s gate (clearing allowed). */
  async afterGate(slot: bigint, offset = 0n): Promise<void> {
    await this.at(this.gate(slot) + offset);
  }

  /** Places `qtyWh` at `price` for `who` in `slot`. */
  place(who: string | HardhatEthersSigner, slot: bigint, isSell: boolean, qtyWh: bigint, price: bigint) {
    return this.dayAhead.connect(this.signer(who)).placeOrder({ slot, isSell, qtyWh, price });
  }

  signer(who: string | HardhatEthersSigner): HardhatEthersSigner {
    return typeof who === "string" ? this.market.p(who).signer : who;
  }

  /** token.balanceOf(market) == totalEscrow == `expected` (the sum of open escrows, computed by the test). */
  async expectEscrow(expected: bigint, where = ""): Promise<void> {
    const [balance, total] = await Promise.all([this.token.balanceOf(this.address), this.dayAhead.totalEscrow()]);
    expect([balance, total], `${where} balanceOf(market), totalEscrow`).to.deep.equal([expected, expected]);
  }

  /** Sum of the open escrows of `accounts` in `slots`, from orderOf (buys of uncleared slots). */
  async openEscrow(slots: bigint[], accounts: string[]): Promise<bigint> {
    let sum = 0n;
    for (const slot of slots) {
      if ((await this.dayAhead.book(slot)).cleared) continue;
      for (const a of accounts) {
        const o = await this.dayAhead.orderOf(slot, a);
        if (o.placed && !o.isSell) sum += escrowOf(o.qtyWh, o.price);
      }
    }
    return sum;
  }
}

/** Deploys the market of `options` and a DayAheadMarket on it; the settlement takes its schedules from it. */
export async function deployDayAhead(ethers: HardhatEthers, helpers: NetworkHelpers, options: DayAheadOptions): Promise<DayAhead> {
  const market = await deployMarket(ethers, helpers, options);
  const dayAhead: DayAheadMarket = await ethers.deployContract("DayAheadMarket", [
    await market.token.getAddress(),
    await market.registry.getAddress(),
    market.settlementAddress,
    market.admin.address,
    SLOT_SECONDS,
    GATE_LEAD,
    options.floor ?? FLOOR,
    options.cap ?? CAP,
  ]);
  const address = await dayAhead.getAddress();
  await connectToSettlement(market, address);
  for (const spec of options.participants) {
    if (options.noApproval?.includes(spec.name)) continue;
    await market.token.connect(market.p(spec.name).signer).approve(address, MaxUint256);
  }
  return new DayAhead(market, dayAhead, address);
}

/**
 * Makes `dayAhead` the settlement's day-ahead market (its schedule source, with MARKET_ROLE to pay
 * schedules into slots' pools): setScheduleSource(dayAhead), or setMarkets(dayAhead, no intraday
 * market) where the settlement has that instead.
 */
async function connectToSettlement(market: Market, dayAhead: string): Promise<void> {
  const settlement = market.settlement.connect(market.admin);
  const fragment = (settlement.interface as Interface).getFunction("setMarkets(address,address)");
  if (fragment !== null) await settlement.getFunction("setMarkets(address,address)")(dayAhead, ZeroAddress);
  else await settlement.getFunction("setScheduleSource(address)")(dayAhead);
}

export interface IntradayParams {
  slotSeconds: bigint;
  /** A slot's balancing window opens this long before the start of its hour. */
  openLead: bigint;
  /** ...and closes this long before the slot starts. */
  gateLead: bigint;
  floor: bigint;
  cap: bigint;
}

/**
 * Deploys an IntradayMarket on `da` and wires it as the Ignition module does: BALANCING_ROLE on
 * the day-ahead market (its activations join the day-ahead schedules, which settlement reads),
 * and setMarkets(dayAhead, intraday) on the settlement (MARKET_ROLE, to pay into slots' pools).
 */
export async function deployIntraday(da: DayAhead, params: IntradayParams): Promise<{ intraday: IntradayMarket; address: string }> {
  const { market } = da;
  const intraday: IntradayMarket = await da.ethers.deployContract("IntradayMarket", [
    await market.token.getAddress(),
    await market.registry.getAddress(),
    da.address,
    market.settlementAddress,
    market.admin.address,
    params.slotSeconds,
    params.openLead,
    params.gateLead,
    params.floor,
    params.cap,
  ]);
  const address = await intraday.getAddress();
  await da.dayAhead.connect(market.admin).grantRole(await da.dayAhead.BALANCING_ROLE(), address);
  await market.settlement.connect(market.admin).setMarkets(da.address, address);
  return { intraday, address };
}

/** Events named `name` that `contract` (at `address`) emitted in `receipt`. */
export function eventsOf(receipt: ContractTransactionReceipt | null, iface: Interface, address: string, name: string): LogDescription[] {
  if (receipt === null) throw new Error("no receipt");
  const out: LogDescription[] = [];
  for (const log of receipt.logs) {
    if (log.address.toLowerCase() !== address.toLowerCase()) continue;
    const parsed = iface.parseLog(log);
    if (parsed !== null && parsed.name === name) out.push(parsed);
  }
  return out;
}

/** The custom error (name and arguments) in a call's revert, or throws what is not one of `iface`'s. */
export function decodeRevert(e: unknown, iface: Interface): { name: string; args: unknown[] } {
  const data = findRevertData(e);
  if (data === undefined) throw e;
  const parsed = iface.parseError(data);
  if (parsed === null) throw new Error(`revert data ${data} is not an error of the interface`, { cause: e });
  return { name: parsed.name, args: [...parsed.args] };
}

function findRevertData(e: unknown): string | undefined {
  let cur: unknown = e;
  for (let depth = 0; depth < 6 && cur !== null && typeof cur === "object"; depth++) {
    const data = (cur as { data?: unknown }).data;
    if (typeof data === "string" && data.startsWith("0x") && data.length >= 10) return data;
    cur = (cur as { cause?: unknown; error?: unknown }).error ?? (cur as { cause?: unknown }).cause;
  }
  return undefined;
}
