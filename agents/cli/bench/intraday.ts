/**
 * Gas of the intra-day balancing market and of settlement with schedules, on real local nodes:
 * one placeOffers of one offer in the steady state, the clearing per offer for books of 10, 100
 * and 1,000 offers, and the reading-and-billing gas per participant per slot when every
 * participant has a day-ahead schedule and some have activations, for 10, 100 and 1,000
 * participants. Gas comes from receipts' gasUsed.
 *
 * Method, per size n, on a fresh node with the Market module deployed by Ignition (its
 * DayAheadMarket and IntradayMarket are the settlement's markets): n participants (60% buyers,
 * 40% sellers) and the slack unit are registered, minted wallet tokens (every wallet non-zero
 * before any payout, so no first-time storage write distorts a figure) and given a deposit; the
 * node impersonates them, so each sends its own transactions unsigned (same gas as signed).
 * Two consecutive slots A and B of the day after tomorrow are traded day-ahead: buyers bid
 * 600 Wh at the cap, sellers offer 900 Wh at the floor, so every participant is awarded in
 * both slots. An hour ahead, a fifth of the buyers forecast 300 Wh above their schedule in A
 * and 300 Wh below in B; in A a tenth of the participants offer upward flexibility, in B every
 * participant offers (half upward, half downward), each offer its own placeOffers transaction.
 * Each slot is cleared at its gate closure (readOffers, clearBalancing, clear): A short (upward
 * activations), B long (downward ones). Then every meter reads three slots, relayed in batches
 * of 250, the master's default (submitReadings): the baseline before A, slot A (counts it), slot B (counts it and bills
 * A on the way in). The steady state per participant and slot is the gas of slot B's reading
 * transactions over n; metering.perParticipantSlot.batched is the same without schedules.
 *
 * intraday.offer.gas is the median gasUsed of the downward single-offer placements in B's book
 * at n = 1,000 (300 offers, the cap: an existing book and a market holding escrow already); the
 * upward median is logged. intraday.clear.perOffer is B's clear transaction's gasUsed over its
 * offers (n, at most 300: the book's cap).
 *
 * A size whose day-ahead clearing does not fit in one transaction under the cap (1,000 fully
 * awarded orders take about 18.8 million gas) cannot be set up on the node: that size is then
 * measured on Hardhat's in-process EDR network under Prague rules, which has no cap and the same
 * gas schedule for everything measured here (the log says so).
 *
 * Transactions are sent with automining off and mined many to a block, at block times set
 * inside each window (every block is at least a second after the one before).
 */
import { computeAddress, dataSlice, encodeBytes32String, getAddress, id, MaxUint256, SigningKey, TypedDataEncoder } from "ethers";
import { kindValue } from "../../chain/participants.js";
import { READING_TYPES, readingDomain, type Reading, type SignedReading } from "../../chain/readings.js";
import {
  DayAheadMarket__factory,
  EnergyToken__factory,
  IntradayMarket__factory,
  ParticipantRegistry__factory,
  Settlement__factory,
  type DayAheadMarket,
  type IntradayMarket,
  type Settlement,
} from "../../chain/types/index.js";
import { balancingCallFor } from "../../markets/balancingClearing.js";
import { clearingCallFor } from "../../markets/dayAheadClearing.js";
import { readOffers } from "../../markets/offerBook.js";
import { readBook } from "../../markets/orderBook.js";
import { mulberry32 } from "../../simulator/profiles.js";
import { chunk, inProcessWithoutCap, median, Node, sum, TX_GAS_CAP, type Tx } from "./node.js";
import type { BenchContext, BenchFigures, BenchMarket, BenchSection } from "./types.js";

const SIZES = [10, 100, 1000] as const;
/** IntradayMarket.MAX_BOOK_SIZE. */
const BALANCING_BOOK_MAX = 300;
const READING_BATCH = 250; // the master's default batch (agents/master/masterAgent.ts)
const DAY = 86_400;
const HOUR = 3_600;
const TOKEN = 10n ** 6n;
const WALLET_TOKENS = 1_000n * TOKEN;
const DEPOSIT = 100n * TOKEN;
const SLACK_DEPOSIT = 100_000n * TOKEN;
const TX_GAS = 500_000n;
const BUY_WH = 600n;
const SELL_WH = 900n;
const FORECAST_DEVIATION = 300;

