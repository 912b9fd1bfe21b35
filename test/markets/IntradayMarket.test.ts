import { expect } from "chai";
import { network } from "hardhat";
import { dataSlice, encodeBytes32String, getAddress, id, MaxUint256, Wallet, ZeroAddress, type ContractTransactionReceipt, type Signer } from "ethers";
import type { IntradayMarket } from "../../agents/chain/types/index.js";
import {
  BalancingInputError,
  balancingCallFor,
  clearBalancing,
  downCostOf,
  downEscrowOf,
  upPaymentOf,
  type BalancingClearingCall,
  type BalancingOffer,
} from "../../agents/markets/balancingClearing.js";
import { clearingCallFor } from "../../agents/markets/dayAheadClearing.js";
import { OfferBookError, readOffers } from "../../agents/markets/offerBook.js";
import { readBook } from "../../agents/markets/orderBook.js";
import { ceilDiv, Kind } from "../contracts/helpers/market.js";
import { signReading } from "../contracts/helpers/readings.js";
import { CAP, type DayAhead, deployDayAhead, deployIntraday, eventsOf, FLOOR } from "./helpers/dayAhead.js";

/**
 * IntradayMarket: deployment and bounds, forecasts (forecast minus the day-ahead schedule, a real
 * day-ahead award included), offers and their escrow, the agent rule (the account or its meter
 * key), every custom error, clearing (short and long systems, partial marginal activation, ties
 * by book index, no offers, zero imbalance, cancelled offers, refunds, the downward cost paid
 * into the settlement pool), activationOf and slotResult, cancelOffer after an uncleared slot
 * started, readOffers, and one slot settled end to end with activations. Plus the reference
 * clearing on hand-worked books.
 */

const { ethers, networkHelpers } = await network.create();

const UP = true;
const DOWN = false;
const SLOT_SECONDS = 900n;
const OPEN_LEAD = 3_600n;
const GATE_LEAD = 900n;
const HOUR = 3_600n;

/** Consumers alice, dave; prosumer bob; storage carol, erin; flexible load frank; sam (to be suspended); noapp (never approves); the slack unit. */
async function deploy() {
  const da = await deployDayAhead(ethers, networkHelpers, {
    participants: [
      { name: "alice", kind: Kind.Consumer },
      { name: "bob", kind: Kind.Prosumer },
      { name: "carol", kind: Kind.Storage },
      { name: "dave", kind: Kind.Consumer },
      { name: "erin", kind: Kind.Storage },
      { name: "frank", kind: Kind.FlexibleLoad },
      { name: "sam", kind: Kind.Consumer },
      { name: "noapp", kind: Kind.Consumer },
      { name: "slack", kind: Kind.SlackUnit },
    ],
  });
  const { market } = da;
  const { intraday, address } = await deployIntraday(da, { slotSeconds: SLOT_SECONDS, openLead: OPEN_LEAD, gateLead: GATE_LEAD, floor: FLOOR, cap: CAP });
  for (const p of market.participants.values()) {
    if (p.name !== "noapp") await market.token.connect(p.signer).approve(address, MaxUint256);
  }
  return { da, intraday, address };
}

async function fixture() {
  const { da, intraday, address } = await networkHelpers.loadFixture(deploy);
  // 10:00 UTC on a day whose day-ahead gate (12:00 the day before) is still ahead.
  const slot = (await da.freshDay()) + 40n;
  const m = da.market;
  const a = (name: string) => m.p(name).address;
  const s = (name: string) => m.p(name).signer;
  const opens = (k: bigint) => ((k * SLOT_SECONDS) / HOUR) * HOUR - OPEN_LEAD;
  const closes = (k: bigint) => k * SLOT_SECONDS - GATE_LEAD;
  const starts = (k: bigint) => k * SLOT_SECONDS;
  const place = (who: string, k: bigint, isUp: boolean, qtyWh: bigint, price: bigint) =>
    intraday.connect(s(who)).placeOffers(a(who), [{ slot: k, isUp, qtyWh, price }]);
  const forecast = (who: string, k: bigint, nets: bigint[]) => intraday.connect(s(who)).submitForecasts(a(who), k, nets);
  const cancel = (who: string, k: bigint) => intraday.connect(s(who)).cancelOffer(a(who), k);
  /** token.balanceOf(market) == totalEscrow == `expected`. */
  const expectEscrow = async (expected: bigint, where = "") => {
    const [balance, total] = await Promise.all([m.token.balanceOf(address), intraday.totalEscrow()]);
    expect([balance, total], `${where} balanceOf(intraday), totalEscrow`).to.deep.equal([expected, expected]);
  };
  /** The reference clearing of `k` from the chain's book and imbalance. */
  const clearingOf = async (k: bigint): Promise<BalancingClearingCall> =>
    balancingCallFor(k, (await intraday.book(k)).imbalanceWh, await readOffers(intraday, k));
  /** Into the balancing window of `k` (and of the other slots of its hour). */
  const inWindow = (k: bigint, offset = 0n) => da.at(opens(k) + offset);
  /** Into the clearing window of `k`. */
  const inClearing = (k: bigint, offset = 0n) => da.at(closes(k) + offset);
  return { da, m, intraday, address, slot, a, s, opens, closes, starts, place, forecast, cancel, expectEscrow, clearingOf, inWindow, inClearing };
}

function copy(c: BalancingClearingCall): BalancingClearingCall {
  return { ...c, ups: [...c.ups], downs: [...c.downs], upActivationsWh: [...c.upActivationsWh], downActivationsWh: [...c.downActivationsWh] };
}

function activationEvents(receipt: ContractTransactionReceipt | null, intraday: IntradayMarket, address: string) {
  return eventsOf(receipt, intraday.interface, address, "OfferActivated").map((e) => [e.args.account, e.args.isUp, e.args.activatedWh, e.args.refund]);
}

/** `n` registered storage owners (impersonated), each minted 1,000 tokens and approving `spenders`. */
async function crowd(fx: Awaited<ReturnType<typeof fixture>>, n: number, label: string, spenders: string[]): Promise<{ account: string; signer: Signer }[]> {
  const { m } = fx;
  const accounts = Array.from({ length: n }, (_, i) => getAddress(dataSlice(id(`intraday-test/${label}/account/${i}`), 12)));
  for (let i = 0; i < n; i += 100) {
    const part = accounts.slice(i, i + 100);
    await m.registry.connect(m.admin).registerBatch(
      part.map((account, k) => ({ account, meterId: encodeBytes32String(`MTR-${label}-${i + k}`), meterKey: new Wallet(id(`intraday-test/${label}/meter/${i + k}`)).address, kind: Kind.Storage })),
    );
    await m.token.connect(m.admin).mintBatch(id(`intraday-test/${label}/mint/${i}`), part, part.map(() => 10n ** 9n));
  }
  const out = [];
  for (const account of accounts) {
    await networkHelpers.impersonateAccount(account);
    await networkHelpers.setBalance(account, 10n ** 20n);
    const signer = await ethers.getSigner(account);
    for (const spender of spenders) await m.token.connect(signer).approve(spender, MaxUint256);
    out.push({ account, signer });
  }
  return out;
}

/** Fills `fx.slot`'s balancing book: MAX_BOOK_SIZE downward offers of 100 Wh at distinct limits, in its window. */
async function fillBook(fx: Awaited<ReturnType<typeof fixture>>) {
  const { intraday, address, slot, inWindow } = fx;
  const max = Number(await intraday.MAX_BOOK_SIZE());
  expect(max).to.equal(300);
  const people = await crowd(fx, max, "full", [address]);
  await inWindow(slot);
  let escrow = 0n;
  const out = [];
  for (const [i, p] of people.entries()) {
    const price = FLOOR + ((BigInt(i) * 7_919n) % (CAP - FLOOR));
    await intraday.connect(p.signer).placeOffers(p.account, [{ slot, isUp: DOWN, qtyWh: 100n, price }]);
    escrow += downEscrowOf(100n, price);
    out.push({ ...p, price });
  }
  return { people: out, escrow };
}

