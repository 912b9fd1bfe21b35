/**
 * npm run withdraw -- <amount> | --all [options]
 *
 * Moves tokens from a participant's deposit in the settlement escrow to its wallet. Earnings
 * from selling energy are paid into the deposit every slot (not to the wallet: a batch of a
 * thousand readings then needs no token transfer per seller), so this is how a seller takes
 * them home. The key is the participant's own, from the environment.
 */
import { ConfigError, MarketError } from "../errors.js";
import { formatTokenAmount, tokenInfo } from "../chain/balances.js";
import { MARKET_OPTIONS, MARKET_OPTIONS_HELP, SIGNER_HELP, connectFromOptions, parseCli, parseTokenAmount, runCli } from "./common.js";

const USAGE = `usage: npm run withdraw -- <amount> | --all [options]

  <amount>            tokens to withdraw, e.g. 12.5 (up to the token's decimals)
  --all               everything that is free to withdraw

options:
${MARKET_OPTIONS_HELP}

${SIGNER_HELP}`;

/** More was asked than the deposit has free. */
export class WithdrawalTooLargeError extends MarketError {
  constructor(requested: string, free: string) {
    super(
      "WITHDRAWAL_TOO_LARGE",
      `${requested} asked, but only ${free} is free to withdraw: the rest of the deposit is reserved for the slot not billed yet (its worst case at the retail price). Ask for less, or try again after the slot is settled.`,
    );
  }
}

async function main(): Promise<void> {
  const { values, positionals } = parseCli(
    {
      allowPositionals: true,
      options: { ...MARKET_OPTIONS, all: { type: "boolean", default: false }, help: { type: "boolean", short: "h", default: false } },
    },
    USAGE,
  );
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (values.all === (positionals.length === 1) || positionals.length > 1) {
    throw new ConfigError("arguments", `give one amount or --all\n\n${USAGE}`);
  }
  const market = await connectFromOptions(values, true);
  const signer = market.signer;
  if (signer === undefined) throw new ConfigError("signer", `no signing key\n\n${SIGNER_HELP}`);
  const account = await signer.getAddress();
  const token = await tokenInfo(market);
  const show = (units: bigint): string => formatTokenAmount(units, token);

  let amount: bigint;
  const free = await market.settlement.withdrawable(account);
  if (values.all) {
    amount = free;
  } else {
    const text = positionals[0] ?? "";
    amount = parseTokenAmount(text, token);
    if (amount <= 0n) throw new ConfigError("amount", `${text} is not positive`);
    if (amount > free) throw new WithdrawalTooLargeError(show(amount), show(free));
  }
  if (amount === 0n) {
    console.log(`${account}: nothing is free to withdraw (deposit ${show((await market.settlement.accountState(account)).deposit)})`);
    return;
  }
  const receipt = await (await market.settlement.withdraw(amount)).wait();
  if (receipt === null || receipt.status !== 1) throw new MarketError("WITHDRAWAL_FAILED", `the withdrawal transaction failed (${receipt?.hash ?? "no receipt"})`);
  const [wallet, state] = await Promise.all([market.energyToken.balanceOf(account), market.settlement.accountState(account)]);
  console.log(`${account}: withdrew ${show(amount)} (transaction ${receipt.hash}); wallet ${show(wallet)}, deposit ${show(state.deposit)}`);
}

runCli(main);
