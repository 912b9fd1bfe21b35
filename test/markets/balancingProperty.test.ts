import { expect } from "chai";
import { network } from "hardhat";
import { encodeBytes32String, id, MaxUint256, Wallet, type Signer } from "ethers";
import { balancingCallFor, downCostOf, downEscrowOf, type BalancingClearingCall, type BalancingOffer } from "../../agents/markets/balancingClearing.js";
import { readOffers } from "../../agents/markets/offerBook.js";
import { Kind, ONE } from "../contracts/helpers/market.js";
import { Rng } from "../contracts/helpers/random.js";
import { CAP, decodeRevert, deployDayAhead, deployIntraday, eventsOf, FLOOR, type DayAhead } from "./helpers/dayAhead.js";

/**
 * IntradayMarket.clear against the reference balancing clearing on thousands of random books and
 * imbalances, and escrow conservation along the way.
 *
 * One market is deployed; every random book goes into its own 15-minute slot. So that thousands
 * of books are open at once, this market's balancing window opens 30 days ahead (openLeadSeconds
 * is a deployment parameter; the one-hour window itself is tested in IntradayMarket.test.ts);
 * gate closure is the usual 15 minutes before each slot. The books are built by real
 * transactions in rounds: batched placements across slots (placeOffers, so that book indices
 * interleave), changes and new offers, cancellations, re-placements of cancelled offers (same
 * index, maybe the other direction), single changes. Imbalances come from forecasts of three
 * forecasters, submitted early for every slot and then replaced by one of them so that each
 * book's imbalance hits a target drawn for it: zero, inside one side's offered quantity, exactly
 * on the boundary between two offers, exactly all of a side, beyond it, or toward a side with no
 * offer. A model of every offer and forecast predicts each book and imbalance; after every
 * transaction token.balanceOf(market) == totalEscrow == the model's sum of open downward escrows.
 *
 * Then slot by slot, inside each clearing window: `clear` (as an eth_call) accepts the reference
 * clearing of the model's book and rejects perturbations of it (price +-1, volume +-1, an
 * activation moved, an activation on the idle side, an offer left out, an activation list of
 * the wrong length, two offers swapped, another slot's offer, the other side's offer, an offer
 * listed twice) with the exact custom error and arguments. A sample is cleared by real
 * transactions and checked: book read back from the chain, activations, refunds, cost to the
 * settlement pool, activationOf, slotResult, escrow. Finally a sample of uncleared slots, once
 * started, is cancelled out and refunded.
 */

const { ethers, networkHelpers } = await network.create();

const SEED = 0xba1a_4ce;
const BOOKS = 2_000;
const NAMED = 16;
const EXTRA = 24;
/** One real clearing every this many books (the rest are checked with eth_call only). */
const REAL_CLEAR_EVERY = 12;
/** Perturbations of each book's clearing checked (drawn from every applicable one). */
const PERTURBATIONS_PER_BOOK = 5;
/** Offers per placeOffers transaction. */
const CHUNK = 100;
/** Slots per submitForecasts transaction. */
const FORECAST_CHUNK = 200;
const SLOT_SECONDS = 900n;
const OPEN_LEAD = 30n * 86_400n;
const GATE_LEAD = 900n;

type BookKind = "random" | "empty" | "single" | "oneSide" | "allCancelled" | "bigTies";
type Target = "zero" | "within" | "boundary" | "all" | "beyond" | "emptySide";

interface ModelOffer {
  isUp: boolean;
  qtyWh: bigint;
  price: bigint;
  index: number;
}

interface ModelBook {
  slot: bigint;
  kind: BookKind;
  offers: Map<string, ModelOffer>;
  size: number;
  /** Deviation of each forecaster. */
  forecasts: Map<string, bigint>;
  cleared: boolean;
  target?: Target;
}

interface Trader {
  address: string;
  signer: Signer;
}

interface Input {
  slot: bigint;
  isUp: boolean;
  qtyWh: bigint;
  price: bigint;
}

