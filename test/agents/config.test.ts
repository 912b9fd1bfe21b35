import { readFileSync } from "node:fs";
import path from "node:path";
import { expect } from "chai";
import { PROJECT_ROOT } from "../../agents/chain/localNode.js";
import { ConfigError } from "../../agents/errors.js";
import { parseMeterAgentConfig } from "../../agents/meter-agent/config.js";
import { DEFAULT_STRATEGY } from "../../agents/meter-agent/dayAheadTrader.js";
import { DEFAULT_FLEX_PRICING } from "../../agents/meter-agent/intradayTrader.js";

/** The smallest config a household needs: who, where the chain and the meter are, where to keep state. */
const MINIMAL = {
  account: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
  rpcUrl: "http://127.0.0.1:8545",
  deploymentDir: "ignition/deployments/chain-31337",
  meter: { transport: "rtu", path: "/dev/ttyUSB0", model: "sdm120" },
  stateFile: "/var/lib/market/meter-agent.json",
};
const BATTERY = { kind: "battery", capacityWh: 10_000, maxPowerW: 5_000, minSocPct: 10, maxSocPct: 95 };

function expectConfigError(raw: unknown, field: string): void {
  let error: unknown;
  try {
    parseMeterAgentConfig(raw);
  } catch (e) {
    error = e;
  }
  expect(error, `expected a ConfigError for ${field}`).to.be.instanceOf(ConfigError);
  expect((error as ConfigError).field, (error as Error).message).to.equal(field);
}

