import { expect } from "chai";
import { buyCostOf, ClearingInputError, clearDayAhead, escrowOf, type BookOrder } from "../../agents/markets/dayAheadClearing.js";
import { Rng } from "../contracts/helpers/random.js";

/**
 * The reference clearing on its own, without a chain: hand-worked books from the auction rules,
 * and random books against a plain merge-walk written here from the same rules (the contract
 * is the third implementation; clearingProperty.test.ts compares it with the reference).
 */

let nextIndex = 0;
function order(account: string, side: "buy" | "sell", qtyWh: number, price: number, index = nextIndex++): BookOrder {
  return { account, isSell: side === "sell", qtyWh: BigInt(qtyWh), price: BigInt(price), index };
}

/** The matching rules, literally: the best remaining buy against the best remaining sell. */
function mergeWalk(orders: BookOrder[]) {
  const cmp = (dir: 1 | -1) => (a: BookOrder, b: BookOrder) => (a.price === b.price ? a.index - b.index : (a.price < b.price ? -dir : dir));
  const buys = orders.filter((o) => !o.isSell).sort(cmp(-1));
  const sells = orders.filter((o) => o.isSell).sort(cmp(1));
  const buyAwards = buys.map(() => 0n);
  const sellAwards = sells.map(() => 0n);
  const remB = buys.map((o) => o.qtyWh);
  const remS = sells.map((o) => o.qtyWh);
  let i = 0;
  let j = 0;
  let volume = 0n;
  let last: [bigint, bigint] | undefined;
  for (;;) {
    while (i < buys.length && remB[i] === 0n) i++;
    while (j < sells.length && remS[j] === 0n) j++;
    if (i >= buys.length || j >= sells.length) break;
    const b = buys[i] as BookOrder;
    const s = sells[j] as BookOrder;
    if (b.price < s.price) break;
    const m = (remB[i] as bigint) < (remS[j] as bigint) ? (remB[i] as bigint) : (remS[j] as bigint);
    remB[i] = (remB[i] as bigint) - m;
    remS[j] = (remS[j] as bigint) - m;
    buyAwards[i] = (buyAwards[i] as bigint) + m;
    sellAwards[j] = (sellAwards[j] as bigint) + m;
    volume += m;
    last = [b.price, s.price];
  }
  return {
    buyers: buys.map((o) => o.account),
    sellers: sells.map((o) => o.account),
    buyAwardsWh: buyAwards,
    sellAwardsWh: sellAwards,
    price: last === undefined ? 0n : (last[0] + last[1]) / 2n,
    volumeWh: volume,
  };
}