describe("IntradayMarket clearing property", function () {
  this.timeout(900_000);

  it(`accepts exactly the reference clearing of ${BOOKS} random books and imbalances; escrow is conserved throughout`, async () => {
    const rng = new Rng(SEED);
    const names = Array.from({ length: NAMED }, (_, k) => `t${k}`);
    const da = await deployDayAhead(ethers, networkHelpers, {
      participants: [...names.map((name, k) => ({ name, kind: k % 2 === 0 ? Kind.Storage : Kind.Prosumer, deposit: 0n })), { name: "slack", kind: Kind.SlackUnit, deposit: 0n }],
      walletTokens: 100_000n * ONE,
    });
    const { market } = da;
    const { intraday, address } = await deployIntraday(da, { slotSeconds: SLOT_SECONDS, openLead: OPEN_LEAD, gateLead: GATE_LEAD, floor: FLOOR, cap: CAP });
    const token = market.token;
    const tokenAddress = await token.getAddress();
    const traders: Trader[] = names.map((n) => ({ address: market.p(n).address, signer: market.p(n).signer }));
    for (const t of traders) await token.connect(t.signer).approve(address, MaxUint256);
    traders.push(...(await extraTraders(da, address, EXTRA)));
    const traderOf = new Map(traders.map((t) => [t.address, t]));
    const forecasters = traders.slice(0, 3);

    // ------------------------------------------------------------------ the model
    const now = BigInt(await networkHelpers.time.latest());
    const firstSlot = now / SLOT_SECONDS + 24n; // six hours ahead: the rounds below take a few thousand blocks
    const books: ModelBook[] = [];
    const kinds: [BookKind, number][] = [
      ["empty", 0.04],
      ["single", 0.06],
      ["oneSide", 0.08],
      ["allCancelled", 0.04],
      ["bigTies", 0.04],
      ["random", 1],
    ];
    for (let k = 0; k < BOOKS; k++) {
      let r = rng.next();
      const kind = (kinds.find(([, p]) => (r -= p) < 0) ?? kinds[kinds.length - 1]!)[0];
      books.push({ slot: firstSlot + BigInt(k), kind, offers: new Map(), size: 0, forecasts: new Map(), cleared: false });
    }
    const lastSlot = books[books.length - 1]!.slot;
    const [opensAt] = await intraday.window(lastSlot);
    expect(opensAt, "every book's window is open from the start").to.be.lessThan(now);
    const bySlot = new Map(books.map((b) => [b.slot, b]));
    let modelEscrow = 0n;
    const wallet = new Map<string, bigint>();
    for (const t of traders) wallet.set(t.address, await token.balanceOf(t.address));
    const escrowOfOffer = (o: ModelOffer) => (o.isUp ? 0n : downEscrowOf(o.qtyWh, o.price));

    /** Applies one placement or change to the model; returns the escrow delta. */
    function apply(account: string, input: Input): bigint {
      const book = bySlot.get(input.slot)!;
      const old = book.offers.get(account);
      const before = old === undefined ? 0n : escrowOfOffer(old);
      const index = old === undefined ? book.size++ : old.index;
      const next = { isUp: input.isUp, qtyWh: input.qtyWh, price: input.price, index };
      book.offers.set(account, next);
      const delta = escrowOfOffer(next) - before;
      modelEscrow += delta;
      wallet.set(account, wallet.get(account)! - delta);
      return delta;
    }

    let checks = 0;
    async function checkEscrow(where: string): Promise<void> {
      const [balance, total] = await Promise.all([token.balanceOf(address), intraday.totalEscrow()]);
      expect([balance, total], `${where}: balanceOf(market), totalEscrow == model's open downward escrows`).to.deep.equal([modelEscrow, modelEscrow]);
      checks++;
    }

    async function checkWallets(where: string): Promise<void> {
      const balances = await Promise.all(traders.map((t) => token.balanceOf(t.address)));
      expect(balances, `${where}: wallets`).to.deep.equal(traders.map((t) => wallet.get(t.address)));
    }

    // ------------------------------------------------------------------ random offers
    const priceModes = ["wide", "ties", "equal"] as const;
    const bookStyle = new Map<bigint, { mode: (typeof priceModes)[number]; tiePrices: bigint[]; mid: bigint }>();
    for (const b of books) {
      const mid = rng.big(FLOOR + 20_000n, CAP - 20_000n);
      const tiePrices = Array.from({ length: 1 + rng.int(3) }, () => mid + rng.big(0n, 3n));
      bookStyle.set(b.slot, { mode: b.kind === "bigTies" ? "ties" : rng.pick(priceModes), tiePrices, mid });
    }
    function randomPrice(slot: bigint): bigint {
      const s = bookStyle.get(slot)!;
      switch (s.mode) {
        case "wide":
          return rng.big(FLOOR, CAP);
        case "ties":
          return rng.pick(s.tiePrices);
        case "equal":
          return s.mid;
      }
    }
    const randomQty = (): bigint => {
      const r = rng.next();
      if (r < 0.15) return rng.pick([1n, 10n, 999n, 1_000n]);
      if (r < 0.2) return rng.big(1n, 9n);
      return rng.big(1n, 5_000n);
    };
    const oneSide = new Map<bigint, boolean>();
    for (const b of books) oneSide.set(b.slot, rng.chance(0.5));
    const directionFor = (slot: bigint): boolean => {
      const b = bySlot.get(slot)!;
      return b.kind === "oneSide" ? oneSide.get(slot)! : rng.chance(0.5);
    };
    const input = (slot: bigint, isUp = directionFor(slot)): Input => ({ slot, isUp, qtyWh: randomQty(), price: randomPrice(slot) });

    /** Sends each trader's inputs in chunks, the chunks of all traders interleaved at random. */
    async function sendBatches(perTrader: Map<Trader, Input[]>, where: string): Promise<void> {
      const chunks: [Trader, Input[]][] = [];
      for (const [t, inputs] of perTrader) {
        const shuffled = rng.shuffle(inputs);
        for (let i = 0; i < shuffled.length; i += CHUNK) chunks.push([t, shuffled.slice(i, i + CHUNK)]);
      }
      for (const [t, inputs] of rng.shuffle(chunks)) {
        const receipt = await (await intraday.connect(t.signer).placeOffers(t.address, inputs, { gasLimit: 16_000_000n })).wait();
        let net = 0n;
        for (const i of inputs) net += apply(t.address, i);
        const transfers = eventsOf(receipt, token.interface, tokenAddress, "Transfer");
        expect(transfers.length, `${where}: transfers of a batch`).to.equal(net === 0n ? 0 : 1);
        if (net !== 0n) {
          const e = transfers[0]!;
          expect([e.args.from, e.args.to, e.args.value]).to.deep.equal(net > 0n ? [t.address, address, net] : [address, t.address, -net]);
        }
        await checkEscrow(`${where} (batch of ${inputs.length} by ${t.address})`);
      }
      await checkWallets(where);
    }

    const offerCount = (b: ModelBook): number => {
      switch (b.kind) {
        case "empty":
          return 0;
        case "single":
          return 1;
        case "bigTies":
          return 20 + rng.int(traders.length - 20);
        default:
          return rng.chance(0.08) ? 12 + rng.int(traders.length - 12) : 2 + rng.int(10);
      }
    };

    // Early forecasts of every slot by the three forecasters.
    const forecastSlots = async (f: Trader, values: Map<bigint, bigint>, where: string) => {
      const slots = [...values.keys()].sort((x, y) => (x < y ? -1 : 1));
      for (let i = 0; i < slots.length; ) {
        // Consecutive runs only.
        let j = i + 1;
        while (j < slots.length && j - i < FORECAST_CHUNK && slots[j] === slots[j - 1]! + 1n) j++;
        const run = slots.slice(i, j);
        await intraday.connect(f.signer).submitForecasts(f.address, run[0]!, run.map((s) => values.get(s)!), { gasLimit: 16_000_000n });
        for (const s of run) bySlot.get(s)!.forecasts.set(f.address, values.get(s)!);
        i = j;
      }
      // The market's imbalance is the sum of the model's deviations (no schedules here).
      for (const s of rng.shuffle(slots).slice(0, 20)) {
        const b = bySlot.get(s)!;
        expect((await intraday.book(s)).imbalanceWh, `${where}: imbalance of ${s}`).to.equal(sumOf([...b.forecasts.values()]));
        expect(await intraday.forecastOf(s, f.address), `${where}: forecastOf ${s}`).to.deep.equal([true, values.get(s)]);
      }
    };
    for (const f of forecasters) {
      const values = new Map<bigint, bigint>();
      for (const b of books) values.set(b.slot, rng.chance(0.2) ? 0n : rng.big(-100_000n, 100_000n));
      await forecastSlots(f, values, `early forecasts of ${f.address}`);
    }

    // Round 1: first placements.
    const round1 = new Map<Trader, Input[]>(traders.map((t) => [t, []]));
    for (const b of books) {
      for (const t of rng.shuffle(traders).slice(0, offerCount(b))) round1.get(t)!.push(input(b.slot));
    }
    await sendBatches(round1, "round 1 (placements)");

    // Round 2: changes of some offers (same direction), and new offers in random books.
    const round2 = new Map<Trader, Input[]>(traders.map((t) => [t, []]));
    for (const b of books) {
      if (b.kind !== "random" && b.kind !== "bigTies") continue;
      for (const t of traders) {
        const o = b.offers.get(t.address);
        if (o !== undefined && rng.chance(0.25)) round2.get(t)!.push(input(b.slot, o.isUp));
        else if (o === undefined && rng.chance(0.04)) round2.get(t)!.push(input(b.slot));
      }
    }
    await sendBatches(round2, "round 2 (changes and new offers)");

    // Round 3: cancellations, one transaction each.
    const cancelled: [ModelBook, string][] = [];
    for (const b of books) {
      if (b.kind === "single") continue;
      for (const [account, o] of b.offers) {
        if (o.qtyWh === 0n) continue;
        if (b.kind !== "allCancelled" && !rng.chance(0.07)) continue;
        await expect(intraday.connect(traderOf.get(account)!.signer).cancelOffer(account, b.slot))
          .to.emit(intraday, "OfferCancelled")
          .withArgs(account, b.slot, escrowOfOffer(o));
        modelEscrow -= escrowOfOffer(o);
        wallet.set(account, wallet.get(account)! + escrowOfOffer(o));
        o.qtyWh = 0n;
        cancelled.push([b, account]);
        await checkEscrow(`cancel ${account} in ${b.slot}`);
      }
    }
    await checkWallets("round 3 (cancellations)");

    // Round 4: re-placements of cancelled offers (batched; sometimes in the other direction).
    const round4 = new Map<Trader, Input[]>(traders.map((t) => [t, []]));
    for (const [b, account] of cancelled) {
      if (b.kind !== "random" && b.kind !== "bigTies") continue;
      if (!rng.chance(0.35)) continue;
      round4.get(traderOf.get(account)!)!.push(input(b.slot));
    }
    await sendBatches(round4, "round 4 (re-placements)");

    // Round 5: single changes and single placements.
    for (const b of rng.shuffle(books).slice(0, 150)) {
      if (b.kind !== "random") continue;
      const open = [...b.offers].filter(([, o]) => o.qtyWh > 0n);
      // A change of an open offer (same direction), or any trader's offer: new, re-placed or changed.
      const account = open.length > 0 && rng.chance(0.7) ? rng.pick(open)[0] : rng.pick(traders).address;
      const o = b.offers.get(account);
      const i = input(b.slot, o !== undefined && o.qtyWh > 0n ? o.isUp : directionFor(b.slot));
      await intraday.connect(traderOf.get(account)!.signer).placeOffers(account, [i]);
      apply(account, i);
      await checkEscrow(`placeOffers ${account} in ${b.slot}`);
    }
    await checkWallets("round 5 (single changes)");

    // Final forecasts: the first forecaster's deviation is replaced so that each imbalance hits its target.
    const targets: [Target, number][] = [
      ["zero", 0.08],
      ["boundary", 0.14],
      ["all", 0.1],
      ["beyond", 0.12],
      ["emptySide", 0.04],
      ["within", 1],
    ];
    const finals = new Map<bigint, bigint>();
    for (const b of books) {
      let r = rng.next();
      b.target = (targets.find(([, p]) => (r -= p) < 0) ?? targets[targets.length - 1]!)[0];
      const want = targetImbalance(b, rng);
      const others = sumOf([...b.forecasts].filter(([f]) => f !== forecasters[0]!.address).map(([, v]) => v));
      finals.set(b.slot, want - others);
    }
    await forecastSlots(forecasters[0]!, finals, "final forecasts");
    for (const b of rng.shuffle(books).slice(0, 40)) expect((await intraday.book(b.slot)).imbalanceWh, `imbalance of ${b.slot}`).to.equal(imbalanceOf(b));

    // ------------------------------------------------------------------ clearing, slot by slot
    const modelBook = (b: ModelBook): BalancingOffer[] =>
      [...b.offers].map(([account, o]) => ({ account, isUp: o.isUp, qtyWh: o.qtyWh, price: o.price, index: o.index }));
    const stats = {
      rejectedBy: new Map<string, number>(),
      accepted: 0,
      rejected: 0,
      real: 0,
      up: 0,
      down: 0,
      none: 0,
      partialMarginal: 0,
      targets: new Map<string, number>(),
      sizes: new Map<string, number>(),
    };
    const iface = intraday.interface;
    const call = (c: BalancingClearingCall) => ethers.provider.send("eth_call", [{ to: address, data: iface.encodeFunctionData("clear", [c]) }, "latest"]);
    async function expectRejected(c: BalancingClearingCall, name: string, args: unknown[], label: string): Promise<void> {
      let error: { name: string; args: unknown[] } | undefined;
      try {
        await call(c);
      } catch (e) {
        error = decodeRevert(e, iface);
      }
      expect(error, `slot ${c.slot}: ${label} was accepted`).to.not.equal(undefined);
      expect(error, `slot ${c.slot}: ${label}`).to.deep.equal({ name, args });
      stats.rejected++;
      stats.rejectedBy.set(label, (stats.rejectedBy.get(label) ?? 0) + 1);
    }

    for (const b of books) {
      await networkHelpers.time.increaseTo(b.slot * SLOT_SECONDS - GATE_LEAD + 1n);
      const imbalance = imbalanceOf(b);
      const good = balancingCallFor(b.slot, imbalance, modelBook(b));
      stats.sizes.set(b.kind, (stats.sizes.get(b.kind) ?? 0) + good.ups.length + good.downs.length);
      stats.targets.set(b.target!, (stats.targets.get(b.target!) ?? 0) + 1);
      if (good.volumeWh === 0n) stats.none++;
      else if (imbalance > 0n) stats.up++;
      else stats.down++;
      await call(good);
      stats.accepted++;
      await perturbations(b, good, traders, rng, expectRejected);

      if (Number(b.slot - firstSlot) % REAL_CLEAR_EVERY === 0 || (b.kind !== "random" && rng.chance(0.2))) {
        const fromChain = await readOffers(intraday, b.slot);
        expect(fromChain, `slot ${b.slot}: book read from the chain`).to.deep.equal(modelBook(b).sort((x, y) => x.index - y.index));
        const bookEscrow = sumOf([...b.offers.values()].map(escrowOfOffer));
        expect((await intraday.book(b.slot)).escrow, `slot ${b.slot}: book escrow`).to.equal(bookEscrow);
        const poolBefore = (await market.settlement.slotState(b.slot)).pool;
        const receipt = await (await intraday.clear(good)).wait();
        const refunds = new Map<string, bigint>();
        let cost = 0n;
        good.downs.forEach((account, k) => {
          const o = b.offers.get(account)!;
          const c = downCostOf(good.downActivationsWh[k]!, good.price);
          cost += c;
          if (escrowOfOffer(o) - c > 0n) refunds.set(account, escrowOfOffer(o) - c);
        });
        const activated = eventsOf(receipt, iface, address, "OfferActivated").map((e) => [e.args.account, e.args.isUp, e.args.activatedWh, e.args.refund]);
        // One event per activated offer, ups then downs in list order; offers not activated get none.
        expect(activated, `slot ${b.slot}: OfferActivated`).to.deep.equal([
          ...good.ups.map((x, k) => [x, true, good.upActivationsWh[k], 0n]).filter(([, , w]) => (w as bigint) > 0n),
          ...good.downs.map((x, k) => [x, false, good.downActivationsWh[k], refunds.get(x) ?? 0n]).filter(([, , w]) => (w as bigint) > 0n),
        ]);
        const transfers = eventsOf(receipt, token.interface, tokenAddress, "Transfer").map((e) => [e.args.from, e.args.to, e.args.value]);
        const expected = good.downs.filter((x) => refunds.has(x)).map((x) => [address, x, refunds.get(x)]);
        if (cost > 0n) expected.push([address, market.settlementAddress, cost]);
        expect(transfers, `slot ${b.slot}: refunds and cost`).to.deep.equal(expected);
        const paid = eventsOf(receipt, market.settlement.interface, market.settlementAddress, "SchedulePaid").map((e) => [e.args.slot, e.args.market, e.args.amount]);
        expect(paid, `slot ${b.slot}: SchedulePaid`).to.deep.equal(cost > 0n ? [[b.slot, address, cost]] : []);
        expect((await market.settlement.slotState(b.slot)).pool - poolBefore, `slot ${b.slot}: pool`).to.equal(cost);
        const up = imbalance > 0n;
        expect(await intraday.slotResult(b.slot), `slot ${b.slot}: slotResult`).to.deep.equal(
          good.volumeWh === 0n ? [0n, 0n, 0n, 0n] : up ? [good.volumeWh, 0n, good.price, 0n] : [0n, good.volumeWh, 0n, good.price],
        );
        for (const [account, act] of [...good.ups.map((x, k) => [x, -good.upActivationsWh[k]!] as const), ...good.downs.map((x, k) => [x, good.downActivationsWh[k]!] as const)]) {
          expect(await intraday.activationOf(b.slot, account), `slot ${b.slot}: activation of ${account}`).to.deep.equal([act, good.price]);
        }
        for (const [account, refund] of refunds) wallet.set(account, wallet.get(account)! + refund);
        modelEscrow -= bookEscrow;
        b.cleared = true;
        stats.real++;
        await checkEscrow(`clear ${b.slot}`);
        const side = up ? good.ups.map((x) => b.offers.get(x)!) : good.downs.map((x) => b.offers.get(x)!);
        const acts = up ? good.upActivationsWh : good.downActivationsWh;
        if (acts.some((w, k) => w > 0n && w < side[k]!.qtyWh)) stats.partialMarginal++;
      }
    }
    await checkWallets("after clearing");

    // ------------------------------------------------------------------ cancel after the slots start
    await networkHelpers.time.increaseTo(lastSlot * SLOT_SECONDS + 1n);
    for (const b of rng.shuffle(books.filter((x) => !x.cleared)).slice(0, 60)) {
      for (const [account, o] of rng.shuffle([...b.offers])) {
        if (o.qtyWh === 0n) continue;
        await expect(intraday.connect(traderOf.get(account)!.signer).cancelOffer(account, b.slot))
          .to.emit(intraday, "OfferCancelled")
          .withArgs(account, b.slot, escrowOfOffer(o));
        modelEscrow -= escrowOfOffer(o);
        wallet.set(account, wallet.get(account)! + escrowOfOffer(o));
        o.qtyWh = 0n;
        await checkEscrow(`cancel after start ${account} in ${b.slot}`);
      }
    }
    await checkWallets("after the cancels");

    // The run exercised what it claims to.
    expect(stats.accepted).to.equal(BOOKS);
    expect(stats.up).to.be.greaterThan(BOOKS / 4);
    expect(stats.down).to.be.greaterThan(BOOKS / 4);
    expect(stats.none).to.be.greaterThan(BOOKS / 20);
    expect(stats.partialMarginal).to.be.greaterThan(20);
    expect(stats.rejected).to.be.greaterThan(BOOKS * 4);
    expect([...stats.rejectedBy.keys()].sort()).to.deep.equal([...PERTURBATION_LABELS].sort());
    for (const [label, count] of stats.rejectedBy) expect(count, label).to.be.greaterThan(300);
    console.log(
      `      ${stats.accepted} books (${[...stats.sizes].map(([k, v]) => `${k}: ${v} offers`).join(", ")}); imbalance targets ${[...stats.targets].map(([k, v]) => `${k} ${v}`).join(", ")}; ` +
        `${stats.up} up, ${stats.down} down, ${stats.none} nothing activated; ${stats.rejected} perturbations rejected (${[...stats.rejectedBy].map(([k, v]) => `${k} ${v}`).join(", ")}); ` +
        `${stats.real} cleared by transaction (${stats.partialMarginal} with a partial marginal offer); ${checks} escrow checks`,
    );
  });
});

