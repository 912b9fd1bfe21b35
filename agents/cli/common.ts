/** What the command-line tools share: market options, connecting, error reporting, tables. */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { parseUnits } from "ethers";
import { ConfigError, MarketError } from "../errors.js";
import type { TokenInfo } from "../chain/balances.js";
import { DEFAULT_LOCAL_DEPLOYMENT_DIR, resolveMarketAddresses } from "../chain/deployment.js";
import { connectMarket, type MarketContracts } from "../chain/market.js";
import { MARKET_SIGNER_ENV, walletFromEnv } from "../chain/signer.js";

/** Options every tool that talks to the market takes. */
export const MARKET_OPTIONS = {
  rpc: { type: "string" },
  deployment: { type: "string" },
  token: { type: "string" },
  registry: { type: "string" },
  settlement: { type: "string" },
  "day-ahead": { type: "string" },
  intraday: { type: "string" },
} as const satisfies ParseArgsConfig["options"];

export const MARKET_OPTIONS_HELP = `  --rpc URL           JSON-RPC endpoint (default $MARKET_RPC_URL or http://127.0.0.1:8545)
  --deployment DIR    Ignition deployment folder (default $MARKET_DEPLOYMENT_DIR or ${DEFAULT_LOCAL_DEPLOYMENT_DIR})
  --token ADDR        EnergyToken address (instead of, or overriding, the deployment folder)
  --registry ADDR     ParticipantRegistry address (likewise)
  --settlement ADDR   Settlement address (likewise)
  --day-ahead ADDR    DayAheadMarket address (likewise)
  --intraday ADDR     IntradayMarket address (likewise)`;

export const SIGNER_HELP = `The signing key comes from the environment, never from a file in the repository:
  ${MARKET_SIGNER_ENV.keystoreFile}=<encrypted JSON keystore> and ${MARKET_SIGNER_ENV.keystorePassword}=<its password>, or
  ${MARKET_SIGNER_ENV.privateKey}=<hex private key> (e.g. a local hardhat node's account 0)`;

export interface MarketOptionValues {
  rpc?: string | undefined;
  deployment?: string | undefined;
  token?: string | undefined;
  registry?: string | undefined;
  settlement?: string | undefined;
  "day-ahead"?: string | undefined;
  intraday?: string | undefined;
}

/** Connects to the market the options name, with the environment's signer if `withSigner`. */
export async function connectFromOptions(values: MarketOptionValues, withSigner: boolean): Promise<MarketContracts> {
  const rpcUrl = values.rpc ?? process.env.MARKET_RPC_URL ?? "http://127.0.0.1:8545";
  const explicit = values.token !== undefined && values.registry !== undefined && values.settlement !== undefined && values["day-ahead"] !== undefined && values.intraday !== undefined;
  const addresses = resolveMarketAddresses({
    // With both addresses given, no deployment folder is needed (nor read).
    deploymentDir: values.deployment ?? (explicit ? undefined : (process.env.MARKET_DEPLOYMENT_DIR ?? DEFAULT_LOCAL_DEPLOYMENT_DIR)),
    energyToken: values.token,
    participantRegistry: values.registry,
    settlement: values.settlement,
    dayAheadMarket: values["day-ahead"],
    intradayMarket: values.intraday,
    names: {
      deploymentDir: "--deployment",
      energyToken: "--token",
      participantRegistry: "--registry",
      settlement: "--settlement",
      dayAheadMarket: "--day-ahead",
      intradayMarket: "--intraday",
    },
  });
  const signer = withSigner ? await walletFromEnv() : undefined;
  // A loopback node mines at once; polling every 4 s (ethers' default) would only add waiting.
  const local = /^https?:\/\/(127\.0\.0\.1|localhost|\[::1\])[:/]/.test(rpcUrl);
  return connectMarket({ rpcUrl, addresses, signer, ...(local ? { pollingIntervalMs: 200 } : {}) });
}

/** `text` (e.g. "12.5") in the token's base units; ConfigError if it is not an amount of the token. */
export function parseTokenAmount(text: string, token: TokenInfo): bigint {
  try {
    return parseUnits(text, token.decimals);
  } catch {
    throw new ConfigError("amount", `"${text}" is not an amount of ${token.symbol} (a number with at most ${token.decimals} decimals)`);
  }
}

/** parseArgs that turns its errors into a ConfigError with the usage text. */
export function parseCli<T extends ParseArgsConfig>(config: T, usage: string): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (e) {
    throw new ConfigError("arguments", `${(e as Error).message}\n\n${usage}`);
  }
}

/**
 * Runs a tool's main: prints a MarketError's message (meant for people) without a stack trace
 * and exits 1; anything else is a bug and keeps its stack.
 */
export function runCli(main: () => Promise<void>): void {
  main().then(
    () => {
      // A provider or a keep-alive socket must not keep a finished tool alive; exit once
      // everything printed has been handed to the OS, so a pipe gets all of it.
      process.stdout.write("", () => process.exit(process.exitCode ?? 0));
    },
    (e: unknown) => {
      if (e instanceof MarketError) {
        process.stderr.write(`error: ${e.message}\n`);
      } else {
        process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      }
      process.stderr.write("", () => process.exit(1));
    },
  );
}

/** A plain-text table; columns listed in `right` are right-aligned (numbers). */
export function formatTable(headers: readonly string[], rows: readonly (readonly string[])[], right: ReadonlySet<number> = new Set()): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (right.has(i) ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd();
  return [line(headers), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}
