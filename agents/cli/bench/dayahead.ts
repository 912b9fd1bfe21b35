/**
 * Gas of the day-ahead market: one placeOrder (a buy, with its escrow transferFrom) in the
 * steady state, one cancelOrder (a buy, with its refund), and the clearing per order for books
 * of 10, 100, 1,000 and 2,000 orders, with the clearing transaction of 1,000 orders.
 *
 * Method: one real local node with the Market module deployed by Ignition (DayAheadMarket
 * included). 2,000 participants are registered, minted tokens and approve the market for an
 * unlimited amount; the node impersonates them (hardhat_impersonateAccount), so each sends its
 * own transactions unsigned, at the same gas as signed ones. Each book size gets its own slot of
 * the day after tomorrow: half buys and half sells, limits uniform over [priceFloor, priceCap]
 * on both sides (so about half of each side trades, at about the middle of the range),
 * quantities 0.1 to 3 kWh, one order per participant. Transactions are sent with automining
 * off and mined many to a block. After the gate each book is read back from the chain
 * (readBook), cleared off chain (clearDayAhead) and submitted with `clear`; the per-order
 * figure is the clear transaction's gasUsed over the book's size.
 *
 * EIP-7825 caps a transaction at 2^24 gas, and the node (Osaka rules) refuses anything above,
 * calls and estimates included. A book whose clearing does not fit is therefore measured again
 * on Hardhat's in-process EDR network under Prague rules (the same EVM without the cap), by the
 * same code, and `dayahead.clear.fitsTxCap.n<size>` says 0: no transaction can clear such a
 * slot, whose buyers can only reclaim their escrow.
 *
 * placeOrder: the median gasUsed of the buys in the 1,000-order book after its first order (the
 * book and the market's balance already written). cancelOrder: the median of 50 buys cancelled
 * in a slot of their own.
 */
import { dataSlice, encodeBytes32String, getAddress, id, MaxUint256 } from "ethers";
import { kindValue } from "../../chain/participants.js";
import { DayAheadMarket__factory, EnergyToken__factory, ParticipantRegistry__factory, type DayAheadMarket } from "../../chain/types/index.js";
import { clearingCallFor } from "../../markets/dayAheadClearing.js";
import { readBook } from "../../markets/orderBook.js";
import { mulberry32 } from "../../simulator/profiles.js";
import { chunk, inProcessWithoutCap, median, Node, TX_GAS_CAP, type Tx } from "./node.js";
import type { BenchContext, BenchFigures, BenchSection } from "./types.js";

// A slot's book takes at most MAX_BOOK_SIZE (1,000) orders, so that its clearing always fits
// one transaction; there is no book of 2,000 to measure.
const SIZES = [10, 100, 1000] as const;
const CANCELS = 50;
const DAY = 86_400;
const TOKEN = 10n ** 6n;
const WALLET_TOKENS = 10_000n * TOKEN;
const ORDER_TX_GAS = 300_000n;
const IFACE = DayAheadMarket__factory.createInterface();

