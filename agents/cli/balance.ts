/**
 * npm run balance -- <address>... | --all [--rpc URL] [--deployment DIR | --token ADDR --registry ADDR]
 *
 * Prints token balances with the token's symbol and decimals, and each account's registry
 * record; --all lists every registered participant.
 */
import { isAddress } from "ethers";
import { ConfigError } from "../errors.js";
import { balanceRows, registeredAccounts } from "../chain/balances.js";
import { MARKET_OPTIONS, MARKET_OPTIONS_HELP, connectFromOptions, formatTable, parseCli, runCli } from "./common.js";

const USAGE = `usage: npm run balance -- <address>... | --all [options]

options:
  --all               every registered participant
${MARKET_OPTIONS_HELP}`;

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
  if (values.all === (positionals.length > 0)) {
    throw new ConfigError("arguments", `give either addresses or --all\n\n${USAGE}`);
  }
  for (const a of positionals) if (!isAddress(a)) throw new ConfigError("address", `"${a}" is not an address`);

  const market = await connectFromOptions(values, false);
  const accounts = values.all
    ? await registeredAccounts(market, (done, total) => process.stderr.write(`reading participants: ${done}/${total}\n`))
    : positionals;
  const { columns, rows } = await balanceRows(market, accounts);
  const headers = ["index", "account", "kind", "status", "balance", ...columns.map((c) => c.header)];
  const cells = rows.map((r) => [r.index === undefined ? "-" : String(r.index), r.account, r.kind ?? "-", r.status, r.formatted, ...r.extra]);
  const right = new Set([0, 4, ...columns.map((_, i) => 5 + i)]);
  console.log(formatTable(headers, cells, right));
  if (values.all) console.log(`${rows.length} participants`);
}

runCli(main);
