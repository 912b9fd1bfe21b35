/**
 * A slot's balancing book read from the chain, as clearBalancing takes it. The contract keeps no
 * list of a slot's accounts (no unbounded storage), so the accounts come from its OfferPlaced
 * events (indexed by slot) and each offer from offerOf, all at one block so that the events and
 * the offers agree.
 */
import { getAddress, type BlockTag } from "ethers";
import { MarketError } from "../errors.js";
import { mapLimit } from "../chain/distribution.js";
import type { IntradayMarket } from "../chain/types/index.js";
import type { BalancingOffer } from "./balancingClearing.js";

/** The events found do not account for every offer of the slot's book. */
export class OfferBookError extends MarketError {
  constructor(problem: string) {
    super("OFFER_BOOK", problem);
  }
}

export interface ReadOffersOptions {
  /** Read the events and offers as of this block (default: the latest block when called). */
  blockTag?: number;
  /** How many offerOf calls run at once (default 32). */
  concurrency?: number;
}

/**
 * Every offer of `slot`'s balancing book, cancelled ones (quantity 0) included, by book index.
 * Events are searched from `fromBlock` (default 0: give the market's deployment block on a long
 * chain); OfferBookError if they name fewer accounts than the book holds (fromBlock too late, or
 * a node that dropped old logs).
 */
export async function readOffers(
  intraday: IntradayMarket,
  slot: bigint | number,
  fromBlock: number = 0,
  options: ReadOffersOptions = {},
): Promise<BalancingOffer[]> {
  const provider = intraday.runner?.provider;
  if (provider == null) throw new OfferBookError("readOffers needs an IntradayMarket connected to a provider");
  const at = options.blockTag ?? (await provider.getBlockNumber());
  const blockTag: BlockTag = at;

  const logs = await intraday.queryFilter(intraday.filters.OfferPlaced(undefined, slot), fromBlock, at);
  const accounts = [...new Set(logs.map((log) => getAddress(log.args.account)))];
  const [view, offers] = await Promise.all([
    intraday.book(slot, { blockTag }),
    mapLimit(accounts, options.concurrency ?? 32, (account) => intraday.offerOf(slot, account, { blockTag })),
  ]);

  const book: BalancingOffer[] = [];
  offers.forEach((o, k) => {
    const account = accounts[k] as string;
    if (!o.placed) throw new OfferBookError(`slot ${slot}: ${account} placed an offer (event) but offerOf says none; is the contract the one that emitted it?`);
    book.push({ account, isUp: o.isUp, qtyWh: o.qtyWh, price: o.price, index: Number(o.index) });
  });
  if (BigInt(book.length) !== view.size) {
    throw new OfferBookError(
      `slot ${slot}: the book holds ${view.size} offers but OfferPlaced events from block ${fromBlock} to ${at} name ${book.length} accounts; search from the market's deployment block`,
    );
  }
  return book.sort((a, b) => a.index - b.index);
}