const DA = DayAheadMarket__factory.createInterface();
const ID = IntradayMarket__factory.createInterface();
const ST = Settlement__factory.createInterface();
const TK = EnergyToken__factory.createInterface();
const RG = ParticipantRegistry__factory.createInterface();

interface Member {
  account: string;
  meterKey: SigningKey;
  meterAddress: string;
  buyer: boolean;
  importWh: bigint;
  exportWh: bigint;
}

export const intradaySection: BenchSection = {
  name: "intraday",
  async run(ctx: BenchContext): Promise<BenchFigures> {
    const figures: BenchFigures = {};
    for (const n of SIZES) {
      const started = Date.now();
      const log = (m: string): void => ctx.log(`${m} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
      let venue = await Venue.ofNode(await ctx.freshMarket());
      let r: SizeRun;
      try {
        r = await runSize(venue, n, log);
      } catch (e) {
        if (!(e instanceof DoesNotFit)) throw e;
        log(`  n=${n}: ${e.message}; measuring this size on in-process EDR under Prague rules (no transaction cap), same gas schedule otherwise`);
        venue = await Venue.inProcessWithoutCap(log);
        try {
          r = await runSize(venue, n, log);
        } finally {
          await venue.close();
        }
      }
      figures[`intraday.clear.perOffer.n${n}.gas`] = Math.round(r.clearB / Math.min(n, BALANCING_BOOK_MAX));
      figures[`settlement.withSchedule.perParticipantSlot.n${n}.gas`] = Math.round(sum(r.slotB) / n);
      if (n === 1000) figures["intraday.offer.gas"] = median(r.downOffers);
      log(
        `  n=${n}: offers down median ${median(r.downOffers).toLocaleString("en-US")} gas, up ${median(r.upOffers).toLocaleString("en-US")}; ` +
          `clear A ${r.clearA.toLocaleString("en-US")} gas, B ${r.clearB.toLocaleString("en-US")} (${Math.round(r.clearB / n).toLocaleString("en-US")}/offer); ` +
          `readings: baseline ${Math.round(sum(r.baseline) / n).toLocaleString("en-US")}/participant, slot A ${Math.round(sum(r.slotA) / n).toLocaleString("en-US")}, slot B ${Math.round(sum(r.slotB) / n).toLocaleString("en-US")}; max tx ${Math.max(...r.baseline, ...r.slotA, ...r.slotB).toLocaleString("en-US")}`,
      );
    }
    const order = ["intraday.offer.gas", ...SIZES.map((n) => `intraday.clear.perOffer.n${n}.gas`), ...SIZES.map((n) => `settlement.withSchedule.perParticipantSlot.n${n}.gas`)];
    return Object.fromEntries(order.filter((k) => k in figures).map((k) => [k, figures[k]!]));
  },
};

interface SizeRun {
  upOffers: number[];
  downOffers: number[];
  clearA: number;
  clearB: number;
  baseline: number[];
  slotA: number[];
  slotB: number[];
}

/** The figures' transaction did not fit in one transaction under the node's cap. */
class DoesNotFit extends Error {}

/** A chain with the Market module deployed, and the contracts this section uses on it. */
class Venue {
  private constructor(
    readonly node: Node,
    readonly admin: string,
    readonly chainId: bigint,
    readonly addresses: { energyToken: string; participantRegistry: string; settlement: string; dayAheadMarket: string; intradayMarket: string },
    readonly settlement: Settlement,
    readonly dayAhead: DayAheadMarket,
    readonly intraday: IntradayMarket,
    /** Whether the chain enforces EIP-7825's per-transaction cap. */
    readonly capped: boolean,
    readonly close: () => Promise<void> = async () => {},
  ) {}

  static async ofNode(bench: BenchMarket): Promise<Venue> {
    const { market } = bench;
    return new Venue(
      new Node(market.provider),
      await bench.deployer.getAddress(),
      market.chainId,
      market.addresses,
      market.settlement,
      market.dayAheadMarket,
      market.intradayMarket,
      true,
    );
  }

  /** Hardhat's in-process EDR network under Prague rules (no per-transaction cap), with the Market module. */
  static async inProcessWithoutCap(log: (m: string) => void): Promise<Venue> {
    const { provider, admin, chainId, addresses, close } = await inProcessWithoutCap(log);
    return new Venue(
      new Node(provider),
      admin,
      chainId,
      addresses,
      Settlement__factory.connect(addresses.settlement, provider),
      DayAheadMarket__factory.connect(addresses.dayAheadMarket, provider),
      IntradayMarket__factory.connect(addresses.intradayMarket, provider),
      false,
      close,
    );
  }
}

async function runSize(venue: Venue, n: number, log: (m: string) => void): Promise<SizeRun> {
  const { node, admin, addresses: a } = venue;
  const market = { provider: node.provider, chainId: venue.chainId, dayAheadMarket: venue.dayAhead, intradayMarket: venue.intraday, settlement: venue.settlement };
  const [daFloor, daCap, slotSecondsBig, daGateLead, idFloor, idCap, openLead, gateLead] = await Promise.all([
    market.dayAheadMarket.priceFloor(),
    market.dayAheadMarket.priceCap(),
    market.dayAheadMarket.slotSeconds(),
    market.dayAheadMarket.gateLeadSeconds(),
    market.intradayMarket.priceFloor(),
    market.intradayMarket.priceCap(),
    market.intradayMarket.openLeadSeconds(),
    market.intradayMarket.gateLeadSeconds(),
  ]);
  const slotSeconds = Number(slotSecondsBig);
  if ((await market.settlement.intradayMarket()) !== getAddress(a.intradayMarket)) throw new Error("the settlement does not take activations from the deployed IntradayMarket");

  // ---------------------------------------------------------------- participants
  const rnd = mulberry32(7_000 + n);
  const members: Member[] = Array.from({ length: n }, (_, i) => {
    const meterKey = new SigningKey(id(`intraday-bench/meterKey/${n}/${i}`));
    return {
      account: getAddress(dataSlice(id(`intraday-bench/account/${n}/${i}`), 12)),
      meterKey,
      meterAddress: computeAddress(meterKey.publicKey),
      buyer: i % 10 < 6,
      importWh: BigInt(Math.floor(rnd() * 5_000_000)),
      exportWh: BigInt(Math.floor(rnd() * 5_000_000)),
    };
  });
  const slack = getAddress(dataSlice(id(`intraday-bench/slack/${n}`), 12));
  log(`  n=${n}: registering, minting, depositing and approving for ${n} participants and the slack unit`);
  {
    const regs = [
      { account: slack, meterId: encodeBytes32String(`IB-slack`), meterKey: getAddress(dataSlice(id("intraday-bench/slackKey"), 12)), kind: kindValue("slackUnit") },
      ...members.map((m, i) => ({ account: m.account, meterId: encodeBytes32String(`IB-${i}`), meterKey: m.meterAddress, kind: kindValue(m.buyer ? "consumer" : "prosumer") })),
    ];
    const txs: Tx[] = chunk(regs, 100).map((batch) => ({ from: admin, to: a.participantRegistry, data: RG.encodeFunctionData("registerBatch", [batch]), gas: 15_000_000n }));
    const wallets = [slack, ...members.map((m) => m.account)];
    chunk(wallets, 100).forEach((batch, b) =>
      txs.push({ from: admin, to: a.energyToken, data: TK.encodeFunctionData("mintBatch", [id(`intraday-bench/mint/${n}/${b}`), batch, batch.map(() => WALLET_TOKENS)]), gas: 8_000_000n }),
    );
    txs.push({ from: admin, to: a.energyToken, data: TK.encodeFunctionData("mint", [admin, DEPOSIT * BigInt(n) + SLACK_DEPOSIT]), gas: 200_000n });
    txs.push({ from: admin, to: a.energyToken, data: TK.encodeFunctionData("approve", [a.settlement, MaxUint256]), gas: 200_000n });
    txs.push({ from: admin, to: a.settlement, data: ST.encodeFunctionData("depositFor", [slack, SLACK_DEPOSIT]), gas: 300_000n });
    for (const m of members) txs.push({ from: admin, to: a.settlement, data: ST.encodeFunctionData("depositFor", [m.account, DEPOSIT]), gas: 300_000n });
    await node.transact(txs);
    await Promise.all(members.map((m) => node.impersonate(m.account)));
    await node.transact(
      members.flatMap((m) => [
        { from: m.account, to: a.energyToken, data: TK.encodeFunctionData("approve", [a.dayAheadMarket, MaxUint256]), gas: 100_000n },
        { from: m.account, to: a.energyToken, data: TK.encodeFunctionData("approve", [a.intradayMarket, MaxUint256]), gas: 100_000n },
      ]),
    );
  }

  // ---------------------------------------------------------------- day-ahead: everyone trades in A and B
  const now = await node.latestTimestamp();
  const day = Math.floor(now / DAY) + 2;
  const slotA = (day * DAY) / slotSeconds + 40; // 10:00
  const slotB = slotA + 1;
  const dayAheadGate = day * DAY - Number(daGateLead);
  const fromBlock = await market.provider.getBlockNumber();
  await node.transact(
    members.map((m) => ({
      from: m.account,
      to: a.dayAheadMarket,
      data: DA.encodeFunctionData("placeOrders", [
        [slotA, slotB].map((slot) => (m.buyer ? { slot, isSell: false, qtyWh: BUY_WH, price: daCap } : { slot, isSell: true, qtyWh: SELL_WH, price: daFloor })),
      ]),
      gas: TX_GAS,
    })),
  );
  await node.setTimeAndMine(dayAheadGate + 1);
  for (const slot of [slotA, slotB]) {
    const clearing = clearingCallFor(slot, await readBook(market.dayAheadMarket, slot, fromBlock));
    const tx = { from: admin, to: a.dayAheadMarket, data: DA.encodeFunctionData("clear", [clearing]) };
    const limit = await node.gasLimitFor(tx);
    if (limit === undefined || (venue.capped && limit > BigInt(TX_GAS_CAP))) throw new DoesNotFit(`the day-ahead clearing of ${n} fully awarded orders does not fit in one transaction (2^24 gas)`);
    const [gas] = await node.transact([{ ...tx, gas: limit }]);
    const scheduled = clearing.buyAwardsWh.filter((w) => w > 0n).length + clearing.sellAwardsWh.filter((w) => w > 0n).length;
    if (scheduled !== n) throw new Error(`day-ahead slot ${slot}: ${scheduled} of ${n} participants scheduled`);
    log(`    day-ahead slot ${slot}: ${clearing.volumeWh} Wh at ${clearing.price}, every participant scheduled (clear ${gas!.toLocaleString("en-US")} gas)`);
  }

  // ---------------------------------------------------------------- intra-day: forecasts, offers, clearing
  const startA = slotA * slotSeconds;
  const opensAt = Math.floor(startA / HOUR) * HOUR - Number(openLead);
  const closes = (slot: number) => slot * slotSeconds - Number(gateLead);
  const price = (lo: bigint, hi: bigint) => lo + BigInt(Math.floor(rnd() * Number(hi - lo + 1n)));
  await node.setTimeAndMine(opensAt + 1);
  const forecasters = members.filter((_, i) => i % 10 < 2);
  await node.transact(
    forecasters.map((m) => ({
      from: m.account,
      to: a.intradayMarket,
      data: ID.encodeFunctionData("submitForecasts", [m.account, slotA, [Number(BUY_WH) + FORECAST_DEVIATION, Number(BUY_WH) - FORECAST_DEVIATION]]),
      gas: TX_GAS,
    })),
  );
  const offersA = members.filter((_, i) => i % 10 === 6).map((m) => ({ from: m.account, to: a.intradayMarket, data: ID.encodeFunctionData("placeOffers", [m.account, [{ slot: slotA, isUp: true, qtyWh: 800n, price: price(idFloor, idCap) }]]), gas: TX_GAS }));
  await node.transact(offersA);
  const upB = members.map((_, i) => i % 2 === 0);
  // A balancing book takes at most MAX_BOOK_SIZE (300) offers: with more participants, the first 300 offer.
  const offersB = members.slice(0, BALANCING_BOOK_MAX).map((m, i) => ({
    from: m.account,
    to: a.intradayMarket,
    data: ID.encodeFunctionData("placeOffers", [m.account, [{ slot: slotB, isUp: upB[i]!, qtyWh: 200n, price: price(idFloor, idCap) }]]),
    gas: TX_GAS,
  }));
  const offerGas = await node.transact(offersB);
  const upOffers = offerGas.filter((_, i) => i > 1 && upB[i]);
  const downOffers = offerGas.filter((_, i) => i > 1 && !upB[i]);

  const clear = async (slot: number): Promise<number> => {
    const book = await market.intradayMarket.book(slot);
    const offers = await readOffers(market.intradayMarket, slot, fromBlock);
    if (offers.length !== Number(book.size)) throw new Error(`balancing slot ${slot}: read ${offers.length} offers, the book holds ${book.size}`);
    const call = balancingCallFor(slot, book.imbalanceWh, offers);
    const [gas] = await node.transact([{ from: admin, to: a.intradayMarket, data: ID.encodeFunctionData("clear", [call]), gas: BigInt(TX_GAS_CAP) }]);
    const activated = [...call.upActivationsWh, ...call.downActivationsWh].filter((w) => w > 0n).length;
    log(`    balancing slot ${slot}: imbalance ${book.imbalanceWh} Wh, ${activated}/${offers.length} offers activated for ${call.volumeWh} Wh at ${call.price}; clear ${gas!.toLocaleString("en-US")} gas`);
    if (call.volumeWh === 0n) throw new Error(`balancing slot ${slot} activated nothing`);
    return gas!;
  };
  await node.setTimeAndMine(closes(slotA) + 1);
  const clearA = await clear(slotA);

  // ---------------------------------------------------------------- readings
  const settlementAddress = a.settlement;
  const domain = readingDomain(market.chainId, settlementAddress);
  const activation = async (slot: number) =>
    new Map(await Promise.all(members.map(async (m) => [m.account, (await market.intradayMarket.activationOf(slot, m.account))[0]] as const)));
  const readings = async (slot: number, at: number): Promise<number[]> => {
    const signed: SignedReading[] = members.map((m) => {
      const reading: Reading = { account: m.account, slot, importWh: m.importWh, exportWh: m.exportWh };
      const sig = m.meterKey.sign(TypedDataEncoder.hash(domain, READING_TYPES, reading));
      return { reading, r: sig.r, vs: sig.yParityAndS };
    });
    const txs = chunk(signed, READING_BATCH).map((batch) => ({ from: admin, to: settlementAddress, data: ST.encodeFunctionData("submitReadings", [batch]), gas: BigInt(TX_GAS_CAP) }));
    return node.transact(txs, at);
  };
  /** One slot of energy: the schedule and activation, with some noise; forecasters deviate as they said. */
  const deliver = async (slot: number, deviation: number) => {
    const acts = await activation(slot);
    members.forEach((m, i) => {
      const scheduled = m.buyer ? Number(BUY_WH) : -Number(SELL_WH);
      const net = scheduled + Number(acts.get(m.account) ?? 0n) + (i % 10 < 2 ? deviation : 0) + Math.floor(rnd() * 61) - 30;
      if (net >= 0) {
        m.importWh += BigInt(net);
        m.exportWh += BigInt(Math.floor(rnd() * 20));
      } else {
        m.exportWh += BigInt(-net);
        m.importWh += BigInt(Math.floor(rnd() * 20));
      }
    });
  };

  // The baseline of the slot before A, in its reading window (from A's start); B is in its clearing window then.
  const baseline = await readings(slotA - 1, startA + 1);
  const clearB = await clear(slotB);
  await deliver(slotA, FORECAST_DEVIATION);
  const atA = await readings(slotA, (slotA + 1) * slotSeconds + 1);
  await deliver(slotB, -FORECAST_DEVIATION);
  const atB = await readings(slotB, (slotB + 1) * slotSeconds + 1);
  const s = await market.settlement.slotState(slotA);
  if (Number(s.readings) !== n || Number(s.billed) !== n || !s.closed) {
    throw new Error(`slot A (${slotA}) has ${s.readings} readings, ${s.billed} billed, closed=${s.closed}; expected ${n}, ${n}, true`);
  }
  if (s.upWh === 0n) throw new Error(`slot A (${slotA}) took no activation into settlement`);
  return { upOffers, downOffers, clearA, clearB, baseline, slotA: atA, slotB: atB };
}
