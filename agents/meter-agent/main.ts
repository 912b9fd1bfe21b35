/**
 * The meter agent as a long-running process, e.g. a systemd service on the household's Pi:
 *
 *   METER_AGENT_PRIVATE_KEY=0x... npx tsx agents/meter-agent/main.ts --config meter-agent.json
 *
 * or with METER_AGENT_KEYSTORE_FILE + METER_AGENT_KEYSTORE_PASSWORD. Stops cleanly on SIGINT
 * and SIGTERM, finishing the step it is in; its state file makes a restart lose nothing.
 */
import { parseArgs } from "node:util";
import type { Wallet } from "ethers";
import { systemClock } from "../clock.js";
import { marketAddressesFromDeployment } from "../chain/deployment.js";
import { openProvider } from "../chain/market.js";
import { walletFromEnv } from "../chain/signer.js";
import { Settlement__factory } from "../chain/types/index.js";
import { ConfigError, MarketError } from "../errors.js";
import { jsonLineLogger } from "../log.js";
import { ModbusMeter } from "../meters/modbusMeter.js";
import { loadMeterAgentConfig } from "./config.js";
import { MeterAgent, type MeterAgentState } from "./meterAgent.js";
import { JsonStore } from "./store.js";

export const METER_AGENT_SIGNER_ENV = {
  privateKey: "METER_AGENT_PRIVATE_KEY",
  keystoreFile: "METER_AGENT_KEYSTORE_FILE",
  keystorePassword: "METER_AGENT_KEYSTORE_PASSWORD",
};

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { config: { type: "string" } } });
  const configFile = values.config ?? process.env.METER_AGENT_CONFIG;
  if (configFile === undefined) throw new ConfigError("--config", "give the config file (or set METER_AGENT_CONFIG)");
  const config = loadMeterAgentConfig(configFile);
  const logger = jsonLineLogger(undefined, { agent: "meter", account: config.account });

  const settlementAddress = config.settlement ?? marketAddressesFromDeployment(config.deploymentDir!).settlement;
  const key = (await walletFromEnv({ names: METER_AGENT_SIGNER_ENV })) as Wallet;
  const provider = await openProvider(config.rpcUrl, { pollingIntervalMs: 1_000 });
  const meterKey = key.connect(provider) as Wallet;
  const settlement = Settlement__factory.connect(settlementAddress, meterKey);
  const meter = new ModbusMeter({ connection: config.meter.connection, map: config.meter.map, logger: (r) => logger(r) });
  const agent = new MeterAgent({
    account: config.account,
    meterKey,
    settlement,
    meter,
    store: new JsonStore<MeterAgentState>(config.stateFile),
    clock: systemClock,
    logger,
    masterUrl: config.masterUrl,
    selfSubmitAfterMs: config.selfSubmitAfterMs,
    captureLagMs: config.captureLagMs,
  });
  await agent.init();

  const timer = setInterval(() => void agent.tick(), config.pollIntervalMs);
  const stop = async (signal: string): Promise<void> => {
    clearInterval(timer);
    logger({ level: "info", msg: "stopping", signal });
    await agent.tick().catch(() => {}); // let the step in flight finish and be saved
    await meter.close();
    provider.destroy();
    process.exit(0);
  };
  process.once("SIGINT", (s) => void stop(s));
  process.once("SIGTERM", (s) => void stop(s));
  await agent.tick();
}

main().catch((e: unknown) => {
  const message = e instanceof MarketError ? `${e.name}: ${e.message}` : ((e as Error).stack ?? String(e));
  process.stderr.write(`meter agent: ${message}\n`);
  process.exit(1);
});