export const dayAheadSection: BenchSection = {
  name: "dayahead",
  async run(ctx: BenchContext): Promise<BenchFigures> {
    const figures: BenchFigures = {};
    const started = Date.now();
    const log = (m: string): void => ctx.log(`${m} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
    const bench = await ctx.freshMarket();
    const { market } = bench;
    const venue = await Venue.open(new Node(market.provider), await bench.deployer.getAddress(), market.dayAheadMarket, market.addresses);
    const traders = await venue.prepare(Math.max(...SIZES), log);
    const books = await venue.placeBooks(SIZES, traders, log);
    figures["dayahead.maxBookSize"] = Number(await market.dayAheadMarket.MAX_BOOK_SIZE());
    figures["dayahead.placeOrder.gas"] = median(books.placeGas.get(1000) ?? []);
    figures["dayahead.cancelOrder.gas"] = median(await venue.cancels(traders.slice(0, CANCELS), books.nextSlot));

    await venue.afterGate(books.gate);
    const tooBig: number[] = [];
    for (const { n, slot } of books.slots) {
      const gas = await venue.clear(slot, n, books.fromBlock, log);
      if (gas === undefined) {
        log(`    n=${n}: the clearing does not fit in one transaction (2^24 gas): measuring it without the cap`);
        tooBig.push(n);
        continue;
      }
      figures[`dayahead.clear.perOrder.n${n}.gas`] = Math.round(gas / n);
      figures[`dayahead.clear.fitsTxCap.n${n}`] = 1;
      if (n === 1000) figures["dayahead.clear.maxTxGas.n1000"] = gas;
    }

    if (tooBig.length > 0) {
      const uncapped = await Venue.inProcessWithoutCap(log);
      try {
        const traders2 = await uncapped.prepare(Math.max(...tooBig), log);
        const books2 = await uncapped.placeBooks(tooBig, traders2, log);
        await uncapped.afterGate(books2.gate);
        for (const { n, slot } of books2.slots) {
          const gas = await uncapped.clear(slot, n, books2.fromBlock, log);
          if (gas === undefined) throw new Error(`n=${n}: the clearing failed even without the transaction cap`);
          figures[`dayahead.clear.perOrder.n${n}.gas`] = Math.round(gas / n);
          figures[`dayahead.clear.fitsTxCap.n${n}`] = 0;
          if (n === 1000) figures["dayahead.clear.maxTxGas.n1000"] = gas;
          log(`    n=${n}: ${gas.toLocaleString("en-US")} gas > 2^24 = ${TX_GAS_CAP.toLocaleString("en-US")}: does not fit in one transaction`);
        }
      } finally {
        await uncapped.close();
      }
    }
    return figures;
  },
};

interface Books {
  slots: { n: number; slot: number }[];
  /** gasUsed of the buys after the first order, per book size. */
  placeGas: Map<number, number[]>;
  gate: number;
  fromBlock: number;
  /** A slot of the same day that no book uses. */
  nextSlot: number;
}

/** A chain with the market deployed, and the steps of the measurement on it. */
class Venue {
  private constructor(
    readonly node: Node,
    readonly admin: string,
    readonly dayAhead: DayAheadMarket,
    readonly addresses: { energyToken: string; participantRegistry: string; dayAheadMarket: string },
    readonly bounds: { floor: number; cap: number; slotSeconds: number; gateLead: number },
    private readonly onClose: () => Promise<void> = async () => {},
  ) {}

  static async open(
    node: Node,
    admin: string,
    dayAhead: DayAheadMarket,
    addresses: Venue["addresses"],
    onClose?: () => Promise<void>,
  ): Promise<Venue> {
    const [floor, cap, slotSeconds, gateLead] = (await Promise.all([dayAhead.priceFloor(), dayAhead.priceCap(), dayAhead.slotSeconds(), dayAhead.gateLeadSeconds()])).map(Number) as [
      number,
      number,
      number,
      number,
    ];
    return new Venue(node, admin, dayAhead, addresses, { floor, cap, slotSeconds, gateLead }, onClose);
  }

  /** Hardhat's in-process EDR network under Prague rules (no per-transaction cap), with the Market module. */
  static async inProcessWithoutCap(log: (m: string) => void): Promise<Venue> {
    const chain = await inProcessWithoutCap(log);
    const { provider, admin, addresses, close } = chain;
    return Venue.open(new Node(provider), admin, DayAheadMarket__factory.connect(addresses.dayAheadMarket, provider), addresses, close);
  }

  close(): Promise<void> {
    return this.onClose();
  }

  /** `n` traders: registered, minted tokens, given ether, impersonated, approving the market. */
  async prepare(n: number, log: (m: string) => void): Promise<string[]> {
    const traders = Array.from({ length: n }, (_, i) => getAddress(dataSlice(id(`dayahead-bench/trader/${i}`), 12)));
    log(`  registering, funding and approving ${n} traders`);
    await setUp(this.node, this.addresses, this.admin, this.addresses.dayAheadMarket, traders);
    return traders;
  }

  /** One book per size, each in its own slot of the day after tomorrow. */
  async placeBooks(sizes: readonly number[], traders: string[], log: (m: string) => void): Promise<Books> {
    const { floor, cap, slotSeconds, gateLead } = this.bounds;
    const day = Math.floor((await this.node.latestTimestamp()) / DAY) + 2;
    const firstSlot = (day * DAY) / slotSeconds + 40;
    const fromBlock = await this.node.provider.getBlockNumber();
    const rnd = mulberry32(20_240_611);
    const between = (lo: number, hi: number): bigint => BigInt(Math.floor(lo + (hi - lo + 1) * rnd()));
    const slots = sizes.map((n, k) => ({ n, slot: firstSlot + k }));
    const placeGas = new Map<number, number[]>();
    for (const { n, slot } of slots) {
      const txs: Tx[] = traders.slice(0, n).map((from, i) => {
        const input = { slot, isSell: i % 2 === 1, qtyWh: between(100, 3000), price: between(floor, cap) };
        return { from, to: this.addresses.dayAheadMarket, data: IFACE.encodeFunctionData("placeOrder", [input]), gas: ORDER_TX_GAS };
      });
      const used = await this.node.transact(txs);
      placeGas.set(n, used.filter((_, i) => i > 0 && i % 2 === 0));
      log(`    slot ${slot}: ${n} orders placed (max ${Math.max(...used).toLocaleString("en-US")} gas)`);
    }
    return { slots, placeGas, gate: day * DAY - gateLead, fromBlock, nextSlot: firstSlot + sizes.length };
  }

  /** gasUsed of cancelling a buy of each of `traders` in `slot` (placed first). */
  async cancels(traders: string[], slot: number): Promise<number[]> {
    const { floor, cap } = this.bounds;
    const to = this.addresses.dayAheadMarket;
    await this.node.transact(
      traders.map((from, i) => ({ from, to, data: IFACE.encodeFunctionData("placeOrder", [{ slot, isSell: false, qtyWh: 100 + i * 37, price: floor + ((i * 7919) % (cap - floor)) }]), gas: ORDER_TX_GAS })),
    );
    return this.node.transact(traders.map((from) => ({ from, to, data: IFACE.encodeFunctionData("cancelOrder", [slot]), gas: ORDER_TX_GAS })));
  }

  async afterGate(gate: number): Promise<void> {
    await this.node.setTimeAndMine(gate + 1);
  }

  /**
   * Reads `slot`'s book back, clears it off chain and submits the clearing; its gasUsed, or
   * undefined if it does not fit in a transaction under the cap.
   */
  async clear(slot: number, n: number, fromBlock: number, log: (m: string) => void): Promise<number | undefined> {
    const book = await readBook(this.dayAhead, slot, fromBlock);
    if (book.length !== n) throw new Error(`slot ${slot}: read ${book.length} orders, placed ${n}`);
    const clearing = clearingCallFor(slot, book);
    const tx = { from: this.admin, to: this.addresses.dayAheadMarket, data: IFACE.encodeFunctionData("clear", [clearing]) };
    const limit = await this.node.gasLimitFor(tx);
    if (limit === undefined) return undefined;
    const [gas] = (await this.node.transact([{ ...tx, gas: limit }])) as [number];
    const view = await this.dayAhead.book(slot);
    if (!view.cleared || view.price !== clearing.price || view.volumeWh !== clearing.volumeWh) throw new Error(`slot ${slot}: the clearing was not applied as computed`);
    const awarded = clearing.buyAwardsWh.filter((w) => w > 0n).length + clearing.sellAwardsWh.filter((w) => w > 0n).length;
    log(
      `    n=${n}: price ${clearing.price}, volume ${clearing.volumeWh} Wh, ${awarded}/${n} orders awarded; clear ${gas.toLocaleString("en-US")} gas, ${Math.round(gas / n).toLocaleString("en-US")}/order`,
    );
    return gas;
  }
}

/** Registers `traders`, mints them tokens, funds them with ether, impersonates them and has each approve the market. */
async function setUp(node: Node, addresses: { energyToken: string; participantRegistry: string }, admin: string, dayAhead: string, traders: string[]): Promise<void> {
  const registry = ParticipantRegistry__factory.createInterface();
  const token = EnergyToken__factory.createInterface();
  const txs: Tx[] = [];
  chunk(traders, 100).forEach((batch, b) => {
    const regs = batch.map((account, i) => ({
      account,
      meterId: encodeBytes32String(`DA-${b * 100 + i}`),
      meterKey: getAddress(dataSlice(id(`dayahead-bench/meterKey/${b * 100 + i}`), 12)),
      kind: kindValue((b * 100 + i) % 2 === 0 ? "consumer" : "prosumer"),
    }));
    txs.push({ from: admin, to: addresses.participantRegistry, data: registry.encodeFunctionData("registerBatch", [regs]), gas: 15_000_000n });
    txs.push({ from: admin, to: addresses.energyToken, data: token.encodeFunctionData("mintBatch", [id(`dayahead-bench/mint/${b}`), batch, batch.map(() => WALLET_TOKENS)]), gas: 8_000_000n });
  });
  await node.transact(txs);
  await Promise.all(traders.map((t) => node.impersonate(t)));
  await node.transact(traders.map((from) => ({ from, to: addresses.energyToken, data: token.encodeFunctionData("approve", [dayAhead, MaxUint256]), gas: 100_000n })));
}