describe("meter agent configuration: trading", function () {
  it("trades day-ahead and sends balancing forecasts by default, with the default prices, and offers nothing without assets", function () {
    const c = parseMeterAgentConfig(MINIMAL);
    expect(c.dayAhead).to.deep.equal({ strategy: DEFAULT_STRATEGY, tradeLeadMs: 2 * 3_600_000 });
    expect(c.intraday).to.deep.equal({ pricing: DEFAULT_FLEX_PRICING });
    expect(c.assets).to.equal(undefined);
    expect(c.dayAheadMarket).to.equal(undefined);
    expect(c.intradayMarket).to.equal(undefined);
  });

  it("takes prices, trade lead and market addresses, and turns either market off with false", function () {
    const c = parseMeterAgentConfig({
      ...MINIMAL,
      dayAheadMarket: "0x0000000000000000000000000000000000000003",
      intradayMarket: "0x0000000000000000000000000000000000000004",
      dayAhead: { buyAt: 0.8, sellAt: 0.1, sellShare: 0.5, minOrderWh: 50, tradeLeadMinutes: 30 },
      intraday: { upAt: 0.7, downAt: 0.2 },
    });
    expect(c.dayAhead).to.deep.equal({ strategy: { buyAt: 0.8, sellAt: 0.1, sellShare: 0.5, minOrderWh: 50 }, tradeLeadMs: 30 * 60_000 });
    expect(c.intraday?.pricing).to.deep.equal({ upAt: 0.7, downAt: 0.2 });
    expect([c.dayAheadMarket, c.intradayMarket]).to.deep.equal(["0x0000000000000000000000000000000000000003", "0x0000000000000000000000000000000000000004"]);
    const off = parseMeterAgentConfig({ ...MINIMAL, dayAhead: false, intraday: false });
    expect([off.dayAhead, off.intraday]).to.deep.equal([undefined, undefined]);
  });

  it("finds the assets' registers at the meter's address, under another unit id on its link, or on a link of their own", function () {
    const tcpMeter = { transport: "tcp", host: "192.168.1.10" };
    const same = parseMeterAgentConfig({ ...MINIMAL, meter: tcpMeter, assets: { devices: [BATTERY] } });
    expect(same.assets?.devices[0]?.kind).to.equal("battery");
    expect(same.assetsLink).to.deep.equal({ connection: undefined, unitId: undefined });
    const unit = parseMeterAgentConfig({ ...MINIMAL, assets: { connection: { unitId: 3 }, devices: [BATTERY] } });
    expect(unit.assetsLink).to.deep.equal({ connection: undefined, unitId: 3 });
    const own = parseMeterAgentConfig({ ...MINIMAL, assets: { connection: { transport: "tcp", host: "192.168.1.30", unitId: 2 }, devices: [BATTERY] } });
    expect(own.assetsLink).to.deep.equal({ connection: { kind: "tcp", host: "192.168.1.30", port: 502, unitId: 2 }, unitId: undefined });
  });

  it("accepts the README's example, a house with a battery and an EV charger on a link of their own", function () {
    const readme = readFileSync(path.join(PROJECT_ROOT, "README.md"), "utf8");
    const example = /`meter-agent.json`[^]*?```json\n([^]*?)```/.exec(readme)?.[1];
    expect(example, "README: the meter-agent.json example").to.be.a("string");
    const c = parseMeterAgentConfig(JSON.parse(example!));
    expect(c.assets?.devices.map((d) => d.kind)).to.deep.equal(["battery", "ev"]);
    expect(c.assetsLink?.connection).to.deep.equal({ kind: "tcp", host: "192.168.1.30", port: 502, unitId: 1 });
    expect(c.dayAhead?.strategy).to.deep.equal(DEFAULT_STRATEGY);
    expect(c.intraday?.pricing).to.deep.equal(DEFAULT_FLEX_PRICING);
  });

  it("names the field of every invalid trading setting", function () {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ dayAhead: true }, "dayAhead"],
      [{ dayAhead: { buyAt: 1.5 } }, "dayAhead.buyAt"],
      [{ dayAhead: { sellAt: "0.3" } }, "dayAhead.sellAt"],
      [{ dayAhead: { sellShare: -0.1 } }, "dayAhead.sellShare"],
      [{ dayAhead: { minOrderWh: 0.5 } }, "dayAhead.minOrderWh"],
      [{ dayAhead: { tradeLeadMinutes: 0 } }, "dayAhead.tradeLeadMinutes"],
      [{ dayAhead: { tradeLeadMinutes: 2000 } }, "dayAhead.tradeLeadMinutes"],
      [{ dayAhead: { buyPrice: 0.3 } }, "dayAhead.buyPrice"],
      [{ intraday: [] }, "intraday"],
      [{ intraday: { upAt: 2 } }, "intraday.upAt"],
      [{ intraday: { downAt: null } }, "intraday.downAt"],
      [{ intraday: { offerLead: 1 } }, "intraday.offerLead"],
      [{ dayAheadMarket: "0x1234" }, "dayAheadMarket"],
      [{ intradayMarket: 7 }, "intradayMarket"],
      // Flexibility is offered in the balancing market.
      [{ intraday: false, assets: { devices: [BATTERY] } }, "assets"],
      [{ assets: { connection: { unitId: 300 }, devices: [BATTERY] } }, "assets.connection.unitId"],
      [{ assets: { connection: { unit: 3 }, devices: [BATTERY] } }, "assets.connection.unit"],
      [{ assets: { connection: { transport: "udp", host: "x" }, devices: [BATTERY] } }, "assets.connection.transport"],
      [{ assets: { connection: { transport: "tcp" }, devices: [BATTERY] } }, "assets.connection.host"],
      // The meter's own serial port cannot be opened twice.
      [{ assets: { connection: { transport: "rtu", path: "/dev/ttyUSB0", unitId: 2 }, devices: [BATTERY] } }, "assets.connection.path"],
      [{ assets: { devices: [{ ...BATTERY, capacityWh: 0 }] } }, "assets.devices[0].capacityWh"],
      // The battery's offers need the house's power, which this meter map does not read.
      [
        {
          meter: { transport: "tcp", host: "10.0.0.2", registerMap: { name: "kWh only", registerType: "holding", wordOrder: "big", dataType: "uint32", scaleWh: 1, importAddress: 0, exportAddress: 2 } },
          assets: { devices: [BATTERY] },
        },
        "meter.registerMap.power",
      ],
    ];
    for (const [extra, field] of cases) expectConfigError({ ...MINIMAL, ...extra }, field);
  });
});