const PERTURBATION_LABELS = [
  "price + 1",
  "price - 1",
  "volume + 1",
  "volume - 1",
  "activation moved",
  "activation on the idle side",
  "offer left out",
  "activation list length",
  "two offers swapped",
  "another slot's offer",
  "the other side's offer",
  "an offer listed twice",
] as const;

function sumOf(xs: readonly bigint[]): bigint {
  return xs.reduce((a, b) => a + b, 0n);
}

function imbalanceOf(b: ModelBook): bigint {
  return sumOf([...b.forecasts.values()]);
}

/** An imbalance for `b` of its drawn target kind, from the model's book (sorted by the auction's priority). */
function targetImbalance(b: ModelBook, rng: Rng): bigint {
  const open = [...b.offers.values()].filter((o) => o.qtyWh > 0n);
  const sides = [true, false].map((isUp) => ({
    isUp,
    sorted: open.filter((o) => o.isUp === isUp).sort((x, y) => (x.price !== y.price ? (x.price < y.price ? -1 : 1) * (isUp ? 1 : -1) : x.index - y.index)),
  }));
  const nonEmpty = sides.filter((s) => s.sorted.length > 0);
  const sign = (isUp: boolean) => (isUp ? 1n : -1n);
  const total = (s: (typeof sides)[number]) => sumOf(s.sorted.map((o) => o.qtyWh));
  switch (b.target) {
    case "zero":
      return 0n;
    case "emptySide": {
      const empty = sides.filter((s) => s.sorted.length === 0);
      const isUp = empty.length > 0 ? rng.pick(empty).isUp : rng.chance(0.5);
      return sign(isUp) * rng.big(1n, 5_000n);
    }
    default:
      if (nonEmpty.length === 0) return rng.big(-5_000n, 5_000n);
  }
  const s = rng.pick(nonEmpty);
  const all = total(s);
  switch (b.target) {
    case "all":
      return sign(s.isUp) * all;
    case "beyond":
      return sign(s.isUp) * (all + rng.big(1n, 5_000n));
    case "boundary": {
      const k = rng.int(s.sorted.length);
      return sign(s.isUp) * sumOf(s.sorted.slice(0, k + 1).map((o) => o.qtyWh));
    }
    default:
      return sign(s.isUp) * rng.big(1n, all);
  }
}