describe("IntradayMarket", () => {
  describe("deployment and bounds", () => {
    it("refuses zero addresses and bad price bounds", async () => {
      const { da, m } = await fixture();
      const factory = await ethers.getContractFactory("IntradayMarket");
      const good = [await m.token.getAddress(), await m.registry.getAddress(), da.address, m.settlementAddress, m.admin.address] as const;
      for (let k = 0; k < good.length; k++) {
        const args = [...good];
        args[k] = ZeroAddress;
        await expect(factory.deploy(...(args as [string, string, string, string, string]), SLOT_SECONDS, OPEN_LEAD, GATE_LEAD, FLOOR, CAP)).to.be.revertedWithCustomError(
          factory,
          "BalancingZeroAddress",
        );
      }
      for (const [floor, cap] of [
        [0n, CAP],
        [CAP + 1n, CAP],
        [FLOOR, 2n ** 48n],
      ] as const) {
        await expect(factory.deploy(...good, SLOT_SECONDS, OPEN_LEAD, GATE_LEAD, floor, cap))
          .to.be.revertedWithCustomError(factory, "BalancingBadBounds")
          .withArgs(floor, cap);
      }
    });

    it("lets only the regulator set the bounds, within 0 < floor <= cap < 2^48", async () => {
      const { intraday, m, s } = await fixture();
      const admin = intraday.connect(m.admin);
      await expect(admin.setBounds(10n, 10n)).to.emit(intraday, "BoundsSet").withArgs(10n, 10n);
      expect([await intraday.priceFloor(), await intraday.priceCap()]).to.deep.equal([10n, 10n]);
      await expect(admin.setBounds(11n, 10n)).to.be.revertedWithCustomError(intraday, "BalancingBadBounds").withArgs(11n, 10n);
      await expect(admin.setBounds(0n, 10n)).to.be.revertedWithCustomError(intraday, "BalancingBadBounds").withArgs(0n, 10n);
      await expect(admin.setBounds(1n, 2n ** 48n)).to.be.revertedWithCustomError(intraday, "BalancingBadBounds").withArgs(1n, 2n ** 48n);
      await expect(intraday.connect(s("alice")).setBounds(1n, 2n)).to.be.revertedWithCustomError(intraday, "AccessControlUnauthorizedAccount");
    });

    it("opens a slot's window an hour before its hour and closes it 15 minutes before the slot", async () => {
      const { intraday, slot } = await fixture();
      const hour = slot * SLOT_SECONDS; // 10:00
      for (const k of [0n, 1n, 2n, 3n]) {
        expect(await intraday.window(slot + k)).to.deep.equal([hour - 3_600n, hour + k * 900n - 900n]);
      }
      expect(await intraday.window(slot + 4n)).to.deep.equal([hour, hour + 2_700n]);
      expect(await intraday.window(slot - 1n)).to.deep.equal([hour - 7_200n, hour - 1_800n]);
    });

    it("is the settlement's balancing source, with MARKET_ROLE, and may add activations to day-ahead schedules (BALANCING_ROLE)", async () => {
      const { m, address, da } = await fixture();
      expect(await m.settlement.intradayMarket()).to.equal(address);
      expect(await m.settlement.dayAheadMarket()).to.equal(da.address);
      expect(await m.settlement.hasRole(await m.settlement.MARKET_ROLE(), address)).to.equal(true);
      const BALANCING_ROLE = await da.dayAhead.BALANCING_ROLE();
      expect(await da.dayAhead.hasRole(BALANCING_ROLE, address)).to.equal(true);
      // Nobody else may write activations into schedules.
      await expect(da.dayAhead.connect(m.outsider).recordActivations(1n, [m.outsider.address], [1n]))
        .to.be.revertedWithCustomError(da.dayAhead, "AccessControlUnauthorizedAccount")
        .withArgs(m.outsider.address, BALANCING_ROLE);
    });
  });

  describe("forecasts", () => {
    it("sets the expected imbalance as forecast minus the day-ahead schedule (a real award); a re-submission replaces", async () => {
      const { da, intraday, slot, a, forecast, inWindow } = await fixture();
      // Day-ahead: alice buys 1,000 Wh from bob at the midpoint 150,000.
      await da.place("alice", slot, false, 1_000n, 200_000n);
      await da.place("bob", slot, true, 1_000n, 100_000n);
      await da.afterGate(slot);
      await da.dayAhead.clear(clearingCallFor(slot, await readBook(da.dayAhead, slot)));
      expect(await da.dayAhead.scheduleOf(slot, a("alice"))).to.deep.equal([1_000n, 150_000n, 0n]);
      expect(await da.dayAhead.scheduleOf(slot, a("bob"))).to.deep.equal([-1_000n, 150_000n, 0n]);

      await inWindow(slot);
      await expect(forecast("alice", slot, [1_600n])).to.emit(intraday, "ForecastSubmitted").withArgs(a("alice"), slot, 1_600n, 600n);
      await expect(forecast("bob", slot, [-800n])).to.emit(intraday, "ForecastSubmitted").withArgs(a("bob"), slot, -800n, 200n);
      await expect(forecast("carol", slot, [-300n])).to.emit(intraday, "ForecastSubmitted").withArgs(a("carol"), slot, -300n, -300n);
      expect((await intraday.book(slot)).imbalanceWh).to.equal(500n);
      expect(await intraday.forecastOf(slot, a("bob"))).to.deep.equal([true, 200n]);
      expect(await intraday.forecastOf(slot, a("dave"))).to.deep.equal([false, 0n]);

      // alice now expects to keep to her schedule: her deviation is replaced, not added.
      await expect(forecast("alice", slot, [1_000n])).to.emit(intraday, "ForecastSubmitted").withArgs(a("alice"), slot, 1_000n, 0n);
      expect(await intraday.forecastOf(slot, a("alice"))).to.deep.equal([true, 0n]);
      expect((await intraday.book(slot)).imbalanceWh).to.equal(-100n);
      await forecast("alice", slot, [0n]); // she will use nothing: -1,000 below her schedule
      expect((await intraday.book(slot)).imbalanceWh).to.equal(-1_100n);
    });

    it("takes consecutive slots in one call, each inside its window; one closed slot reverts the call", async () => {
      const { intraday, slot, a, forecast, inWindow, opens, closes } = await fixture();
      await inWindow(slot);
      await forecast("dave", slot, [100n, -50n, 0n, 7n]);
      const books = await Promise.all([0n, 1n, 2n, 3n].map((k) => intraday.book(slot + k)));
      expect(books.map((b) => b.imbalanceWh)).to.deep.equal([100n, -50n, 0n, 7n]);
      expect(await intraday.forecastOf(slot + 2n, a("dave"))).to.deep.equal([true, 0n]);
      // 11:00 belongs to the next hour, whose window opens at 10:00.
      await expect(forecast("dave", slot + 1n, [1n, 2n, 3n, 4n]))
        .to.be.revertedWithCustomError(intraday, "BalancingWindowClosed")
        .withArgs(slot + 4n, opens(slot + 4n), closes(slot + 4n));
      expect((await intraday.book(slot + 1n)).imbalanceWh).to.equal(-50n);
    });

    it("accepts forecasts from the window's opening until the second before its gate closure", async () => {
      const { da, intraday, slot, forecast, opens, closes } = await fixture();
      await da.at(opens(slot) - 1n);
      await expect(forecast("alice", slot, [1n])).to.be.revertedWithCustomError(intraday, "BalancingWindowClosed").withArgs(slot, opens(slot), closes(slot));
      await da.at(opens(slot));
      await forecast("alice", slot, [1n]);
      await da.at(closes(slot) - 1n);
      await forecast("bob", slot, [2n]);
      await da.at(closes(slot));
      await expect(forecast("carol", slot, [3n])).to.be.revertedWithCustomError(intraday, "BalancingWindowClosed").withArgs(slot, opens(slot), closes(slot));
      // The slot after it is still open.
      await forecast("carol", slot + 1n, [3n]);
      expect((await intraday.book(slot)).imbalanceWh).to.equal(3n);
    });

    it("takes forecasts from the account or its meter key only, and only from active participants", async () => {
      const { m, intraday, slot, a, s, forecast, inWindow } = await fixture();
      await inWindow(slot);
      const key = m.p("alice").meterKey.connect(ethers.provider);
      await networkHelpers.setBalance(key.address, 10n ** 20n);
      await expect(intraday.connect(key).submitForecasts(a("alice"), slot, [250n])).to.emit(intraday, "ForecastSubmitted").withArgs(a("alice"), slot, 250n, 250n);
      for (const who of [s("bob"), m.outsider, m.admin]) {
        await expect(intraday.connect(who).submitForecasts(a("alice"), slot, [1n]))
          .to.be.revertedWithCustomError(intraday, "OfferNotAgent")
          .withArgs(a("alice"), who.address);
      }
      await m.registry.connect(m.admin).suspend(a("sam"));
      for (const who of [s("sam"), s("slack"), m.outsider]) {
        await expect(intraday.connect(who).submitForecasts(who.address, slot, [1n])).to.be.revertedWithCustomError(intraday, "OfferNotAllowed").withArgs(who.address);
      }
      await forecast("bob", slot, [0n]);
      expect((await intraday.book(slot)).imbalanceWh).to.equal(250n);
    });
  });

  describe("offers", () => {
    it("escrows a downward offer's worst case, rounded up, and nothing for an upward one; a change moves the difference", async () => {
      const { m, intraday, address, slot, a, s, place, inWindow, expectEscrow } = await fixture();
      await inWindow(slot);
      let tx = place("carol", slot, UP, 500n, 120_000n);
      await expect(tx).to.changeTokenBalances(ethers, m.token, [a("carol"), address], [0n, 0n]);
      await expect(tx).to.emit(intraday, "OfferPlaced").withArgs(a("carol"), slot, UP, 500n, 120_000n, 0n);
      let o = await intraday.offerOf(slot, a("carol"));
      expect([o.isUp, o.qtyWh, o.price, o.index, o.activatedWh, o.placed]).to.deep.equal([true, 500n, 120_000n, 0n, 0n, true]);

      const escrow = downEscrowOf(333n, 200_001n); // 66,600.333 -> 66,601
      expect(escrow).to.equal(66_601n);
      tx = place("frank", slot, DOWN, 333n, 200_001n);
      await expect(tx).to.changeTokenBalances(ethers, m.token, [a("frank"), address], [-escrow, escrow]);
      await expect(tx).to.emit(intraday, "OfferPlaced").withArgs(a("frank"), slot, DOWN, 333n, 200_001n, escrow);
      o = await intraday.offerOf(slot, a("frank"));
      expect([o.isUp, o.qtyWh, o.index, o.placed]).to.deep.equal([false, 333n, 1n, true]);
      let b = await intraday.book(slot);
      expect([b.size, b.cleared, b.escrow]).to.deep.equal([2n, false, escrow]);
      await expectEscrow(escrow);

      // Up: 1,501 Wh at 200,000 escrows 300,200.
      tx = place("frank", slot, DOWN, 1_501n, 200_000n);
      await expect(tx).to.changeTokenBalances(ethers, m.token, [a("frank"), address], [-(300_200n - escrow), 300_200n - escrow]);
      await expectEscrow(300_200n);
      // Down: 3 Wh at 50,001 escrows 151 (150.003): the rest comes back.
      tx = place("frank", slot, DOWN, 3n, 50_001n);
      await expect(tx).to.changeTokenBalances(ethers, m.token, [a("frank"), address], [300_049n, -300_049n]);
      await expect(tx).to.emit(intraday, "OfferPlaced").withArgs(a("frank"), slot, DOWN, 3n, 50_001n, 151n);
      expect((await intraday.offerOf(slot, a("frank"))).index).to.equal(1n); // a change keeps the book index
      await expectEscrow(151n);
      b = await intraday.book(slot);
      expect([b.size, b.escrow]).to.deep.equal([2n, 151n]);

      // An upward offer's change moves nothing.
      await expect(intraday.connect(s("carol")).placeOffers(a("carol"), [{ slot, isUp: UP, qtyWh: 9n, price: CAP }])).to.changeTokenBalances(
        ethers,
        m.token,
        [a("carol"), address],
        [0n, 0n],
      );
      await expectEscrow(151n);
    });

    it("refuses a zero quantity, a price outside [floor, cap] and a change of direction", async () => {
      const { intraday, slot, a, place, cancel, inWindow, expectEscrow } = await fixture();
      await inWindow(slot);
      await expect(place("alice", slot, DOWN, 0n, FLOOR)).to.be.revertedWithCustomError(intraday, "OfferZeroQuantity");
      await expect(place("alice", slot, DOWN, 1n, FLOOR - 1n)).to.be.revertedWithCustomError(intraday, "OfferPriceOutOfBounds").withArgs(FLOOR - 1n, FLOOR, CAP);
      await expect(place("bob", slot, UP, 1n, CAP + 1n)).to.be.revertedWithCustomError(intraday, "OfferPriceOutOfBounds").withArgs(CAP + 1n, FLOOR, CAP);
      await place("alice", slot, DOWN, 1n, FLOOR);
      await place("bob", slot, UP, 1n, CAP);
      await expect(place("alice", slot, UP, 1n, FLOOR)).to.be.revertedWithCustomError(intraday, "OfferDirectionChanged").withArgs(a("alice"), slot);
      await expect(place("bob", slot, DOWN, 1n, FLOOR)).to.be.revertedWithCustomError(intraday, "OfferDirectionChanged").withArgs(a("bob"), slot);
      // A zero-quantity change is refused, not taken as a cancel.
      await expect(place("bob", slot, UP, 0n, CAP)).to.be.revertedWithCustomError(intraday, "OfferZeroQuantity");
      // After a cancel the direction may change; the book index stays.
      await cancel("alice", slot);
      await place("alice", slot, UP, 7n, FLOOR);
      const o = await intraday.offerOf(slot, a("alice"));
      expect([o.isUp, o.qtyWh, o.index]).to.deep.equal([true, 7n, 0n]);
      expect((await intraday.book(slot)).size).to.equal(2n);
      await expectEscrow(0n);
    });

    it("refuses a downward offer whose escrow exceeds the allowance; an upward one needs none", async () => {
      const { m, intraday, address, slot, place, inWindow, expectEscrow } = await fixture();
      await inWindow(slot);
      const noapp = m.p("noapp").signer;
      await expect(place("noapp", slot, DOWN, 1_000n, 100_000n)).to.be.revertedWithCustomError(intraday, "OfferInsufficientAllowance").withArgs(100_000n, 0n);
      await m.token.connect(noapp).approve(address, 99_999n);
      await expect(place("noapp", slot, DOWN, 1_000n, 100_000n))
        .to.be.revertedWithCustomError(intraday, "OfferInsufficientAllowance")
        .withArgs(100_000n, 99_999n);
      await place("noapp", slot + 1n, UP, 1_000n, 100_000n);
      await m.token.connect(noapp).approve(address, 100_000n);
      await place("noapp", slot, DOWN, 1_000n, 100_000n);
      await expectEscrow(100_000n);
    });

    it("places and changes offers in several slots with one net escrow transfer", async () => {
      const { m, intraday, address, slot, a, s, cancel, inWindow, expectEscrow } = await fixture();
      await inWindow(slot);
      const tokenAddress = await m.token.getAddress();
      const transfers = (r: ContractTransactionReceipt | null) => eventsOf(r, m.token.interface, tokenAddress, "Transfer").map((e) => [e.args.from, e.args.to, e.args.value]);
      const frank = intraday.connect(s("frank"));
      let r = await (
        await frank.placeOffers(a("frank"), [
          { slot, isUp: DOWN, qtyWh: 1_000n, price: 100_000n }, // 100,000
          { slot: slot + 1n, isUp: DOWN, qtyWh: 1n, price: 50_001n }, // 51
          { slot: slot + 2n, isUp: UP, qtyWh: 500n, price: 60_000n }, // 0
          { slot: slot + 3n, isUp: DOWN, qtyWh: 3n, price: 123_457n }, // 370.371 -> 371
        ])
      ).wait();
      expect(transfers(r)).to.deep.equal([[a("frank"), address, 100_422n]]);
      expect(eventsOf(r, intraday.interface, address, "OfferPlaced").map((e) => e.args.escrow)).to.deep.equal([100_000n, 51n, 0n, 371n]);
      await expectEscrow(100_422n);

      await cancel("frank", slot + 1n);
      r = await (
        await frank.placeOffers(a("frank"), [
          { slot, isUp: DOWN, qtyWh: 100n, price: 100_000n }, // 100,000 -> 10,000
          { slot: slot + 3n, isUp: DOWN, qtyWh: 4n, price: 123_457n }, // 371 -> 494
          { slot: slot + 1n, isUp: UP, qtyWh: 2n, price: 50_001n }, // re-placed upward: 0
        ])
      ).wait();
      expect(transfers(r)).to.deep.equal([[address, a("frank"), 100_000n - 10_000n - (494n - 371n)]]);
      await expectEscrow(10_000n + 494n);
      // Changes that cancel out move nothing.
      r = await (
        await frank.placeOffers(a("frank"), [
          { slot, isUp: DOWN, qtyWh: 200n, price: 100_000n },
          { slot, isUp: DOWN, qtyWh: 100n, price: 100_000n },
        ])
      ).wait();
      expect(transfers(r)).to.have.length(0);
      await expectEscrow(10_494n);
    });

    it("cancels with a refund of the escrow; OfferNotFound without an open offer", async () => {
      const { m, intraday, address, slot, a, place, cancel, inWindow, expectEscrow } = await fixture();
      await inWindow(slot);
      await expect(cancel("dave", slot)).to.be.revertedWithCustomError(intraday, "OfferNotFound").withArgs(a("dave"), slot);
      await place("dave", slot, DOWN, 500n, 200_001n); // 100,000.5 -> 100,001
      await place("carol", slot, UP, 500n, 200_001n);
      const tx = cancel("dave", slot);
      await expect(tx).to.changeTokenBalances(ethers, m.token, [a("dave"), address], [100_001n, -100_001n]);
      await expect(tx).to.emit(intraday, "OfferCancelled").withArgs(a("dave"), slot, 100_001n);
      const o = await intraday.offerOf(slot, a("dave"));
      expect([o.placed, o.qtyWh, o.index]).to.deep.equal([true, 0n, 0n]);
      await expect(cancel("dave", slot)).to.be.revertedWithCustomError(intraday, "OfferNotFound").withArgs(a("dave"), slot);
      await expect(cancel("carol", slot)).to.emit(intraday, "OfferCancelled").withArgs(a("carol"), slot, 0n);
      expect((await intraday.book(slot)).escrow).to.equal(0n);
      await expectEscrow(0n);
    });

    it("takes offers and cancels from the account or its meter key only; others revert OfferNotAgent", async () => {
      const { m, intraday, address, slot, a, s, inWindow, expectEscrow } = await fixture();
      await inWindow(slot);
      const key = m.p("frank").meterKey.connect(ethers.provider);
      await networkHelpers.setBalance(key.address, 10n ** 20n);
      const input = { slot, isUp: DOWN, qtyWh: 1_000n, price: 100_000n };
      // The meter key places; the escrow comes from the account's wallet.
      await expect(intraday.connect(key).placeOffers(a("frank"), [input])).to.changeTokenBalances(ethers, m.token, [a("frank"), address], [-100_000n, 100_000n]);
      for (const who of [s("alice"), m.outsider, m.admin, m.relayer]) {
        await expect(intraday.connect(who).placeOffers(a("frank"), [input])).to.be.revertedWithCustomError(intraday, "OfferNotAgent").withArgs(a("frank"), who.address);
        await expect(intraday.connect(who).cancelOffer(a("frank"), slot)).to.be.revertedWithCustomError(intraday, "OfferNotAgent").withArgs(a("frank"), who.address);
      }
      // Another participant's meter key is no agent of frank.
      const aliceKey = m.p("alice").meterKey.connect(ethers.provider);
      await networkHelpers.setBalance(aliceKey.address, 10n ** 20n);
      await expect(intraday.connect(aliceKey).cancelOffer(a("frank"), slot)).to.be.revertedWithCustomError(intraday, "OfferNotAgent").withArgs(a("frank"), aliceKey.address);
      // The meter key cancels; the refund goes to the account.
      await expect(intraday.connect(key).cancelOffer(a("frank"), slot)).to.changeTokenBalances(ethers, m.token, [a("frank"), key.address, address], [100_000n, 0n, -100_000n]);
      await expectEscrow(0n);
    });

    it("refuses suspended and unknown accounts and the slack unit; a suspended one can still cancel", async () => {
      const { m, intraday, slot, a, s, place, cancel, inWindow, expectEscrow } = await fixture();
      await inWindow(slot);
      await m.registry.connect(m.admin).suspend(a("sam"));
      await m.token.connect(m.outsider).approve(await intraday.getAddress(), MaxUint256);
      for (const who of [s("sam"), s("slack"), m.outsider]) {
        await expect(intraday.connect(who).placeOffers(who.address, [{ slot, isUp: UP, qtyWh: 1n, price: FLOOR }]))
          .to.be.revertedWithCustomError(intraday, "OfferNotAllowed")
          .withArgs(who.address);
      }
      await place("alice", slot, DOWN, 10n, FLOOR);
      await m.registry.connect(m.admin).suspend(a("alice"));
      await expect(place("alice", slot, DOWN, 5n, FLOOR)).to.be.revertedWithCustomError(intraday, "OfferNotAllowed").withArgs(a("alice"));
      await expect(cancel("alice", slot)).to.emit(intraday, "OfferCancelled").withArgs(a("alice"), slot, downEscrowOf(10n, FLOOR));
      await expectEscrow(0n);
    });

    it("takes offers and cancels only inside the window", async () => {
      const { da, intraday, slot, place, cancel, opens, closes } = await fixture();
      await da.at(opens(slot) - 1n);
      await expect(place("alice", slot, DOWN, 10n, FLOOR)).to.be.revertedWithCustomError(intraday, "BalancingWindowClosed").withArgs(slot, opens(slot), closes(slot));
      await da.at(opens(slot));
      await place("alice", slot, DOWN, 10n, FLOOR);
      await da.at(closes(slot) - 1n);
      await place("alice", slot, DOWN, 20n, FLOOR);
      await da.at(closes(slot));
      await expect(place("alice", slot, DOWN, 30n, FLOOR)).to.be.revertedWithCustomError(intraday, "BalancingWindowClosed").withArgs(slot, opens(slot), closes(slot));
      // Between gate closure and the start of an uncleared slot, the escrow stays (clearing may come).
      await expect(cancel("alice", slot)).to.be.revertedWithCustomError(intraday, "BalancingWindowClosed").withArgs(slot, opens(slot), closes(slot));
      // Before its window opens, a slot takes no cancel either.
      await expect(cancel("alice", slot + 4n)).to.be.revertedWithCustomError(intraday, "BalancingWindowClosed").withArgs(slot + 4n, opens(slot + 4n), closes(slot + 4n));
    });
  });

  describe("clearing", () => {
    it("covers a short system with the cheapest upward offers, the marginal one partly; ties by book index", async () => {
      const { m, intraday, address, slot, a, place, forecast, inWindow, inClearing, clearingOf, expectEscrow } = await fixture();
      await inWindow(slot);
      await forecast("alice", slot, [900n]);
      await place("carol", slot, UP, 500n, 120_000n); // index 0
      await place("erin", slot, UP, 400n, 180_000n); // 1
      await place("dave", slot, UP, 200n, 250_000n); // 2
      await place("bob", slot, UP, 300n, 120_000n); // 3: ties with carol, placed later
      await place("frank", slot, DOWN, 300n, 250_000n); // 4: the idle direction
      await expectEscrow(75_000n);

      await inClearing(slot);
      const c = await clearingOf(slot);
      expect(c).to.deep.equal({
        slot,
        ups: [a("carol"), a("bob"), a("erin"), a("dave")],
        downs: [a("frank")],
        upActivationsWh: [500n, 300n, 100n, 0n],
        downActivationsWh: [0n],
        price: 180_000n,
        volumeWh: 900n,
      });
      const tx = intraday.connect(m.outsider).clear(c); // anyone may clear
      await expect(tx).to.emit(intraday, "BalancingCleared").withArgs(slot, 900n, true, 900n, 180_000n, m.outsider.address);
      await expect(tx).to.changeTokenBalances(ethers, m.token, [a("frank"), address, m.settlementAddress], [75_000n, -75_000n, 0n]);
      const receipt = await (await tx).wait();
      expect(activationEvents(receipt, intraday, address)).to.deep.equal([
        [a("carol"), true, 500n, 0n],
        [a("bob"), true, 300n, 0n],
        [a("erin"), true, 100n, 0n],
      ]); // offers not activated get no event; frank's full refund is a Transfer
      await expect(tx).to.not.emit(m.settlement, "SchedulePaid");

      expect(await intraday.activationOf(slot, a("carol"))).to.deep.equal([-500n, 180_000n]);
      expect(await intraday.activationOf(slot, a("erin"))).to.deep.equal([-100n, 180_000n]);
      expect(await intraday.activationOf(slot, a("dave"))).to.deep.equal([0n, 180_000n]);
      expect(await intraday.activationOf(slot, a("frank"))).to.deep.equal([0n, 180_000n]);
      expect(await intraday.activationOf(slot, a("alice"))).to.deep.equal([0n, 180_000n]);
      expect(await intraday.slotResult(slot)).to.deep.equal([900n, 0n, 180_000n, 0n]);
      expect((await intraday.offerOf(slot, a("erin"))).activatedWh).to.equal(100n);
      const b = await intraday.book(slot);
      expect([b.cleared, b.up, b.price, b.activatedWh, b.escrow, b.imbalanceWh]).to.deep.equal([true, true, 180_000n, 900n, 0n, 900n]);
      await expectEscrow(0n);
    });

    it("covers a long system with the downward offers that pay most; their cost goes into the slot's settlement pool", async () => {
      const { da, m, intraday, address, slot, a, place, forecast, inWindow, inClearing, clearingOf, expectEscrow } = await fixture();
      await inWindow(slot);
      await forecast("alice", slot, [-400n]);
      await forecast("bob", slot, [-200n]);
      await place("frank", slot, DOWN, 333n, 250_001n); // 0: escrow 83,251 (83,250.333)
      await place("dave", slot, DOWN, 500n, 200_001n); // 1: 100,001
      await place("erin", slot, DOWN, 400n, 250_001n); // 2: 100,001 (100,000.4); ties with frank
      await place("carol", slot, UP, 100n, FLOOR); // 3: the idle direction
      await expectEscrow(83_251n + 100_001n + 100_001n);

      await inClearing(slot);
      const c = await clearingOf(slot);
      expect(c).to.deep.equal({
        slot,
        ups: [a("carol")],
        downs: [a("frank"), a("erin"), a("dave")],
        upActivationsWh: [0n],
        downActivationsWh: [333n, 267n, 0n],
        price: 250_001n,
        volumeWh: 600n,
      });
      const frankCost = downCostOf(333n, 250_001n);
      const erinCost = downCostOf(267n, 250_001n);
      expect([frankCost, erinCost]).to.deep.equal([83_251n, 66_751n]); // 83,250.333 and 66,750.267 rounded up
      const cost = frankCost + erinCost;
      const tx = intraday.clear(c);
      await expect(tx).to.emit(intraday, "BalancingCleared").withArgs(slot, -600n, false, 600n, 250_001n, m.admin.address);
      await expect(tx).to.emit(m.settlement, "SchedulePaid").withArgs(slot, address, cost);
      const receipt = await (await tx).wait();
      expect(activationEvents(receipt, intraday, address)).to.deep.equal([
        [a("frank"), false, 333n, 0n],
        [a("erin"), false, 267n, 100_001n - erinCost],
      ]); // offers not activated get no event; dave's full refund is a Transfer
      // Refunds in list order, then the cost to settlement.
      const tokenAddress = await m.token.getAddress();
      expect(eventsOf(receipt, m.token.interface, tokenAddress, "Transfer").map((e) => [e.args.from, e.args.to, e.args.value])).to.deep.equal([
        [address, a("erin"), 100_001n - erinCost],
        [address, a("dave"), 100_001n],
        [address, m.settlementAddress, cost],
      ]);
      expect((await m.settlement.slotState(slot)).pool).to.equal(cost);
      expect(await m.settlement.openPool()).to.equal(cost);
      await m.expectIdentity();
      expect(await intraday.activationOf(slot, a("frank"))).to.deep.equal([333n, 250_001n]);
      expect(await intraday.activationOf(slot, a("erin"))).to.deep.equal([267n, 250_001n]);
      expect(await intraday.activationOf(slot, a("dave"))).to.deep.equal([0n, 250_001n]);
      expect(await intraday.slotResult(slot)).to.deep.equal([0n, 600n, 0n, 250_001n]);
      // The activations (+ downward) joined the day-ahead schedules, which settlement reads (no day-ahead clearing here).
      await expect(tx).to.emit(da.dayAhead, "ActivationsRecorded").withArgs(slot, address, 2n);
      expect(await da.dayAhead.scheduleOf(slot, a("frank"))).to.deep.equal([0n, 0n, 333n]);
      expect(await da.dayAhead.scheduleOf(slot, a("erin"))).to.deep.equal([0n, 0n, 267n]);
      expect(await da.dayAhead.scheduleOf(slot, a("dave"))).to.deep.equal([0n, 0n, 0n]);
      await expectEscrow(0n);
    });

    it("activates every offer of the needed direction when the imbalance exceeds them; none when that direction has none", async () => {
      const { m, intraday, slot, a, place, forecast, inWindow, inClearing, clearingOf } = await fixture();
      await inWindow(slot);
      await forecast("alice", slot, [10_000n]);
      await forecast("alice", slot + 1n, [5_000n]);
      await place("carol", slot, UP, 500n, 120_000n);
      await place("erin", slot, UP, 400n, 300_000n);
      await place("frank", slot, DOWN, 900n, 300_000n);
      await place("frank", slot + 1n, DOWN, 900n, 300_000n);
      await inClearing(slot);
      const c = await clearingOf(slot);
      expect([c.upActivationsWh, c.downActivationsWh, c.price, c.volumeWh]).to.deep.equal([[500n, 400n], [0n], 300_000n, 900n]);
      await intraday.clear(c);
      expect(await intraday.slotResult(slot)).to.deep.equal([900n, 0n, 300_000n, 0n]);

      await inClearing(slot + 1n);
      const c1 = await clearingOf(slot + 1n);
      expect([c1.ups, c1.downs, c1.downActivationsWh, c1.price, c1.volumeWh]).to.deep.equal([[], [a("frank")], [0n], 0n, 0n]);
      await expect(intraday.clear(c1)).to.emit(intraday, "BalancingCleared").withArgs(slot + 1n, 5_000n, true, 0n, 0n, m.admin.address);
      expect(await intraday.slotResult(slot + 1n)).to.deep.equal([0n, 0n, 0n, 0n]);
      expect(await intraday.activationOf(slot + 1n, a("frank"))).to.deep.equal([0n, 0n]);
    });

    it("activates nothing at zero imbalance (forecasts that cancel out, or none) and refunds every downward escrow", async () => {
      const { m, intraday, address, slot, a, place, forecast, inWindow, inClearing, clearingOf, expectEscrow } = await fixture();
      await inWindow(slot);
      await forecast("alice", slot, [300n]);
      await forecast("bob", slot, [-300n]);
      await place("carol", slot, UP, 500n, 120_000n);
      await place("frank", slot, DOWN, 300n, 250_000n);
      await place("dave", slot + 1n, DOWN, 100n, 250_000n);
      await inClearing(slot);
      const c = await clearingOf(slot);
      expect([c.upActivationsWh, c.downActivationsWh, c.price, c.volumeWh]).to.deep.equal([[0n], [0n], 0n, 0n]);
      const tx = intraday.clear(c);
      await expect(tx).to.emit(intraday, "BalancingCleared").withArgs(slot, 0n, false, 0n, 0n, m.admin.address);
      await expect(tx).to.changeTokenBalances(ethers, m.token, [a("frank"), address], [75_000n, -75_000n]);
      await expect(tx).to.not.emit(m.settlement, "SchedulePaid");
      expect(await intraday.slotResult(slot)).to.deep.equal([0n, 0n, 0n, 0n]);
      expect(await intraday.activationOf(slot, a("carol"))).to.deep.equal([0n, 0n]);

      // No forecast at all.
      await inClearing(slot + 1n);
      const c1 = await clearingOf(slot + 1n);
      expect((await intraday.book(slot + 1n)).imbalanceWh).to.equal(0n);
      await expect(intraday.clear(c1)).to.changeTokenBalances(ethers, m.token, [a("dave"), address], [25_000n, -25_000n]);
      await expectEscrow(0n);
    });

    it("clears an empty book (nothing to activate) once: BalancingAlreadyCleared after", async () => {
      const { m, intraday, slot, forecast, inWindow, inClearing, clearingOf } = await fixture();
      await inWindow(slot);
      await forecast("alice", slot, [500n]);
      await inClearing(slot);
      const c = await clearingOf(slot);
      expect(c).to.deep.equal({ slot, ups: [], downs: [], upActivationsWh: [], downActivationsWh: [], price: 0n, volumeWh: 0n });
      await expect(intraday.clear(c)).to.emit(intraday, "BalancingCleared").withArgs(slot, 500n, true, 0n, 0n, m.admin.address);
      expect(await intraday.slotResult(slot)).to.deep.equal([0n, 0n, 0n, 0n]);
      await expect(intraday.clear(c)).to.be.revertedWithCustomError(intraday, "BalancingAlreadyCleared").withArgs(slot);
      await expect(intraday.connect(m.outsider).clear({ ...c, price: 1n })).to.be.revertedWithCustomError(intraday, "BalancingAlreadyCleared").withArgs(slot);
    });

    it("keeps cancelled offers listed with quantity 0: never activated, never the price, and not to be left out", async () => {
      const { intraday, slot, a, place, forecast, cancel, inWindow, inClearing, clearingOf } = await fixture();
      await inWindow(slot);
      await forecast("alice", slot, [300n]);
      await place("carol", slot, UP, 500n, FLOOR); // cheapest, then cancelled
      await place("erin", slot, UP, 400n, 180_000n);
      await place("frank", slot, DOWN, 100n, 250_000n);
      await cancel("carol", slot);
      await cancel("frank", slot);
      await inClearing(slot);
      const c = await clearingOf(slot);
      expect(c).to.deep.equal({
        slot,
        ups: [a("carol"), a("erin")],
        downs: [a("frank")],
        upActivationsWh: [0n, 300n],
        downActivationsWh: [0n],
        price: 180_000n,
        volumeWh: 300n,
      });
      const left = copy(c);
      left.ups.shift();
      left.upActivationsWh.shift();
      await expect(intraday.clear(left)).to.be.revertedWithCustomError(intraday, "BalancingIncomplete").withArgs(2n, 3n);
      await intraday.clear(c);
      expect(await intraday.activationOf(slot, a("carol"))).to.deep.equal([0n, 180_000n]);
    });

    it("keeps time priority through a change: the earlier placement goes first among equal prices", async () => {
      const { intraday, slot, a, place, forecast, inWindow, inClearing, clearingOf } = await fixture();
      await inWindow(slot);
      await forecast("alice", slot, [-500n]);
      await place("dave", slot, DOWN, 100n, 200_000n); // index 0
      await place("frank", slot, DOWN, 400n, 250_000n); // 1
      await place("erin", slot, DOWN, 400n, 250_000n); // 2
      await place("dave", slot, DOWN, 600n, 250_000n); // change: still index 0, now at frank's and erin's price
      await inClearing(slot);
      const c = await clearingOf(slot);
      expect([c.downs, c.downActivationsWh, c.price]).to.deep.equal([[a("dave"), a("frank"), a("erin")], [500n, 0n, 0n], 250_000n]);
      await intraday.clear(c);
      expect(await intraday.activationOf(slot, a("dave"))).to.deep.equal([500n, 250_000n]);
    });

    it("accepts only the correct clearing, with the exact error for each wrong one", async () => {
      const { m, intraday, slot, a, place, forecast, inWindow, inClearing, clearingOf, closes, starts, da } = await fixture();
      await inWindow(slot);
      await forecast("alice", slot, [700n]);
      await place("carol", slot, UP, 500n, 120_000n);
      await place("erin", slot, UP, 400n, 180_000n);
      await place("bob", slot, UP, 300n, 120_000n);
      await place("frank", slot, DOWN, 300n, 250_000n);
      await place("dave", slot, DOWN, 200n, 200_000n);
      await da.at(closes(slot) - 1n);
      const c = await clearingOf(slot);
      expect([c.ups, c.upActivationsWh, c.price, c.volumeWh]).to.deep.equal([[a("carol"), a("bob"), a("erin")], [500n, 200n, 0n], 120_000n, 700n]);
      await expect(intraday.clear(c)).to.be.revertedWithCustomError(intraday, "BalancingClearingWindow").withArgs(slot, closes(slot), starts(slot));
      await inClearing(slot, 10n);

      const reject = async (bad: BalancingClearingCall, name: string, ...args: unknown[]) => {
        await expect(intraday.connect(m.outsider).clear(bad)).to.be.revertedWithCustomError(intraday, name).withArgs(...args);
      };
      let x = copy(c);
      x.downs.pop();
      x.downActivationsWh.pop();
      await reject(x, "BalancingIncomplete", 4n, 5n);
      x = copy(c);
      x.ups.push(a("alice"));
      x.upActivationsWh.push(0n);
      await reject(x, "BalancingIncomplete", 6n, 5n);
      x = copy(c);
      x.upActivationsWh.pop();
      await expect(intraday.clear(x)).to.be.revertedWithCustomError(intraday, "BalancingLengthMismatch");
      x = copy(c);
      x.downActivationsWh.push(0n);
      await expect(intraday.clear(x)).to.be.revertedWithCustomError(intraday, "BalancingLengthMismatch");
      // A stranger, a repeated offer, an offer on the other side's list.
      x = copy(c);
      x.ups[2] = a("alice");
      await reject(x, "BalancingWrongOffer", a("alice"));
      x = copy(c);
      x.ups[2] = a("carol");
      await reject(x, "BalancingWrongOffer", a("carol"));
      x = copy(c);
      x.downs[1] = a("erin");
      x.ups[2] = a("dave");
      await reject(x, "BalancingWrongOffer", a("dave"));
      x = copy(c);
      [x.downs[0], x.downs[1]] = [x.downs[1]!, x.downs[0]!];
      await reject(x, "BalancingNotSorted", false, 1n);
      x = copy(c);
      [x.ups[0], x.ups[1]] = [x.ups[1]!, x.ups[0]!]; // equal prices, book indices swapped
      [x.upActivationsWh[0], x.upActivationsWh[1]] = [x.upActivationsWh[1]!, x.upActivationsWh[0]!];
      await reject(x, "BalancingNotSorted", true, 1n);
      await reject({ ...copy(c), price: 120_001n }, "BalancingWrongResult", 120_000n, 120_001n, 700n, 700n);
      await reject({ ...copy(c), price: 119_999n }, "BalancingWrongResult", 120_000n, 119_999n, 700n, 700n);
      await reject({ ...copy(c), volumeWh: 701n }, "BalancingWrongResult", 120_000n, 120_000n, 700n, 701n);
      await reject({ ...copy(c), volumeWh: 699n }, "BalancingWrongResult", 120_000n, 120_000n, 700n, 699n);
      x = copy(c);
      x.upActivationsWh = [400n, 300n, 0n];
      await reject(x, "BalancingWrongActivation", a("carol"), 500n, 400n);
      x = copy(c);
      x.downActivationsWh = [0n, 1n];
      await reject(x, "BalancingWrongActivation", a("dave"), 0n, 1n);

      await da.at(starts(slot));
      await expect(intraday.clear(c)).to.be.revertedWithCustomError(intraday, "BalancingClearingWindow").withArgs(slot, closes(slot), starts(slot));
    });

    it("refunds the downward escrow of an uncleared slot by cancelOffer once it started; a cleared one is closed for good", async () => {
      const { da, m, intraday, address, slot, a, place, cancel, forecast, inWindow, inClearing, clearingOf, opens, closes, starts, expectEscrow } = await fixture();
      await inWindow(slot);
      await place("frank", slot, DOWN, 300n, 250_000n); // uncleared
      await place("carol", slot, UP, 300n, 250_000n);
      await place("dave", slot + 1n, DOWN, 100n, 250_000n); // cleared
      await forecast("alice", slot + 1n, [-50n]);
      await expectEscrow(100_000n);
      await da.at(starts(slot));
      await expect(cancel("frank", slot)).to.changeTokenBalances(ethers, m.token, [a("frank"), address], [75_000n, -75_000n]);
      await expect(cancel("carol", slot)).to.emit(intraday, "OfferCancelled").withArgs(a("carol"), slot, 0n);
      await expect(cancel("frank", slot)).to.be.revertedWithCustomError(intraday, "OfferNotFound").withArgs(a("frank"), slot);
      // Nothing can be placed in the started slot.
      await expect(place("frank", slot, DOWN, 1n, FLOOR)).to.be.revertedWithCustomError(intraday, "BalancingWindowClosed").withArgs(slot, opens(slot), closes(slot));
      await expectEscrow(25_000n);

      await inClearing(slot + 1n, 60n);
      await intraday.clear(await clearingOf(slot + 1n)); // dave pays 12,500 for 50 Wh, gets 12,500 back
      await expectEscrow(0n);
      await da.at(starts(slot + 1n) + 1n);
      await expect(cancel("dave", slot + 1n))
        .to.be.revertedWithCustomError(intraday, "BalancingWindowClosed")
        .withArgs(slot + 1n, opens(slot + 1n), closes(slot + 1n));
    });
  });

  describe("the book cap", function () {
    this.timeout(300_000);

    it("takes at most MAX_BOOK_SIZE offers a slot (OfferBookFull); a full book still takes changes and re-placements", async () => {
      const fx = await fixture();
      const { intraday, slot, place, cancel, expectEscrow } = fx;
      const { people, escrow } = await fillBook(fx);
      const max = BigInt(people.length);
      expect((await intraday.book(slot)).size).to.equal(max);
      await expect(place("alice", slot, DOWN, 1n, FLOOR)).to.be.revertedWithCustomError(intraday, "OfferBookFull").withArgs(slot, max);
      await expect(place("bob", slot, UP, 1n, FLOOR)).to.be.revertedWithCustomError(intraday, "OfferBookFull").withArgs(slot, max);
      // The next slot is another book.
      await place("alice", slot + 1n, DOWN, 1n, FLOOR);
      await cancel("alice", slot + 1n);
      // Changes and re-placements of cancelled offers keep their place in the book.
      const [first] = people as [{ account: string; signer: Signer; price: bigint }];
      await intraday.connect(first.signer).placeOffers(first.account, [{ slot, isUp: DOWN, qtyWh: 120n, price: first.price }]);
      await intraday.connect(first.signer).cancelOffer(first.account, slot);
      await intraday.connect(first.signer).placeOffers(first.account, [{ slot, isUp: UP, qtyWh: 100n, price: first.price }]);
      expect((await intraday.offerOf(slot, first.account)).index).to.equal(0n);
      expect((await intraday.book(slot)).size).to.equal(max);
      await expectEscrow(escrow - downEscrowOf(100n, first.price));
    });
  });

  describe("readOffers", () => {
    it("reads a slot's book from OfferPlaced events and offerOf, cancelled offers included, by book index", async () => {
      const { intraday, slot, a, place, cancel, inWindow } = await fixture();
      const from = await ethers.provider.getBlockNumber();
      await inWindow(slot);
      await place("erin", slot, UP, 400n, 180_000n);
      await place("frank", slot, DOWN, 300n, 250_000n);
      await place("carol", slot + 1n, UP, 1n, FLOOR);
      await place("erin", slot, UP, 401n, 181_000n);
      await cancel("frank", slot);
      const book = await readOffers(intraday, slot, from);
      expect(book).to.deep.equal([
        { account: a("erin"), isUp: true, qtyWh: 401n, price: 181_000n, index: 0 },
        { account: a("frank"), isUp: false, qtyWh: 0n, price: 250_000n, index: 1 },
      ]);
      // As of an earlier block.
      const early = await readOffers(intraday, slot, from, { blockTag: from + 1 });
      expect(early.map((o) => [o.account, o.qtyWh])).to.deep.equal([[a("erin"), 400n]]);
      const late = (await ethers.provider.getBlockNumber()) - 1;
      const e = await readOffers(intraday, slot, late).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(e).to.be.instanceOf(OfferBookError);
      expect((e as Error).message).to.match(/holds 2 offers but OfferPlaced events .* name 1 accounts/);
    });
  });

  describe("a slot settled end to end", () => {
    it("pays the activated upward provider its activation at the balancing price into its deposit; one that did not deliver pays the imbalance; tokens and energy conserved", async () => {
      const { da, m, intraday, address, slot, a, place, forecast, inWindow, inClearing, clearingOf, starts } = await fixture();
      const settlement = m.settlement;
      const supply = await m.token.totalSupply();
      const holders = [...m.addresses(), m.admin.address, m.outsider.address, m.relayer.address, m.settlementAddress, da.address, address];
      const expectSupplyHeld = async (where: string) => {
        let sum = 0n;
        for (const h of holders) sum += await m.token.balanceOf(h);
        expect(sum, `${where}: every token in a known wallet`).to.equal(supply);
        expect(await m.token.totalSupply(), `${where}: total supply`).to.equal(supply);
        await m.expectIdentity();
      };

      // Day-ahead: alice buys 1,000 Wh from bob at 150,000.
      await da.place("alice", slot, false, 1_000n, 200_000n);
      await da.place("bob", slot, true, 1_000n, 100_000n);
      await da.afterGate(slot);
      await da.dayAhead.clear(clearingCallFor(slot, await readBook(da.dayAhead, slot)));
      const daCost = ceilDiv(1_000n * 150_000n, 1000n);
      await expectSupplyHeld("after the day-ahead clearing");

      // An hour ahead alice expects 1,600 Wh: 600 above schedule. Flexibility covers it.
      await inWindow(slot);
      await forecast("alice", slot, [1_600n]);
      await place("carol", slot, UP, 500n, 120_000n); // activated fully, delivers
      await place("erin", slot, UP, 400n, 180_000n); // activated for 100 Wh (the price), does not deliver
      await place("dave", slot, UP, 200n, 250_000n); // not activated
      await place("frank", slot, DOWN, 300n, 250_000n); // not needed: refunded at clearing
      await inClearing(slot);
      const c = await clearingOf(slot);
      expect([c.ups, c.upActivationsWh, c.price, c.volumeWh]).to.deep.equal([[a("carol"), a("erin"), a("dave")], [500n, 100n, 0n], 180_000n, 600n]);
      await expect(intraday.clear(c)).to.emit(da.dayAhead, "ActivationsRecorded").withArgs(slot, address, 2n);
      await expectSupplyHeld("after the balancing clearing");
      const upPrice = 180_000n;
      // The activations joined the day-ahead schedules (- upward): the day-ahead award, its price, the activation.
      expect(await da.dayAhead.scheduleOf(slot, a("carol"))).to.deep.equal([0n, 150_000n, -500n]);
      expect(await da.dayAhead.scheduleOf(slot, a("erin"))).to.deep.equal([0n, 150_000n, -100n]);
      expect(await da.dayAhead.scheduleOf(slot, a("alice"))).to.deep.equal([1_000n, 150_000n, 0n]);
      expect(await da.dayAhead.scheduleOf(slot, a("dave"))).to.deep.equal([0n, 150_000n, 0n]);
      expect((await da.dayAhead.orderOf(slot, a("carol"))).activatedWh).to.equal(-500n);

      // Baseline readings at the end of the slot before, then the slot's own readings.
      const registers: Record<string, [bigint, bigint]> = {
        alice: [10_000n, 0n],
        bob: [0n, 20_000n],
        carol: [5_000n, 5_000n],
        dave: [3_000n, 0n],
        erin: [7_000n, 7_000n],
        frank: [100n, 0n],
      };
      await m.readSlot(slot - 1n, registers);
      expect(BigInt(await networkHelpers.time.latest())).to.be.greaterThanOrEqual(starts(slot));
      const metered: Record<string, bigint> = { alice: 1_600n, bob: -1_000n, carol: -500n, dave: 0n, erin: 0n, frank: 0n };
      const next: Record<string, [bigint, bigint]> = {};
      for (const [name, [imp, exp]] of Object.entries(registers)) {
        const net = metered[name]!;
        next[name] = net >= 0n ? [imp + net, exp] : [imp, exp - net];
      }
      const balancesBefore = new Map<string, bigint>();
      const depositsBefore = new Map<string, bigint>();
      for (const name of Object.keys(metered)) {
        balancesBefore.set(name, await m.token.balanceOf(a(name)));
        depositsBefore.set(name, (await settlement.accountState(a(name))).deposit);
      }
      await m.readSlot(slot, next);
      const s = await settlement.slotState(slot);
      // Deviations: alice +600 (1,600 - 1,000), erin +100 (0 - -100); the rest kept to schedule.
      expect([s.demandWh, s.supplyWh, s.upWh, s.downWh, s.upPrice, s.downPrice]).to.deep.equal([700n, 0n, 600n, 0n, upPrice, 0n]);

      // Settle after the reading deadline.
      await m.afterDeadline(slot);
      const receipt = await (await settlement.settle(slot, Object.keys(metered).map(a))).wait();
      const bills = new Map(m.events(receipt, "Billed").map((e) => [e.args.account as string, e.args]));
      const closed = m.events(receipt, "SlotClosed");
      expect(closed, "the slot closed").to.have.length(1);
      const priced = (await settlement.slotState(slot)).price;

      // The settlement's rules (its NatSpec): demand D = 700 + down 0, supply U = 0 + up 600.
      const D = 700n;
      const U = 600n;
      const L = U < D ? U : D;
      const feedIn = await settlement.feedInPrice();
      const retail = await settlement.retailPrice();
      expect(priced).to.equal(feedIn + ((retail - feedIn) * D) / (D + U));
      const devPrice = priced > upPrice ? priced : upPrice; // short system: a deviation up pays at least the balancing price
      const buyerBill = (d: bigint) => {
        const local = (d * L) / D;
        return ceilDiv(local * devPrice + (d - local) * retail, 1000n);
      };

      // carol: activated 500 Wh up and delivered them; paid 500 Wh at the balancing price, into her
      // deposit (settlement pays earnings into deposits; the wallet does not move until a withdrawal).
      const carolPay = upPaymentOf(500n, upPrice);
      expect(carolPay).to.equal(90_000n);
      expect([...bills.get(a("carol"))!]).to.deep.equal([a("carol"), slot, 0n, carolPay, 0n, 0n]);
      expect((await settlement.accountState(a("carol"))).deposit - depositsBefore.get("carol")!).to.equal(carolPay);
      expect(await m.token.balanceOf(a("carol"))).to.equal(balancesBefore.get("carol"));
      // erin: activated 100 Wh up, delivered nothing: deviation +100 at the imbalance price, netted with her activation's pay.
      const erinPay = upPaymentOf(100n, upPrice);
      const erinBill = buyerBill(100n);
      expect(erinBill).to.be.greaterThan(erinPay);
      expect([...bills.get(a("erin"))!]).to.deep.equal([a("erin"), slot, 100n, erinPay, erinBill, 0n]);
      expect(await m.token.balanceOf(a("erin"))).to.equal(balancesBefore.get("erin"));
      expect((await settlement.accountState(a("erin"))).deposit).to.equal(depositsBefore.get("erin")! - (erinBill - erinPay));
      // alice: 600 Wh above her schedule; bob: paid his day-ahead sale.
      const aliceBill = buyerBill(600n);
      expect([...bills.get(a("alice"))!]).to.deep.equal([a("alice"), slot, 600n, 0n, aliceBill, 0n]);
      const bobPay = (1_000n * 150_000n) / 1000n;
      expect([...bills.get(a("bob"))!]).to.deep.equal([a("bob"), slot, 0n, bobPay, 0n, 0n]);
      expect((await settlement.accountState(a("bob"))).deposit - depositsBefore.get("bob")!).to.equal(bobPay);
      expect(await m.token.balanceOf(a("bob"))).to.equal(balancesBefore.get("bob"));
      for (const name of ["dave", "frank"]) expect([...bills.get(a(name))!]).to.deep.equal([a(name), slot, 0n, 0n, 0n, 0n]);

      // Energy: what the neighbourhood metered is what the slack unit supplied less what it absorbed.
      const [localWh, supplied, absorbed, slackAmount] = [closed[0]!.args[1], closed[0]!.args[2], closed[0]!.args[3], closed[0]!.args[4]] as bigint[];
      expect(D, "demand = supply + slack supplied - slack absorbed").to.equal(U + supplied! - absorbed!);
      const net = Object.values(metered).reduce((x, y) => x + y, 0n);
      expect(net, "metered net energy = slack supplied - slack absorbed").to.equal(supplied! - absorbed!);
      expect(localWh).to.equal((600n * L) / D + (100n * L) / D);
      // Tokens: the pool (day-ahead cost + bills - scheduled and activation pay) went to the slack unit.
      expect(slackAmount).to.equal(daCost + aliceBill + erinBill - bobPay - carolPay - erinPay);
      expect((await settlement.slotState(slot)).pool).to.equal(0n);
      await expectSupplyHeld("after settlement");
      expect(await m.token.balanceOf(address)).to.equal(0n);
    });
  });
});