describe("clearDayAhead (reference clearing)", () => {
  it("clears a crossing book: sorted sides, partial fills at the margin, floor midpoint price", () => {
    const book = [
      order("S3", "sell", 300, 190_000),
      order("A", "buy", 300, 200_000),
      order("S1", "sell", 250, 100_000),
      order("C", "buy", 100, 150_000),
      order("B", "buy", 200, 180_000),
      order("S2", "sell", 200, 170_000),
    ];
    // A-S1 250, A-S2 50, B-S2 150; then B (180k) < S3 (190k).
    expect(clearDayAhead(book)).to.deep.equal({
      buyers: ["A", "B", "C"],
      sellers: ["S1", "S2", "S3"],
      buyAwardsWh: [300n, 150n, 0n],
      sellAwardsWh: [250n, 200n, 0n],
      price: 175_000n,
      volumeWh: 450n,
    });
  });

  it("rounds the midpoint down", () => {
    const r = clearDayAhead([order("b", "buy", 10, 100_001), order("s", "sell", 10, 100_000)]);
    expect([r.price, r.volumeWh]).to.deep.equal([100_000n, 10n]);
  });

  it("without crossing: price 0, volume 0, nothing awarded", () => {
    const r = clearDayAhead([order("b", "buy", 10, 99), order("s", "sell", 10, 100), order("b2", "buy", 5, 50)]);
    expect(r).to.deep.equal({ buyers: ["b", "b2"], sellers: ["s"], buyAwardsWh: [0n, 0n], sellAwardsWh: [0n], price: 0n, volumeWh: 0n });
  });

  it("equal limits on both sides trade at that price", () => {
    const r = clearDayAhead([order("b", "buy", 7, 120_000), order("s", "sell", 9, 120_000)]);
    expect([r.buyAwardsWh, r.sellAwardsWh, r.price, r.volumeWh]).to.deep.equal([[7n], [7n], 120_000n, 7n]);
  });

  it("fills the earlier of several orders at the marginal price first (ties by book index)", () => {
    const r = clearDayAhead([
      order("late", "buy", 100, 150_000, 9),
      order("early", "buy", 100, 150_000, 2),
      order("mid", "buy", 100, 150_000, 5),
      order("s", "sell", 150, 100_000, 0),
      order("s2", "sell", 50, 100_000, 7),
      order("s1", "sell", 50, 100_000, 4),
    ]);
    expect(r.buyers).to.deep.equal(["early", "mid", "late"]);
    expect(r.sellers).to.deep.equal(["s", "s1", "s2"]);
    expect(r.buyAwardsWh).to.deep.equal([100n, 100n, 50n]);
    expect(r.sellAwardsWh).to.deep.equal([150n, 50n, 50n]);
    expect([r.price, r.volumeWh]).to.deep.equal([125_000n, 250n]);
  });

  it("keeps cancelled orders (quantity 0) in the lists, never awards them and never lets them set the price", () => {
    const r = clearDayAhead([
      order("A", "buy", 100, 50_000, 0),
      order("B", "buy", 50, 48_000, 1),
      order("S1", "sell", 100, 30_000, 2),
      order("Sx", "sell", 0, 40_000, 3),
      order("S3", "sell", 50, 49_000, 4),
      order("Bx", "buy", 0, 60_000, 5),
    ]);
    expect(r.buyers).to.deep.equal(["Bx", "A", "B"]);
    expect(r.sellers).to.deep.equal(["S1", "Sx", "S3"]);
    expect(r.buyAwardsWh).to.deep.equal([0n, 100n, 0n]);
    expect(r.sellAwardsWh).to.deep.equal([100n, 0n, 0n]);
    // The last matched pair is A (50k) and S1 (30k); Sx at 40k and B at 48k never trade.
    expect([r.price, r.volumeWh]).to.deep.equal([40_000n, 100n]);
  });

  it("handles degenerate books: empty, one order, one side only, everything cancelled", () => {
    const none = { buyers: [], sellers: [], buyAwardsWh: [], sellAwardsWh: [], price: 0n, volumeWh: 0n };
    expect(clearDayAhead([])).to.deep.equal(none);
    expect(clearDayAhead([order("b", "buy", 5, 1)])).to.deep.equal({ ...none, buyers: ["b"], buyAwardsWh: [0n] });
    expect(clearDayAhead([order("s", "sell", 5, 1), order("t", "sell", 3, 1)]).sellAwardsWh).to.deep.equal([0n, 0n]);
    expect(clearDayAhead([order("b", "buy", 0, 9), order("s", "sell", 0, 1)]).volumeWh).to.equal(0n);
  });

  it("does not depend on the order the book is given in", () => {
    const rng = new Rng(7);
    const book = Array.from({ length: 30 }, (_, k) => order(`a${k}`, rng.chance(0.5) ? "buy" : "sell", rng.int(5) * 100, 100 + rng.int(4), k));
    const expected = clearDayAhead(book);
    for (let t = 0; t < 20; t++) expect(clearDayAhead(rng.shuffle(book))).to.deep.equal(expected);
  });

  it("agrees with a literal merge-walk on 3,000 random books", () => {
    const rng = new Rng(20_240_601);
    for (let t = 0; t < 3000; t++) {
      const n = rng.int(rng.chance(0.1) ? 60 : 12);
      const prices = rng.chance(0.5) ? [100n, 101n, 102n, 103n] : undefined;
      const book: BookOrder[] = rng.shuffle(Array.from({ length: n }, (_, k) => k)).map((index, k) => ({
        account: `acc${k}`,
        isSell: rng.chance(0.5),
        qtyWh: rng.chance(0.1) ? 0n : rng.chance(0.3) ? 1_000n : rng.big(1n, 5_000n),
        price: prices === undefined ? rng.big(50_000n, 300_000n) : rng.pick(prices),
        index,
      }));
      expect(clearDayAhead(book), `book ${t}`).to.deep.equal(mergeWalk(book));
    }
  });

  it("refuses lists that cannot be a book", () => {
    expect(() => clearDayAhead([order("a", "buy", 1, 1, 0), order("A", "sell", 1, 1, 1)])).to.throw(ClearingInputError, /two orders/);
    expect(() => clearDayAhead([order("a", "buy", 1, 1, 3), order("b", "sell", 1, 1, 3)])).to.throw(ClearingInputError, /index 3 appears twice/);
    expect(() => clearDayAhead([order("a", "buy", -1, 1, 0)])).to.throw(ClearingInputError, /quantity -1/);
    expect(() => clearDayAhead([order("a", "buy", 1, 1, -2)])).to.throw(ClearingInputError, /book index -2/);
  });

  it("rounds escrow and cost up to the base unit", () => {
    expect(escrowOf(1n, 50_001n)).to.equal(51n);
    expect(escrowOf(3n, 300_000n)).to.equal(900n);
    expect(buyCostOf(0n, 300_000n)).to.equal(0n);
    expect(buyCostOf(7n, 100_001n)).to.equal(701n);
  });
});
