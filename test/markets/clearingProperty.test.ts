import { expect } from "chai";
import { network } from "hardhat";
import { MaxUint256, Wallet, encodeBytes32String, id, type Signer } from "ethers";
import { buyCostOf, clearingCallFor, escrowOf, type BookOrder, type DayAheadClearingCall } from "../../agents/markets/dayAheadClearing.js";
import { readBook } from "../../agents/markets/orderBook.js";
import { Kind, ONE } from "../contracts/helpers/market.js";
import { Rng } from "../contracts/helpers/random.js";
import { CAP, DAY, decodeRevert, deployDayAhead, eventsOf, FLOOR, SLOTS_PER_DAY, type DayAhead } from "./helpers/dayAhead.js";

/**
 * The contract against the reference clearing on thousands of random books, and escrow
 * conservation along the way.
 *
 * One market is deployed; every random book goes into its own slot (96 a day, over as many days
 * as needed). The books are built by real transactions in rounds, as traders would: batched
 * placements across slots (placeOrders, so that book indices interleave), changes and new orders,
 * cancellations, re-placements of cancelled orders (same index, maybe the other side), single
 * changes. A model of every order predicts each book; after every transaction
 * token.balanceOf(market) == totalEscrow == the model's sum of open escrows.
 *
 * Then, day by day after the gate: for each book, `clear.staticCall` accepts the reference
 * clearing of the model's book and rejects each perturbation of it (price +-1, volume +-1, an
 * award moved, an order left out, two orders swapped, a wrong order: another slot's, the other
 * side's, or one listed twice; a length mismatch) with the expected custom error and arguments.
 * A sample is cleared by real transactions and checked: book read back from the chain, refunds,
 * cost to settlement, schedules, escrow. Finally a sample of uncleared slots is reclaimed.
 */

const { ethers, networkHelpers } = await network.create();

const SEED = 0x5eed_da;
const BOOKS = 2_000;
const NAMED = 16;
const EXTRA = 24;
/** One real clearing every this many books (the rest are checked with staticCall only). */
const REAL_CLEAR_EVERY = 12;
/** Perturbations of each book's clearing checked (drawn from every applicable one). */
const PERTURBATIONS_PER_BOOK = 4;
/** Orders per placeOrders transaction (each new order costs ~50k gas; the cap is 2^24 per transaction). */
const CHUNK = 120;

type BookKind = "random" | "empty" | "single" | "oneSide" | "allCancelled" | "bigTies";

interface ModelOrder {
  isSell: boolean;
  qtyWh: bigint;
  price: bigint;
  index: number;
}

interface ModelBook {
  slot: bigint;
  kind: BookKind;
  orders: Map<string, ModelOrder>;
  size: number;
  cleared: boolean;
}

interface Trader {
  address: string;
  signer: Signer;
}

interface Input {
  slot: bigint;
  isSell: boolean;
  qtyWh: bigint;
  price: bigint;
}

