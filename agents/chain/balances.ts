/**
 * Token balances of accounts, with their registry record, as rows that the balance tool prints
 * and the demo can show.
 */
import { formatUnits, getAddress } from "ethers";
import type { MarketContracts } from "./market.js";
import { kindName, statusName } from "./participants.js";

/** A column added to the balance table by a later part of the market. */
export interface BalanceColumn {
  header: string;
  /** The cell for `account`, already formatted (amounts with formatUnits and the symbol). */
  value(account: string): Promise<string>;
}

/**
 * Columns beyond the wallet balance. This is the place for what the settlement and market
 * contracts hold on an account's behalf ("escrowed" in the day-ahead market, collateral,
 * unpaid shortfall): return one BalanceColumn per figure, reading it from `market`.
 */
export function extraBalanceColumns(market: MarketContracts, token: TokenInfo): BalanceColumn[] {
  const amount = (units: bigint): string => formatTokenAmount(units, token);
  return [
    { header: "in escrow (deposit)", value: async (account) => amount((await market.settlement.accountState(account)).deposit) },
    // Earnings are paid into the deposit; this much of it can go to the wallet now (npm run withdraw).
    { header: "withdrawable", value: async (account) => amount(await market.settlement.withdrawable(account)) },
    { header: "debt", value: async (account) => amount((await market.settlement.accountState(account)).debt) },
  ];
}

export interface TokenInfo {
  symbol: string;
  decimals: number;
}

/** `units` of the token for people, e.g. "12.5 EUR". */
export function formatTokenAmount(units: bigint, token: TokenInfo): string {
  return `${formatUnits(units, token.decimals)} ${token.symbol}`;
}

export interface BalanceRow {
  account: string;
  /** Registry index, or undefined when the account is not registered. */
  index: number | undefined;
  kind: string | undefined;
  status: string;
  balance: bigint;
  /** balance with the token's decimals and symbol, e.g. "100.5 kWhT". */
  formatted: string;
  /** Cells of extraBalanceColumns, in order. */
  extra: string[];
}

export async function tokenInfo(market: MarketContracts): Promise<TokenInfo> {
  const [symbol, decimals] = await Promise.all([market.energyToken.symbol(), market.energyToken.decimals()]);
  return { symbol, decimals: Number(decimals) };
}

/** The balance rows of `accounts` (in that order). */
export async function balanceRows(
  market: MarketContracts,
  accounts: readonly string[],
  token?: TokenInfo,
): Promise<{ token: TokenInfo; columns: BalanceColumn[]; rows: BalanceRow[] }> {
  const info = token ?? (await tokenInfo(market));
  const columns = extraBalanceColumns(market, info);
  const rows = await mapPages(accounts, async (raw) => {
    const account = getAddress(raw);
    const [balance, record, extra] = await Promise.all([
      market.energyToken.balanceOf(account),
      market.participantRegistry.participant(account),
      Promise.all(columns.map((c) => c.value(account))),
    ]);
    const registered = record.status !== 0n;
    return {
      account,
      index: registered ? Number(record.index) : undefined,
      kind: registered ? kindName(record.kind) : undefined,
      status: statusName(record.status),
      balance,
      formatted: `${formatUnits(balance, info.decimals)} ${info.symbol}`,
      extra,
    };
  });
  return { token: info, columns, rows };
}

/** Every registered account, paging through registry.participantAt (no unbounded call). */
export async function registeredAccounts(market: MarketContracts, onProgress?: (done: number, total: number) => void): Promise<string[]> {
  const count = Number(await market.participantRegistry.participantCount());
  const indices = Array.from({ length: count }, (_, i) => i);
  let done = 0;
  return mapPages(indices, async (i) => {
    const account = await market.participantRegistry.participantAt(i);
    if (++done % 100 === 0 || done === count) onProgress?.(done, count);
    return account;
  });
}

/** Maps in pages of 100 calls at a time: enough for ethers to batch, few enough for any node. */
async function mapPages<T, R>(items: readonly T[], fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i += 100) out.push(...(await Promise.all(items.slice(i, i + 100).map(fn))));
  return out;
}