describe("IntradayMarket limits (once known bugs, now fixed)", function () {
  this.timeout(300_000);

  it("fixed: no schedule can push a forecast deviation beyond int40: the day-ahead market refuses orders above 2^24 Wh", async () => {
    const { da, slot } = await fixture();
    await expect(da.place("bob", slot, true, 2n ** 24n + 1n, FLOOR)).to.be.revertedWithCustomError(da.dayAhead, "OrderQuantityTooLarge");
  });

  it("IntradayMarket's fullest book (MAX_BOOK_SIZE downward offers, all activated, each refunded part of its escrow) clears within one transaction (2^24 gas)", async () => {
    const fx = await fixture();
    const { da, intraday, address, slot, forecast, inClearing, clearingOf, expectEscrow } = fx;
    const max = BigInt(await intraday.MAX_BOOK_SIZE());
    const { people, escrow } = await fillBook(fx);
    expect(BigInt(people.length)).to.equal(max);
    // The worst case: no owner has a day-ahead order in the slot, so every activation creates its
    // owner's schedule word in the day-ahead market.
    for (const p of people) {
      const order = await da.dayAhead.orderOf(slot, p.account);
      expect([order.placed, order.qtyWh, order.activatedWh], `${p.account}'s day-ahead order`).to.deep.equal([false, 0n, 0n]);
    }
    // A long system that needs every offer: all activated at the lowest limit, all others refunded the difference.
    await forecast("alice", slot, [-200_000n]);
    await inClearing(slot);
    const c = await clearingOf(slot);
    expect(c.downs.length).to.equal(Number(max));
    expect(c.ups.length).to.equal(0);
    expect(c.volumeWh).to.equal(max * 100n);
    expect(c.downActivationsWh.every((w) => w === 100n)).to.equal(true);
    const lowest = people.reduce((low, p) => (p.price < low ? p.price : low), CAP);
    expect(c.price).to.equal(lowest);
    // About 45,500 gas an offer (its activation, the new schedule word, event and refund transfer;
    // 13.65 million in all): MAX_BOOK_SIZE = 300 fit under the cap (600 did, at about 21,800 each,
    // when an activation wrote no schedule word).
    const receipt = await (await intraday.clear(c, { gasLimit: 2n ** 24n })).wait();
    expect(receipt!.gasUsed).to.be.lessThanOrEqual(2n ** 24n);
    console.log(`      gas, the fullest balancing book (${max} offers): clear ${receipt!.gasUsed} (${receipt!.gasUsed / max}/offer) of ${2n ** 24n}`);
    // Every offer activated, and refunded what its escrow held beyond the clearing price: all but the
    // marginal one (at the clearing price), whose escrow pays exactly its cost.
    const activations = activationEvents(receipt, intraday, address);
    expect(activations.length).to.equal(Number(max));
    const paid = ceilDiv(100n * lowest, 1000n);
    for (const p of people) {
      const event = activations.find((e) => e[0] === p.account);
      expect(event, `${p.account} activated`).to.deep.equal([p.account, DOWN, 100n, downEscrowOf(100n, p.price) - paid]);
      const refund = event![3] as bigint;
      expect(refund > 0n, `${p.account} refunded`).to.equal(p.price !== lowest);
      // Its activation joins its schedule: a new word in the day-ahead market.
      const order = await da.dayAhead.orderOf(slot, p.account);
      expect([order.placed, order.activatedWh]).to.deep.equal([false, 100n]);
    }
    // The escrow leaves in max - 1 refund transfers and one of the cost to settlement.
    const transfers = eventsOf(receipt, fx.m.token.interface, await fx.m.token.getAddress(), "Transfer").filter((e) => e.args[0] === address);
    const toSettlement = transfers.filter((e) => e.args[1] === fx.m.settlementAddress);
    expect(toSettlement.map((e) => e.args[2])).to.deep.equal([max * paid]);
    expect(transfers.length - toSettlement.length).to.equal(Number(max) - 1);
    expect(transfers.reduce((sum, e) => sum + (e.args[2] as bigint), 0n)).to.equal(escrow);
    await expectEscrow(0n);
  });

  it("DayAheadMarket's fullest book (MAX_BOOK_SIZE orders, every one awarded) clears within one transaction (2^24 gas)", async () => {
    const fx = await fixture();
    const { da, slot } = fx;
    const max = Number(await da.dayAhead.MAX_BOOK_SIZE());
    const people = await crowd(fx, max, "da-full", [da.address]);
    // Half buy 100 Wh at the cap, half sell 100 Wh at the floor: every order is awarded in full.
    for (const [i, p] of people.entries()) {
      await da.dayAhead.connect(p.signer).placeOrder(i % 2 === 0 ? { slot, isSell: false, qtyWh: 100n, price: CAP } : { slot, isSell: true, qtyWh: 100n, price: FLOOR });
    }
    await da.afterGate(slot);
    const c = clearingCallFor(slot, await readBook(da.dayAhead, slot));
    expect(c.volumeWh).to.equal(BigInt(max / 2) * 100n);
    // Fails: about 18.8 million gas for 1,000 awarded orders (npm run bench -- --only intraday logs it).
    const receipt = await (await da.dayAhead.clear(c, { gasLimit: 2n ** 24n })).wait();
    expect(receipt!.gasUsed).to.be.lessThanOrEqual(2n ** 24n);
  });

  it("the master's default relay batch (250 readings) fits in one transaction when readings carry schedules and activations", async () => {
    const N = 400;
    const MASTER_BATCH = 250; // agents/master/masterAgent.ts, readingBatchSize default
    const TX_CAP = 2n ** 24n;
    const { da, m, intraday, address, slot } = await fixture();
    const slotA = slot;
    const slotB = slot + 1n;
    // N participants with wallets (impersonated) and meter keys.
    const people = Array.from({ length: N }, (_, i) => ({
      account: getAddress(dataSlice(id(`intraday-test/batch/account/${i}`), 12)),
      key: new Wallet(id(`intraday-test/batch/meter/${i}`)),
      buyer: i % 10 < 6,
      imp: 1_000_000n + BigInt(i),
      exp: 2_000_000n + BigInt(i),
    }));
    const admin = m.admin;
    for (let i = 0; i < N; i += 100) {
      const part = people.slice(i, i + 100);
      await m.registry.connect(admin).registerBatch(
        part.map((p, k) => ({ account: p.account, meterId: encodeBytes32String(`MTR-b-${i + k}`), meterKey: p.key.address, kind: p.buyer ? Kind.Consumer : Kind.Prosumer })),
      );
      await m.token.connect(admin).mintBatch(id(`intraday-test/batch/mint/${i}`), part.map((p) => p.account), part.map(() => 1_000n * 10n ** 6n));
    }
    await m.token.connect(admin).mint(admin.address, BigInt(N) * 100n * 10n ** 6n);
    await m.token.connect(admin).approve(m.settlementAddress, MaxUint256);
    const signers = [];
    for (const p of people) {
      await m.settlement.connect(admin).depositFor(p.account, 100n * 10n ** 6n);
      await networkHelpers.impersonateAccount(p.account);
      await networkHelpers.setBalance(p.account, 10n ** 20n);
      const signer = await ethers.getSigner(p.account);
      signers.push(signer);
      await m.token.connect(signer).approve(da.address, MaxUint256);
      await m.token.connect(signer).approve(address, MaxUint256);
      // Everyone is scheduled day-ahead in A and B: 60% buy 600 Wh at the cap, 40% sell 900 Wh at the floor.
      await da.dayAhead
        .connect(signer)
        .placeOrders([slotA, slotB].map((k) => (p.buyer ? { slot: k, isSell: false, qtyWh: 600n, price: CAP } : { slot: k, isSell: true, qtyWh: 900n, price: FLOOR })));
    }
    await da.afterGate(slotA);
    for (const k of [slotA, slotB]) await da.dayAhead.clear(clearingCallFor(k, await readBook(da.dayAhead, k)), { gasLimit: TX_CAP });
    // An hour ahead: a fifth of the buyers expect 300 Wh more in A and 300 Wh less in B; a tenth offer flexibility each way.
    const opens = ((slotA * SLOT_SECONDS) / HOUR) * HOUR - OPEN_LEAD;
    await da.at(opens + 1n);
    for (let i = 0; i < N; i++) {
      const p = people[i]!;
      if (i % 10 < 2) await intraday.connect(signers[i]!).submitForecasts(p.account, slotA, [900n, 300n]);
      if (i % 10 === 6) await intraday.connect(signers[i]!).placeOffers(p.account, [{ slot: slotA, isUp: true, qtyWh: 800n, price: 200_000n + BigInt(i) }]);
      if (i % 10 === 7) await intraday.connect(signers[i]!).placeOffers(p.account, [{ slot: slotB, isUp: false, qtyWh: 800n, price: 200_000n - BigInt(i) }]);
    }
    for (const k of [slotA, slotB]) {
      await da.at(k * SLOT_SECONDS - GATE_LEAD + 1n);
      await intraday.clear(balancingCallFor(k, (await intraday.book(k)).imbalanceWh, await readOffers(intraday, k)));
    }
    expect((await intraday.slotResult(slotA))[0], "upward activations in A").to.be.greaterThan(0n);
    expect((await intraday.slotResult(slotB))[1], "downward activations in B").to.be.greaterThan(0n);

    // The baseline before A, then A (counted), then B (counted, and billing A): MASTER_BATCH readings a transaction.
    const relay = async (k: bigint) => {
      const batch = [];
      for (const p of people) {
        const net = (p.buyer ? 600n : -900n) + (people.indexOf(p) % 7 === 0 ? 25n : -10n);
        if (net >= 0n) p.imp += net;
        else p.exp += -net;
        const reading = { account: p.account, slot: k, importWh: p.imp, exportWh: p.exp };
        batch.push(await signReading(p.key, m.domain, reading));
      }
      await m.inWindow(k, 10n);
      const gas: bigint[] = [];
      for (let i = 0; i < batch.length; i += MASTER_BATCH) {
        const part = batch.slice(i, i + MASTER_BATCH);
        try {
          const receipt = await (await m.settlement.connect(m.relayer).submitReadings(part, { gasLimit: TX_CAP })).wait();
          gas.push(receipt!.gasUsed);
        } catch (e) {
          expect.fail(`slot ${k}: a relay of ${part.length} readings does not fit in 2^24 gas: ${(e as Error).message}`);
        }
      }
      return gas;
    };
    await relay(slotA - 1n); // baselines: about 21,000 gas a reading
    await relay(slotA); // counted with their schedules: about 32,000
    await relay(slotB); // counted, and billing A on the way in: about 44,000 a reading, 400 need about 17.7 million
  });
});

