/**
 * The meter agent as a long-running process, e.g. a systemd service on the household's Pi:
 *
 *   METER_AGENT_PRIVATE_KEY=0x... npx tsx agents/meter-agent/main.ts --config meter-agent.json
 *
 * or with METER_AGENT_KEYSTORE_FILE + METER_AGENT_KEYSTORE_PASSWORD. It reads the meter and
 * submits readings, places the household's day-ahead orders, sends its hour-ahead forecasts,
 * offers its assets' flexibility and drives them when activated, all on one poll loop (see
 * MeterAgent.tick). Stops cleanly on SIGINT and SIGTERM: it finishes the step it is in and
 * returns the devices to automatic. Its state file and the chain make a restart lose nothing
 * and send nothing twice.
 */
import { parseArgs } from "node:util";
import { ZeroAddress, type Wallet } from "ethers";
import { systemClock } from "../clock.js";
import { marketAddressesFromDeployment } from "../chain/deployment.js";
import { openProvider } from "../chain/market.js";
import { walletFromEnv } from "../chain/signer.js";
import { DayAheadMarket__factory, EnergyToken__factory, IntradayMarket__factory, ParticipantRegistry__factory, Settlement__factory, type Settlement } from "../chain/types/index.js";
import { ConfigError, MarketError } from "../errors.js";
import { jsonLineLogger, type Logger } from "../log.js";
import { ModbusMeter } from "../meters/modbusMeter.js";
import { loadMeterAgentConfig, type MeterAgentConfig } from "./config.js";
import { DayAheadTrader } from "./dayAheadTrader.js";
import { FlexibilityController, ModbusDeviceIo } from "./flexibility.js";
import { IntradayTrader } from "./intradayTrader.js";
import { MeterAgent, shortError, type MeterAgentState } from "./meterAgent.js";
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

  const deployed = config.deploymentDir === undefined ? undefined : marketAddressesFromDeployment(config.deploymentDir);
  const settlementAddress = config.settlement ?? deployed!.settlement;
  const key = (await walletFromEnv({ names: METER_AGENT_SIGNER_ENV })) as Wallet;
  const provider = await openProvider(config.rpcUrl, { pollingIntervalMs: 1_000 });
  const meterKey = key.connect(provider) as Wallet;
  const settlement = Settlement__factory.connect(settlementAddress, meterKey);
  const markets = await marketsOf(config, deployed, settlement);

  // The meter key acts for the account in both markets; escrow comes from the account's wallet.
  const dayAheadMarket = markets.dayAhead === undefined ? undefined : DayAheadMarket__factory.connect(markets.dayAhead, meterKey);
  const intradayMarket = markets.intraday === undefined ? undefined : IntradayMarket__factory.connect(markets.intraday, meterKey);
  const slotSeconds = Number(await settlement.slotSeconds());
  for (const market of [dayAheadMarket, intradayMarket]) {
    const seconds = market === undefined ? slotSeconds : Number(await market.slotSeconds());
    if (seconds !== slotSeconds) {
      throw new MarketError("DEPLOYMENT_MISMATCH", `the market at ${await market!.getAddress()} has ${seconds}-second slots, the Settlement ${slotSeconds}: are the addresses from one deployment?`);
    }
  }

  const meter = new ModbusMeter({ connection: config.meter.connection, map: config.meter.map, logger: (r) => logger(r) });
  const link = config.assetsLink;
  const devices = link?.connection === undefined ? meter : new ModbusMeter({ connection: link.connection, map: config.meter.map, logger: (r) => logger({ ...r, link: "assets" }) });
  const flexibility =
    config.assets === undefined
      ? undefined
      : new FlexibilityController({ assets: config.assets, io: new ModbusDeviceIo(meter, devices, link?.unitId), slotSeconds, clock: systemClock, logger });
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
    dayAhead:
      dayAheadMarket === undefined || config.dayAhead === undefined
        ? undefined
        : new DayAheadTrader({ account: config.account, market: dayAheadMarket, strategy: config.dayAhead.strategy, tradeLeadMs: config.dayAhead.tradeLeadMs, logger }),
    intraday:
      intradayMarket === undefined || config.intraday === undefined
        ? undefined
        : new IntradayTrader({ account: config.account, market: intradayMarket, flexibility, pricing: config.intraday.pricing, logger }),
  });
  await agent.init();
  await checkStanding(config, settlement, markets, meterKey.address, logger);
  logger({
    level: "info",
    msg: "trading",
    dayAhead: dayAheadMarket === undefined ? false : markets.dayAhead,
    intraday: intradayMarket === undefined ? false : markets.intraday,
    assets: config.assets?.devices.map((d) => d.kind) ?? [],
  });

  // One step at a time, the next one a poll interval after the last one started (or at once
  // if it took longer), so that a slow transaction never piles steps up.
  let stopping = false;
  let wake: (() => void) | undefined;
  const loop = (async () => {
    while (!stopping) {
      const started = Date.now();
      await agent.tick().catch((e: unknown) => logger({ level: "error", msg: "step failed; will retry", error: shortError(e) }));
      const waitMs = config.pollIntervalMs - (Date.now() - started);
      if (stopping || waitMs <= 0) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, waitMs);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  })();

  const stop = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    wake?.();
    logger({ level: "info", msg: "stopping", signal });
    await agent.stop(); // the step in flight finishes and is saved, placing no new offers
    await loop;
    if (flexibility !== undefined) {
      // Nobody will hold the set-points to their slot any more.
      try {
        await flexibility.release();
        logger({ level: "info", msg: "devices returned to automatic" });
      } catch (e) {
        logger({ level: "error", msg: "devices could not be returned to automatic; the next start retries", error: shortError(e) });
      }
    }
    await meter.close();
    if (devices !== meter) await devices.close();
    provider.destroy();
    process.exit(0);
  };
  process.once("SIGINT", (s) => void stop(s));
  process.once("SIGTERM", (s) => void stop(s));
}