describe("DayAheadMarket clearing property", function () {
  this.timeout(300_000);

  it(`accepts exactly the reference clearing of ${BOOKS} random books; escrow is conserved throughout`, async () => {
    const rng = new Rng(SEED);
    const names = Array.from({ length: NAMED }, (_, k) => `t${k}`);
    const da = await deployDayAhead(ethers, networkHelpers, {
      participants: names.map((name, k) => ({ name, kind: k % 2 === 0 ? Kind.Consumer : Kind.Prosumer, deposit: 0n })),
      walletTokens: 100_000n * ONE,
    });
    const { dayAhead, token } = da;
    const traders: Trader[] = names.map((n) => ({ address: da.market.p(n).address, signer: da.market.p(n).signer }));
    traders.push(...(await extraTraders(da, EXTRA)));
    const tokenAddress = await token.getAddress();

    // ------------------------------------------------------------------ the model
    const firstSlot = await da.freshDay();
    const books: ModelBook[] = [];
    const kinds: [BookKind, number][] = [
      ["empty", 0.04],
      ["single", 0.06],
      ["oneSide", 0.06],
      ["allCancelled", 0.04],
      ["bigTies", 0.04],
      ["random", 1],
    ];
    for (let k = 0; k < BOOKS; k++) {
      let r = rng.next();
      const kind = (kinds.find(([, p]) => (r -= p) < 0) ?? kinds[kinds.length - 1]!)[0];
      books.push({ slot: firstSlot + BigInt(k), kind, orders: new Map(), size: 0, cleared: false });
    }
    const bySlot = new Map(books.map((b) => [b.slot, b]));
    let modelEscrow = 0n;
    const wallet = new Map<string, bigint>();
    for (const t of traders) wallet.set(t.address, await token.balanceOf(t.address));
    const escrowOfOrder = (o: ModelOrder) => (o.isSell ? 0n : escrowOf(o.qtyWh, o.price));

    /** Applies one placement or change to the model; returns the escrow delta. */
    function apply(account: string, input: Input): bigint {
      const book = bySlot.get(input.slot)!;
      const old = book.orders.get(account);
      const before = old === undefined ? 0n : escrowOfOrder(old);
      const index = old === undefined ? book.size++ : old.index;
      const next = { isSell: input.isSell, qtyWh: input.qtyWh, price: input.price, index };
      book.orders.set(account, next);
      const delta = escrowOfOrder(next) - before;
      modelEscrow += delta;
      wallet.set(account, wallet.get(account)! - delta);
      return delta;
    }

    let checks = 0;
    async function checkEscrow(where: string): Promise<void> {
      const [balance, total] = await Promise.all([token.balanceOf(da.address), dayAhead.totalEscrow()]);
      expect([balance, total], `${where}: balanceOf(market), totalEscrow == model's open escrows`).to.deep.equal([modelEscrow, modelEscrow]);
      checks++;
    }

    async function checkWallets(where: string): Promise<void> {
      const balances = await Promise.all(traders.map((t) => token.balanceOf(t.address)));
      expect(balances, `${where}: wallets`).to.deep.equal(traders.map((t) => wallet.get(t.address)));
    }

    // ------------------------------------------------------------------ random orders
    const priceModes = ["wide", "ties", "equal", "crossing"] as const;
    const bookStyle = new Map<bigint, { mode: (typeof priceModes)[number]; tiePrices: bigint[]; mid: bigint }>();
    for (const b of books) {
      const mid = rng.big(FLOOR + 20_000n, CAP - 20_000n);
      const tiePrices = Array.from({ length: 1 + rng.int(3) }, () => mid + rng.big(0n, 3n));
      bookStyle.set(b.slot, { mode: b.kind === "bigTies" ? "ties" : rng.pick(priceModes), tiePrices, mid });
    }
    function randomPrice(slot: bigint, isSell: boolean): bigint {
      const s = bookStyle.get(slot)!;
      switch (s.mode) {
        case "wide":
          return rng.big(FLOOR, CAP);
        case "ties":
          return rng.pick(s.tiePrices);
        case "equal":
          return s.mid;
        case "crossing":
          // Buys mostly above sells, overlapping: about half the book trades.
          return isSell ? rng.big(FLOOR, min(s.mid + 30_000n, CAP)) : rng.big(max(s.mid - 30_000n, FLOOR), CAP);
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
    const sideFor = (slot: bigint): boolean => {
      const b = bySlot.get(slot)!;
      return b.kind === "oneSide" ? oneSide.get(slot)! : rng.chance(0.5);
    };
    const input = (slot: bigint, isSell = sideFor(slot)): Input => ({ slot, isSell, qtyWh: randomQty(), price: randomPrice(slot, isSell) });

    /** Sends each trader's inputs in chunks, the chunks of all traders interleaved at random. */
    async function sendBatches(perTrader: Map<Trader, Input[]>, where: string): Promise<void> {
      const chunks: [Trader, Input[]][] = [];
      for (const [t, inputs] of perTrader) {
        const shuffled = rng.shuffle(inputs);
        for (let i = 0; i < shuffled.length; i += CHUNK) chunks.push([t, shuffled.slice(i, i + CHUNK)]);
      }
      for (const [t, inputs] of rng.shuffle(chunks)) {
        const receipt = await (await dayAhead.connect(t.signer).placeOrders(inputs, { gasLimit: 16_000_000n })).wait();
        let net = 0n;
        for (const i of inputs) net += apply(t.address, i);
        const transfers = eventsOf(receipt, token.interface, tokenAddress, "Transfer");
        // One escrow transfer per batch at most, for the net amount.
        expect(transfers.length, `${where}: transfers of a batch`).to.equal(net === 0n ? 0 : 1);
        if (net !== 0n) {
          const e = transfers[0]!;
          expect([e.args.from, e.args.to, e.args.value]).to.deep.equal(net > 0n ? [t.address, da.address, net] : [da.address, t.address, -net]);
        }
        await checkEscrow(`${where} (batch of ${inputs.length} by ${t.address})`);
      }
      await checkWallets(where);
    }

    const orderCount = (b: ModelBook): number => {
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

    // Round 1: first placements.
    const round1 = new Map<Trader, Input[]>(traders.map((t) => [t, []]));
    for (const b of books) {
      for (const t of rng.shuffle(traders).slice(0, orderCount(b))) round1.get(t)!.push(input(b.slot));
    }
    await sendBatches(round1, "round 1 (placements)");

    // Round 2: changes of some orders (same side), and new orders in random books.
    const round2 = new Map<Trader, Input[]>(traders.map((t) => [t, []]));
    for (const b of books) {
      if (b.kind !== "random" && b.kind !== "bigTies") continue;
      for (const t of traders) {
        const o = b.orders.get(t.address);
        if (o !== undefined && rng.chance(0.25)) round2.get(t)!.push(input(b.slot, o.isSell));
        else if (o === undefined && rng.chance(0.04)) round2.get(t)!.push(input(b.slot));
      }
    }
    await sendBatches(round2, "round 2 (changes and new orders)");

    // Round 3: cancellations, one transaction each.
    const traderOf = new Map(traders.map((t) => [t.address, t]));
    const cancelled: [ModelBook, string][] = [];
    for (const b of books) {
      if (b.kind === "single") continue;
      for (const [account, o] of b.orders) {
        if (o.qtyWh === 0n) continue;
        if (b.kind !== "allCancelled" && !rng.chance(0.07)) continue;
        const t = traderOf.get(account)!;
        await expect(dayAhead.connect(t.signer).cancelOrder(b.slot))
          .to.emit(dayAhead, "OrderCancelled")
          .withArgs(account, b.slot, escrowOfOrder(o));
        modelEscrow -= escrowOfOrder(o);
        wallet.set(account, wallet.get(account)! + escrowOfOrder(o));
        o.qtyWh = 0n;
        cancelled.push([b, account]);
        await checkEscrow(`cancel ${account} in ${b.slot}`);
      }
    }
    await checkWallets("round 3 (cancellations)");

    // Round 4: re-placements of cancelled orders (batched; sometimes on the other side).
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
      const open = [...b.orders].filter(([, o]) => o.qtyWh > 0n);
      if (open.length > 0 && rng.chance(0.7)) {
        const [account, o] = rng.pick(open);
        const i = input(b.slot, o.isSell);
        await dayAhead.connect(traderOf.get(account)!.signer).changeOrder(i);
        apply(account, i);
        await checkEscrow(`changeOrder ${account} in ${b.slot}`);
      } else {
        const absent = traders.filter((t) => !b.orders.has(t.address));
        if (absent.length === 0) continue;
        const t = rng.pick(absent);
        const i = input(b.slot);
        await dayAhead.connect(t.signer).placeOrder(i);
        apply(t.address, i);
        await checkEscrow(`placeOrder ${t.address} in ${b.slot}`);
      }
    }
    await checkWallets("round 5 (single changes)");

    // ------------------------------------------------------------------ clearing, day by day
    const modelBook = (b: ModelBook): BookOrder[] =>
      [...b.orders].map(([account, o]) => ({ account, isSell: o.isSell, qtyWh: o.qtyWh, price: o.price, index: o.index }));
    const stats = { rejectedBy: new Map<string, number>(), accepted: 0, rejected: 0, real: 0, crossing: 0, noCrossing: 0, partialMarginal: 0, sizes: new Map<string, number>() };
    const iface = dayAhead.interface;

    // eth_call directly: about twice as fast as contract.staticCall on the in-process network.
    const call = (c: DayAheadClearingCall) => ethers.provider.send("eth_call", [{ to: da.address, data: iface.encodeFunctionData("clear", [c]) }, "latest"]);
    async function expectRejected(c: DayAheadClearingCall, name: string, args: unknown[], label: string): Promise<void> {
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

    const days = [...new Set(books.map((b) => (b.slot * 900n) / DAY))];
    for (const day of days) {
      const gate = day * DAY - 43_200n;
      await networkHelpers.time.increaseTo(gate + 60n);
      for (const b of books.filter((x) => (x.slot * 900n) / DAY === day)) {
        const good = clearingCallFor(b.slot, modelBook(b));
        const n = good.buyers.length + good.sellers.length;
        stats.sizes.set(b.kind, (stats.sizes.get(b.kind) ?? 0) + n);
        if (good.volumeWh > 0n) stats.crossing++;
        else stats.noCrossing++;
        await call(good);
        stats.accepted++;
        await perturbations(b, good, traders, rng, expectRejected);

        if (Number(b.slot - firstSlot) % REAL_CLEAR_EVERY === 0 || (b.kind !== "random" && rng.chance(0.3))) {
          // Read back from the chain, then clear for real and check every effect.
          const fromChain = await readBook(dayAhead, b.slot);
          expect(fromChain, `slot ${b.slot}: book read from the chain`).to.deep.equal(modelBook(b).sort((x, y) => x.index - y.index));
          const receipt = await (await dayAhead.clear(good)).wait();
          const refunds = new Map<string, bigint>();
          let cost = 0n;
          good.buyers.forEach((account, k) => {
            const o = b.orders.get(account)!;
            const c = buyCostOf(good.buyAwardsWh[k]!, good.price);
            cost += c;
            if (escrowOfOrder(o) - c > 0n) refunds.set(account, escrowOfOrder(o) - c);
          });
          const transfers = eventsOf(receipt, token.interface, tokenAddress, "Transfer").map((e) => [e.args.from, e.args.to, e.args.value]);
          const expected = [...good.buyers.filter((x) => refunds.has(x)).map((x) => [da.address, x, refunds.get(x)])];
          if (cost > 0n) expected.push([da.address, da.market.settlementAddress, cost]);
          expect(transfers, `slot ${b.slot}: refunds and cost`).to.deep.equal(expected);
          const paid = eventsOf(receipt, da.settlement.interface, da.market.settlementAddress, "SchedulePaid").map((e) => e.args.amount);
          expect(paid, `slot ${b.slot}: SchedulePaid`).to.deep.equal(cost > 0n ? [cost] : []);
          expect((await da.settlement.slotState(b.slot)).pool, `slot ${b.slot}: pool`).to.equal(cost);
          for (const [account, award] of [...good.buyers.map((x, k) => [x, good.buyAwardsWh[k]!] as const), ...good.sellers.map((x, k) => [x, -good.sellAwardsWh[k]!] as const)]) {
            expect(await dayAhead.scheduleOf(b.slot, account), `slot ${b.slot}: schedule of ${account}`).to.deep.equal([award, good.price, 0n]);
          }
          // Refunds to wallets; the cost left the market.
          for (const [account, refund] of refunds) wallet.set(account, wallet.get(account)! + refund);
          for (const [, o] of b.orders) modelEscrow -= escrowOfOrder(o);
          b.cleared = true;
          stats.real++;
          await checkEscrow(`clear ${b.slot}`);
          if (good.volumeWh > 0n) {
            const partial = good.buyAwardsWh.some((w, k) => w > 0n && w < b.orders.get(good.buyers[k]!)!.qtyWh);
            if (partial) stats.partialMarginal++;
          }
        }
      }
    }
    await checkWallets("after clearing");

    // ------------------------------------------------------------------ reclaim after the slots start
    const last = books[books.length - 1]!.slot;
    await networkHelpers.time.increaseTo(last * 900n + 1n);
    for (const b of rng.shuffle(books.filter((x) => !x.cleared)).slice(0, 60)) {
      const accounts = rng.shuffle([...b.orders.keys()]);
      await dayAhead.reclaim(b.slot, accounts);
      for (const account of accounts) {
        const o = b.orders.get(account)!;
        const refund = escrowOfOrder(o);
        modelEscrow -= refund;
        wallet.set(account, wallet.get(account)! + refund);
        o.qtyWh = 0n;
      }
      await checkEscrow(`reclaim ${b.slot}`);
    }
    await checkWallets("after reclaim");

    // The run exercised what it claims to.
    expect(stats.accepted).to.equal(BOOKS);
    expect(stats.crossing).to.be.greaterThan(BOOKS / 4);
    expect(stats.noCrossing).to.be.greaterThan(BOOKS / 20);
    expect(stats.partialMarginal).to.be.greaterThan(10);
    expect(stats.rejected).to.be.greaterThan(BOOKS * 3.5);
    // Every kind of perturbation was tried many times.
    expect([...stats.rejectedBy.keys()].sort()).to.deep.equal([...PERTURBATION_LABELS].sort());
    for (const [label, count] of stats.rejectedBy) expect(count, label).to.be.greaterThan(300);
    console.log(
      `      ${stats.accepted} books (${[...stats.sizes].map(([k, v]) => `${k}: ${v} orders`).join(", ")}), ${stats.crossing} crossing, ${stats.noCrossing} not; ` +
        `${stats.rejected} perturbations rejected (${[...stats.rejectedBy].map(([k, v]) => `${k} ${v}`).join(", ")});  ${stats.real} cleared by transaction; ${checks} escrow checks`,
    );
  });
});

const PERTURBATION_LABELS = [
  "price + 1",
  "price - 1",
  "volume + 1",
  "volume - 1",
  "award moved",
  "order left out",
  "award list length",
  "two orders swapped",
  "another slot's order",
  "the other side's order",
  "an order listed twice",
] as const;

/**
 * PERTURBATIONS_PER_BOOK of the applicable perturbations of the correct clearing `good`, drawn
 * at random, each checked for the exact error the contract must give.
 */
async function perturbations(
  b: ModelBook,
  good: DayAheadClearingCall,
  traders: Trader[],
  rng: Rng,
  check: (c: DayAheadClearingCall, name: string, args: unknown[], label: (typeof PERTURBATION_LABELS)[number]) => Promise<void>,
): Promise<void> {
  const cases: Parameters<typeof check>[] = [];
  const expectRejected = async (...args: Parameters<typeof check>): Promise<void> => void cases.push(args);
  const copy = (): DayAheadClearingCall => ({
    ...good,
    buyers: [...good.buyers],
    sellers: [...good.sellers],
    buyAwardsWh: [...good.buyAwardsWh],
    sellAwardsWh: [...good.sellAwardsWh],
  });
  const { price, volumeWh } = good;
  const n = good.buyers.length + good.sellers.length;

  await expectRejected({ ...copy(), price: price + 1n }, "ClearingWrongResult", [price, price + 1n, volumeWh, volumeWh], "price + 1");
  if (price > 0n) await expectRejected({ ...copy(), price: price - 1n }, "ClearingWrongResult", [price, price - 1n, volumeWh, volumeWh], "price - 1");
  await expectRejected({ ...copy(), volumeWh: volumeWh + 1n }, "ClearingWrongResult", [price, price, volumeWh, volumeWh + 1n], "volume + 1");
  if (volumeWh > 0n) await expectRejected({ ...copy(), volumeWh: volumeWh - 1n }, "ClearingWrongResult", [price, price, volumeWh, volumeWh - 1n], "volume - 1");

  // Both sides as [accounts, awards, isSell].
  const sides = (c: DayAheadClearingCall) =>
    [
      [c.buyers, c.buyAwardsWh, false],
      [c.sellers, c.sellAwardsWh, true],
    ] as const;

  // An award moved from one order to another on the same side.
  {
    const c = copy();
    const candidates = sides(c).filter(([accounts, awards]) => accounts.length >= 2 && awards.some((w) => w > 0n));
    if (candidates.length > 0) {
      const [accounts, awards] = rng.pick(candidates);
      const from = rng.pick(awards.map((w, k) => [w, k] as const).filter(([w]) => w > 0n))[1];
      let to = rng.int(accounts.length - 1);
      if (to >= from) to++;
      const moved = rng.big(1n, awards[from]!);
      awards[from] = awards[from]! - moved;
      awards[to] = awards[to]! + moved;
      const first = Math.min(from, to);
      await expectRejected(c, "ClearingWrongAward", [accounts[first], good[accounts === c.buyers ? "buyAwardsWh" : "sellAwardsWh"][first], awards[first]], "award moved");
    }
  }

  // An order left out.
  if (n > 0) {
    const c = copy();
    const [accounts, awards] = rng.pick(sides(c).filter(([a]) => a.length > 0));
    const k = rng.int(accounts.length);
    accounts.splice(k, 1);
    awards.splice(k, 1);
    await expectRejected(c, "ClearingIncomplete", [BigInt(n - 1), BigInt(n)], "order left out");
  }

  // Award lists of the wrong length.
  {
    const c = copy();
    const [, awards] = rng.pick(sides(c));
    if (awards.length > 0 && rng.chance(0.5)) awards.pop();
    else awards.push(0n);
    await expectRejected(c, "ClearingLengthMismatch", [], "award list length");
  }

  // Two orders of one side swapped: the list is out of order right after the first position.
  {
    const c = copy();
    const candidates = sides(c).filter(([a]) => a.length >= 2);
    if (candidates.length > 0) {
      const [accounts, awards, isSell] = rng.pick(candidates);
      const i = rng.int(accounts.length - 1);
      const j = i + 1 + rng.int(accounts.length - 1 - i);
      [accounts[i], accounts[j]] = [accounts[j]!, accounts[i]!];
      [awards[i], awards[j]] = [awards[j]!, awards[i]!];
      await expectRejected(c, "ClearingNotSorted", [isSell, BigInt(i + 1)], "two orders swapped");
    }
  }

  // Another slot's order (an account without an order here) in place of one of this slot's.
  {
    const absent = traders.filter((t) => !b.orders.has(t.address));
    if (n > 0 && absent.length > 0) {
      const c = copy();
      const [accounts] = rng.pick(sides(c).filter(([a]) => a.length > 0));
      const stranger = rng.pick(absent).address;
      accounts[rng.int(accounts.length)] = stranger;
      await expectRejected(c, "ClearingWrongOrder", [stranger], "another slot's order");
    }
  }

  // An order on the other side's list.
  if (n > 0) {
    const c = copy();
    const from = rng.pick(sides(c).filter(([a]) => a.length > 0));
    const to = sides(c).find((s) => s !== from && s[2] !== from[2])!;
    const k = rng.int(from[0].length);
    const [account] = from[0].splice(k, 1);
    const [award] = from[1].splice(k, 1);
    const at = rng.int(to[0].length + 1);
    to[0].splice(at, 0, account!);
    to[1].splice(at, 0, award!);
    await expectRejected(c, "ClearingWrongOrder", [account], "the other side's order");
  }

  // An order listed twice (a later position repeats an earlier one).
  {
    const c = copy();
    const candidates = sides(c).filter(([a]) => a.length >= 2);
    if (candidates.length > 0) {
      const [accounts] = rng.pick(candidates);
      const k = 1 + rng.int(accounts.length - 1);
      const j = rng.int(k);
      accounts[k] = accounts[j]!;
      await expectRejected(c, "ClearingWrongOrder", [accounts[j]], "an order listed twice");
    }
  }

  for (const args of rng.shuffle(cases).slice(0, PERTURBATIONS_PER_BOOK)) await check(...args);
}

function min(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

function max(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}

/** `n` more registered traders with wallets of their own (ether for gas, tokens, approval of the market). */
async function extraTraders(da: DayAhead, n: number): Promise<Trader[]> {
  const wallets = Array.from({ length: n }, (_, k) => new Wallet(id(`clearing-property/trader/${k}`), ethers.provider));
  await da.market.registry.connect(da.market.admin).registerBatch(
    wallets.map((w, k) => ({
      account: w.address,
      meterId: encodeBytes32String(`MTR-extra-${k}`),
      meterKey: new Wallet(id(`clearing-property/meter/${k}`)).address,
      kind: Kind.Prosumer,
    })),
  );
  const out: Trader[] = [];
  for (const w of wallets) {
    await networkHelpers.setBalance(w.address, 10n ** 22n);
    await da.token.connect(da.market.admin).mint(w.address, 100_000n * ONE);
    await da.token.connect(w).approve(da.address, MaxUint256);
    out.push({ address: w.address, signer: w });
  }
  return out;
}
