/**
 * The master agent as a long-running process, one per market, run by the regulator:
 *
 *   MARKET_PRIVATE_KEY=0x... npx tsx agents/master/main.ts --rpc URL --deployment DIR \
 *     [--listen 0.0.0.0:8710] [--state master-state.json] [--collect-ms 60000]
 *
 * (or MARKET_KEYSTORE_FILE + MARKET_KEYSTORE_PASSWORD). It needs MASTER_ROLE on Settlement
 * and some ether for gas; it never needs the power to move tokens.
 */
import { parseArgs } from "node:util";
import { systemClock } from "../clock.js";
import { marketAddressesFromDeployment } from "../chain/deployment.js";
import { openProvider } from "../chain/market.js";
import { walletFromEnv } from "../chain/signer.js";
import { ParticipantRegistry__factory, Settlement__factory } from "../chain/types/index.js";
import { ConfigError, MarketError } from "../errors.js";
import { jsonLineLogger } from "../log.js";
import { JsonStore } from "../meter-agent/store.js";
import { MasterAgent, type MasterState } from "./masterAgent.js";
import { ReadingInbox } from "./readingInbox.js";
import { scheduleMaster } from "./schedule.js";

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rpc: { type: "string", default: process.env.MARKET_RPC_URL ?? "http://127.0.0.1:8545" },
      deployment: { type: "string" },
      listen: { type: "string", default: "127.0.0.1:8710" },
      state: { type: "string", default: "master-state.json" },
      "collect-ms": { type: "string", default: "60000" },
    },
  });
  if (values.deployment === undefined) throw new ConfigError("--deployment", "give the Ignition deployment folder, e.g. ignition/deployments/chain-11155111");
  const { settlement: settlementAddress, participantRegistry: registryAddress } = marketAddressesFromDeployment(values.deployment);
  const [host, port] = values.listen.split(":");
  const collectMs = Number(values["collect-ms"]);
  if (!Number.isFinite(collectMs) || collectMs <= 0) throw new ConfigError("--collect-ms", "must be a positive number of milliseconds");

  const logger = jsonLineLogger(undefined, { agent: "master" });
  const provider = await openProvider(values.rpc, { pollingIntervalMs: 1_000 });
  const wallet = (await walletFromEnv()).connect(provider);
  const settlement = Settlement__factory.connect(settlementAddress, wallet);
  const inbox = new ReadingInbox(logger);
  const url = await inbox.listen(host, Number(port));
  const master = new MasterAgent({
    settlement,
    registry: ParticipantRegistry__factory.connect(registryAddress, provider),
    inbox,
    store: new JsonStore<MasterState>(values.state),
    clock: systemClock,
    logger,
    collectTimeoutMs: collectMs,
  });
  await master.init();
  logger({ level: "info", msg: "inbox listening", url });
  await master.catchUp();
  const job = scheduleMaster(master, Number(await settlement.slotSeconds()), logger);
  const stop = async (signal: string): Promise<void> => {
    logger({ level: "info", msg: "stopping", signal });
    job.cancel();
    await inbox.close();
    provider.destroy();
    process.exit(0);
  };
  process.once("SIGINT", (s) => void stop(s));
  process.once("SIGTERM", (s) => void stop(s));
}

main().catch((e: unknown) => {
  const message = e instanceof MarketError ? `${e.name}: ${e.message}` : ((e as Error).stack ?? String(e));
  process.stderr.write(`master agent: ${message}\n`);
  process.exit(1);
});
