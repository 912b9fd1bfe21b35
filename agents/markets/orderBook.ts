/**
 * A slot's day-ahead book read from the chain, as clearDayAhead takes it. The contract keeps
 * no list of a slot's accounts (no unbounded storage), so the accounts come from its
 * OrderPlaced events (indexed by slot) and each order from orderOf, all at one block so that
 * the events and the orders agree.
 */
import { getAddress, type BlockTag } from "ethers";
import { MarketError } from "../errors.js";
import { mapLimit } from "../chain/distribution.js";
import type { DayAheadMarket } from "../chain/types/index.js";
import type { BookOrder } from "./dayAheadClearing.js";

/** The events found do not account for every order of the slot's book. */
export class OrderBookError extends MarketError {
  constructor(problem: string) {
    super("ORDER_BOOK", problem);
  }
}

export interface ReadBookOptions {
  /** Read the events and orders as of this block (default: the latest block when called). */
  blockTag?: number;
  /** How many orderOf calls run at once (default 32). */
  concurrency?: number;
}

/**
 * Every order of `slot`'s book, cancelled ones (quantity 0) included, by book index. Events are
 * searched from `fromBlock` (default 0: give the market's deployment block on a long chain);
 * OrderBookError if they name fewer accounts than the book holds (fromBlock too late, or a
 * node that dropped old logs).
 */
export async function readBook(
  dayAhead: DayAheadMarket,
  slot: bigint | number,
  fromBlock: number = 0,
  options: ReadBookOptions = {},
): Promise<BookOrder[]> {
  const runner = dayAhead.runner;
  const provider = runner?.provider;
  if (provider == null) throw new OrderBookError("readBook needs a DayAheadMarket connected to a provider");
  const at = options.blockTag ?? (await provider.getBlockNumber());
  const blockTag: BlockTag = at;

  const logs = await dayAhead.queryFilter(dayAhead.filters.OrderPlaced(undefined, slot), fromBlock, at);
  const accounts = [...new Set(logs.map((log) => getAddress(log.args.account)))];
  const [view, orders] = await Promise.all([
    dayAhead.book(slot, { blockTag }),
    mapLimit(accounts, options.concurrency ?? 32, (account) => dayAhead.orderOf(slot, account, { blockTag })),
  ]);

  const book: BookOrder[] = [];
  orders.forEach((o, k) => {
    const account = accounts[k] as string;
    if (!o.placed) throw new OrderBookError(`slot ${slot}: ${account} placed an order (event) but orderOf says none; is the contract the one that emitted it?`);
    book.push({ account, isSell: o.isSell, qtyWh: o.qtyWh, price: o.price, index: Number(o.index) });
  });
  if (BigInt(book.length) !== view.size) {
    throw new OrderBookError(
      `slot ${slot}: the book holds ${view.size} orders but OrderPlaced events from block ${fromBlock} to ${at} name ${book.length} accounts; search from the market's deployment block`,
    );
  }
  return book.sort((a, b) => a.index - b.index);
}
