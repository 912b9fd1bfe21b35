/**
 * npm run approve -- <amount> [options]
 *
 * Lets the day-ahead and the balancing market take escrow from a participant's wallet, up to
 * <amount> tokens each. A household does this once, with its own key, so that its meter agent
 * can place buy orders and downward flexibility offers for it: the agent's key acts for the
 * account in the markets but never holds its tokens. Escrow uses the allowance up (refunds go
 * back to the wallet, not into the allowance), so run it again with a new amount when it runs low.
 */
import { ConfigError, MarketError } from "../errors.js";
import { formatTokenAmount, tokenInfo } from "../chain/balances.js";
import { MARKET_OPTIONS, MARKET_OPTIONS_HELP, SIGNER_HELP, connectFromOptions, parseCli, parseTokenAmount, runCli } from "./common.js";

const USAGE = `usage: npm run approve -- <amount> [options]

  <amount>            tokens each market may take from the wallet as escrow, e.g. 200
                      (replaces the allowance each market has now; 0 withdraws it)

options:
${MARKET_OPTIONS_HELP}

${SIGNER_HELP}`;

async function main(): Promise<void> {
  const { values, positionals } = parseCli(
    { allowPositionals: true, options: { ...MARKET_OPTIONS, help: { type: "boolean", short: "h", default: false } } },
    USAGE,
  );
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (positionals.length !== 1) throw new ConfigError("arguments", `give one amount\n\n${USAGE}`);
  const market = await connectFromOptions(values, true);
  const signer = market.signer;
  if (signer === undefined) throw new ConfigError("signer", `no signing key\n\n${SIGNER_HELP}`);
  const account = await signer.getAddress();
  const token = await tokenInfo(market);
  const show = (units: bigint): string => formatTokenAmount(units, token);
  const text = positionals[0]!;
  const amount = parseTokenAmount(text, token);
  if (amount < 0n) throw new ConfigError("amount", `${text} is negative`);

  for (const [name, spender] of [
    ["DayAheadMarket", market.addresses.dayAheadMarket],
    ["IntradayMarket", market.addresses.intradayMarket],
  ] as const) {
    const receipt = await (await market.energyToken.approve(spender, amount)).wait();
    if (receipt === null || receipt.status !== 1) throw new MarketError("APPROVAL_FAILED", `the approval of ${name} failed (${receipt?.hash ?? "no receipt"})`);
    console.log(`${account}: ${name} (${spender}) may take ${show(await market.energyToken.allowance(account, spender))} as escrow (transaction ${receipt.hash})`);
  }
  console.log(`${account}: the wallet holds ${show(await market.energyToken.balanceOf(account))}; escrow is taken from it`);
}

runCli(main);