describe("reference balancing clearing (hand-worked books)", () => {
  const A = "0x00000000000000000000000000000000000000a1";
  const B = "0x00000000000000000000000000000000000000b2";
  const C = "0x00000000000000000000000000000000000000c3";
  const D = "0x00000000000000000000000000000000000000d4";
  const E = "0x00000000000000000000000000000000000000e5";
  const o = (account: string, isUp: boolean, qtyWh: bigint, price: bigint, index: number): BalancingOffer => ({ account, isUp, qtyWh, price, index });
  const book = [o(A, UP, 500n, 120n, 0), o(B, UP, 400n, 180n, 1), o(C, DOWN, 300n, 250n, 2), o(D, UP, 300n, 120n, 3), o(E, DOWN, 200n, 250n, 4)];

  it("short: upward by price, ties by index, the marginal partly, pay-as-clear at its limit", () => {
    expect(clearBalancing(900n, book)).to.deep.equal({
      ups: [A, D, B],
      downs: [C, E],
      upActivationsWh: [500n, 300n, 100n],
      downActivationsWh: [0n, 0n],
      price: 180n,
      volumeWh: 900n,
    });
    expect(clearBalancing(500n, book)).to.deep.include({ upActivationsWh: [500n, 0n, 0n], price: 120n, volumeWh: 500n });
    expect(clearBalancing(501n, book)).to.deep.include({ upActivationsWh: [500n, 1n, 0n], price: 120n, volumeWh: 501n });
    expect(clearBalancing(801n, book)).to.deep.include({ upActivationsWh: [500n, 300n, 1n], price: 180n, volumeWh: 801n });
  });

  it("long: downward by price descending, ties by index; never both directions", () => {
    expect(clearBalancing(-400n, book)).to.deep.equal({
      ups: [A, D, B],
      downs: [C, E],
      upActivationsWh: [0n, 0n, 0n],
      downActivationsWh: [300n, 100n],
      price: 250n,
      volumeWh: 400n,
    });
  });

  it("covers min(|imbalance|, offered): everything beyond the book", () => {
    expect(clearBalancing(10_000n, book)).to.deep.include({ upActivationsWh: [500n, 300n, 400n], price: 180n, volumeWh: 1_200n });
    expect(clearBalancing(-10_000n, book)).to.deep.include({ downActivationsWh: [300n, 200n], price: 250n, volumeWh: 500n });
  });

  it("activates nothing at zero imbalance, on an empty book, or without offers in the needed direction", () => {
    expect(clearBalancing(0n, book)).to.deep.include({ upActivationsWh: [0n, 0n, 0n], downActivationsWh: [0n, 0n], price: 0n, volumeWh: 0n });
    expect(clearBalancing(7n, [])).to.deep.equal({ ups: [], downs: [], upActivationsWh: [], downActivationsWh: [], price: 0n, volumeWh: 0n });
    expect(clearBalancing(-7n, [o(A, UP, 5n, 100n, 0)])).to.deep.equal({ ups: [A], downs: [], upActivationsWh: [0n], downActivationsWh: [], price: 0n, volumeWh: 0n });
  });

  it("lists cancelled offers (quantity 0) but never activates them nor takes their price", () => {
    const withCancelled = [o(A, UP, 0n, 90n, 0), o(B, UP, 400n, 180n, 1), o(C, UP, 0n, 200n, 2)];
    expect(clearBalancing(100n, withCancelled)).to.deep.include({ ups: [A, B, C], upActivationsWh: [0n, 100n, 0n], price: 180n, volumeWh: 100n });
    expect(clearBalancing(1_000n, withCancelled)).to.deep.include({ upActivationsWh: [0n, 400n, 0n], price: 180n, volumeWh: 400n });
    expect(clearBalancing(5n, [o(A, UP, 0n, 90n, 0)])).to.deep.include({ price: 0n, volumeWh: 0n });
  });

  it("does not depend on the order of its input; the call carries the slot", () => {
    const reversed = [...book].reverse();
    expect(clearBalancing(777n, reversed)).to.deep.equal(clearBalancing(777n, book));
    expect(balancingCallFor(42, -3n, book)).to.deep.equal({ slot: 42n, ...clearBalancing(-3n, book) });
  });

  it("refuses a list that cannot be a book", () => {
    expect(() => clearBalancing(1n, [o(A, UP, 1n, 1n, 0), o(A.toUpperCase().replace("0X", "0x"), DOWN, 1n, 1n, 1)])).to.throw(BalancingInputError, /two offers/);
    expect(() => clearBalancing(1n, [o(A, UP, 1n, 1n, 0), o(B, UP, 1n, 1n, 0)])).to.throw(BalancingInputError, /index 0 appears twice/);
    expect(() => clearBalancing(1n, [o(A, UP, -1n, 1n, 0)])).to.throw(BalancingInputError, /quantity/);
    expect(() => clearBalancing(1n, [o(A, UP, 1n, -1n, 0)])).to.throw(BalancingInputError, /price/);
    expect(() => clearBalancing(1n, [o(A, UP, 1n, 1n, -1)])).to.throw(BalancingInputError, /index/);
  });

  it("rounds a downward cost and escrow up, an upward payment down", () => {
    expect(downEscrowOf(333n, 200_001n)).to.equal(66_601n);
    expect(downCostOf(267n, 250_001n)).to.equal(66_751n);
    expect(upPaymentOf(267n, 250_001n)).to.equal(66_750n);
    expect(downCostOf(0n, 250_001n)).to.equal(0n);
  });
});