/**
 * The markets the agent trades in: the configured addresses, else the deployment folder's,
 * else those the Settlement bills against. Undefined for a market turned off in the config.
 */
async function marketsOf(
  config: MeterAgentConfig,
  deployed: { dayAheadMarket: string; intradayMarket: string } | undefined,
  settlement: Settlement,
): Promise<{ dayAhead: string | undefined; intraday: string | undefined }> {
  const pick = async (wanted: boolean, explicit: string | undefined, fromDeployment: string | undefined, fromSettlement: () => Promise<string>, field: string, off: string) => {
    if (!wanted) return undefined;
    const address = explicit ?? fromDeployment ?? (await fromSettlement());
    if (address === ZeroAddress) {
      throw new ConfigError(field, `the Settlement at ${await settlement.getAddress()} names no such market: give its address, or set ${off}`);
    }
    return address;
  };
  return {
    dayAhead: await pick(config.dayAhead !== undefined, config.dayAheadMarket, deployed?.dayAheadMarket, () => settlement.dayAheadMarket(), "dayAheadMarket", '"dayAhead": false'),
    intraday: await pick(config.intraday !== undefined, config.intradayMarket, deployed?.intradayMarket, () => settlement.intradayMarket(), "intradayMarket", '"intraday": false'),
  };
}

/**
 * Warns of what would make every trade fail: a meter key the registry does not hold for the
 * account, or an account that has not let a market take escrow from its wallet (README: "what
 * the household approves, once").
 */
async function checkStanding(
  config: MeterAgentConfig,
  settlement: Settlement,
  markets: { dayAhead: string | undefined; intraday: string | undefined },
  meterKeyAddress: string,
  logger: Logger,
): Promise<void> {
  try {
    const provider = settlement.runner!.provider!;
    const registry = ParticipantRegistry__factory.connect(await settlement.registry(), provider);
    const [registeredKey] = await registry.signerOf(config.account);
    if (registeredKey !== meterKeyAddress) {
      logger({ level: "error", msg: "the registry holds another meter key for this account: readings and trades will be refused", registeredKey, meterKey: meterKeyAddress });
    }
    const token = EnergyToken__factory.connect(await settlement.token(), provider);
    const spenders: Array<[string, string | undefined, boolean]> = [
      ["dayAheadMarket", markets.dayAhead, config.dayAhead !== undefined],
      ["intradayMarket", markets.intraday, config.assets !== undefined],
    ];
    for (const [name, spender, needed] of spenders) {
      if (spender === undefined || !needed) continue;
      const allowance = await token.allowance(config.account, spender);
      if (allowance === 0n) {
        logger({ level: "warn", msg: `the account has not approved the ${name} (${spender}) to take escrow from its wallet: its buy orders and downward offers will fail until it does`, spender });
      }
    }
  } catch (e) {
    logger({ level: "warn", msg: "could not check the account's registration and allowances", error: shortError(e) });
  }
}

main().catch((e: unknown) => {
  const message = e instanceof MarketError ? `${e.name}: ${e.message}` : ((e as Error).stack ?? String(e));
  process.stderr.write(`meter agent: ${message}\n`);
  process.exit(1);
});