/**
 * PERTURBATIONS_PER_BOOK of the applicable perturbations of the correct clearing `good`, drawn
 * at random, each checked for the exact error the contract must give.
 */
async function perturbations(
  b: ModelBook,
  good: BalancingClearingCall,
  traders: Trader[],
  rng: Rng,
  check: (c: BalancingClearingCall, name: string, args: unknown[], label: (typeof PERTURBATION_LABELS)[number]) => Promise<void>,
): Promise<void> {
  const cases: Parameters<typeof check>[] = [];
  const add = (...args: Parameters<typeof check>): void => void cases.push(args);
  const copy = (): BalancingClearingCall => ({
    ...good,
    ups: [...good.ups],
    downs: [...good.downs],
    upActivationsWh: [...good.upActivationsWh],
    downActivationsWh: [...good.downActivationsWh],
  });
  const { price, volumeWh } = good;
  const n = good.ups.length + good.downs.length;
  const imbalance = imbalanceOf(b);

  add({ ...copy(), price: price + 1n }, "BalancingWrongResult", [price, price + 1n, volumeWh, volumeWh], "price + 1");
  if (price > 0n) add({ ...copy(), price: price - 1n }, "BalancingWrongResult", [price, price - 1n, volumeWh, volumeWh], "price - 1");
  add({ ...copy(), volumeWh: volumeWh + 1n }, "BalancingWrongResult", [price, price, volumeWh, volumeWh + 1n], "volume + 1");
  if (volumeWh > 0n) add({ ...copy(), volumeWh: volumeWh - 1n }, "BalancingWrongResult", [price, price, volumeWh, volumeWh - 1n], "volume - 1");

  // Both sides as [accounts, activations, isUp, the side's activations in `good`].
  const sides = (c: BalancingClearingCall) =>
    [
      [c.ups, c.upActivationsWh, true, good.upActivationsWh],
      [c.downs, c.downActivationsWh, false, good.downActivationsWh],
    ] as const;
  // The contract checks the up side's activations first, so a change on the down side is found only when the ups are right.
  const wrongActivation = (c: BalancingClearingCall): unknown[] => {
    for (const [accounts, acts, , goodActs] of sides(c)) {
      for (let k = 0; k < accounts.length; k++) if (acts[k] !== goodActs[k]) return [accounts[k], goodActs[k], acts[k]];
    }
    throw new Error("no activation differs");
  };

  // An activation moved from one offer to another of the same side.
  {
    const c = copy();
    const candidates = sides(c).filter(([accounts, acts]) => accounts.length >= 2 && acts.some((w) => w > 0n));
    if (candidates.length > 0) {
      const [accounts, acts] = rng.pick(candidates);
      const from = rng.pick(acts.map((w, k) => [w, k] as const).filter(([w]) => w > 0n))[1];
      let to = rng.int(accounts.length - 1);
      if (to >= from) to++;
      const moved = rng.big(1n, acts[from]!);
      acts[from] = acts[from]! - moved;
      acts[to] = acts[to]! + moved;
      add(c, "BalancingWrongActivation", wrongActivation(c), "activation moved");
    }
  }

  // An activation on the side the imbalance does not need (either side at zero imbalance).
  {
    const c = copy();
    const idle = sides(c).filter(([accounts, , isUp]) => accounts.length > 0 && (imbalance === 0n || isUp !== imbalance > 0n));
    if (idle.length > 0) {
      const [accounts, acts] = rng.pick(idle);
      const k = rng.int(accounts.length);
      acts[k] = rng.big(1n, 1_000n);
      add(c, "BalancingWrongActivation", wrongActivation(c), "activation on the idle side");
    }
  }

  // An offer left out.
  if (n > 0) {
    const c = copy();
    const [accounts, acts] = rng.pick(sides(c).filter(([a]) => a.length > 0));
    const k = rng.int(accounts.length);
    accounts.splice(k, 1);
    acts.splice(k, 1);
    add(c, "BalancingIncomplete", [BigInt(n - 1), BigInt(n)], "offer left out");
  }

  // Activation lists of the wrong length.
  {
    const c = copy();
    const [, acts] = rng.pick(sides(c));
    if (acts.length > 0 && rng.chance(0.5)) acts.pop();
    else acts.push(0n);
    add(c, "BalancingLengthMismatch", [], "activation list length");
  }

  // Two offers of one side swapped: the list is out of order right after the first position.
  {
    const c = copy();
    const candidates = sides(c).filter(([a]) => a.length >= 2);
    if (candidates.length > 0) {
      const [accounts, acts, isUp] = rng.pick(candidates);
      const i = rng.int(accounts.length - 1);
      const j = i + 1 + rng.int(accounts.length - 1 - i);
      [accounts[i], accounts[j]] = [accounts[j]!, accounts[i]!];
      [acts[i], acts[j]] = [acts[j]!, acts[i]!];
      add(c, "BalancingNotSorted", [isUp, BigInt(i + 1)], "two offers swapped");
    }
  }

  // Another slot's offer (an account without an offer here) in place of one of this slot's.
  {
    const absent = traders.filter((t) => !b.offers.has(t.address));
    if (n > 0 && absent.length > 0) {
      const c = copy();
      const [accounts] = rng.pick(sides(c).filter(([a]) => a.length > 0));
      const stranger = rng.pick(absent).address;
      accounts[rng.int(accounts.length)] = stranger;
      add(c, "BalancingWrongOffer", [stranger], "another slot's offer");
    }
  }

  // An offer on the other side's list.
  if (n > 0) {
    const c = copy();
    const from = rng.pick(sides(c).filter(([a]) => a.length > 0));
    const to = sides(c).find((s) => s[2] !== from[2])!;
    const k = rng.int(from[0].length);
    const [account] = from[0].splice(k, 1);
    const [act] = from[1].splice(k, 1);
    const at = rng.int(to[0].length + 1);
    to[0].splice(at, 0, account!);
    to[1].splice(at, 0, act!);
    add(c, "BalancingWrongOffer", [account], "the other side's offer");
  }

  // An offer listed twice (a later position repeats an earlier one).
  {
    const c = copy();
    const candidates = sides(c).filter(([a]) => a.length >= 2);
    if (candidates.length > 0) {
      const [accounts] = rng.pick(candidates);
      const k = 1 + rng.int(accounts.length - 1);
      const j = rng.int(k);
      accounts[k] = accounts[j]!;
      add(c, "BalancingWrongOffer", [accounts[j]], "an offer listed twice");
    }
  }

  for (const args of rng.shuffle(cases).slice(0, PERTURBATIONS_PER_BOOK)) await check(...args);
}

/** `n` more registered traders with wallets of their own (ether for gas, tokens, approval of the market). */
async function extraTraders(da: DayAhead, market: string, n: number): Promise<Trader[]> {
  const wallets = Array.from({ length: n }, (_, k) => new Wallet(id(`balancing-property/trader/${k}`), ethers.provider));
  await da.market.registry.connect(da.market.admin).registerBatch(
    wallets.map((w, k) => ({
      account: w.address,
      meterId: encodeBytes32String(`MTR-bal-extra-${k}`),
      meterKey: new Wallet(id(`balancing-property/meter/${k}`)).address,
      kind: Kind.Storage,
    })),
  );
  const out: Trader[] = [];
  for (const w of wallets) {
    await networkHelpers.setBalance(w.address, 10n ** 22n);
    await da.token.connect(da.market.admin).mint(w.address, 100_000n * ONE);
    await da.token.connect(w).approve(market, MaxUint256);
    out.push({ address: w.address, signer: w });
  }
  return out;
}
