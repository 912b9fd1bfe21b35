import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { ConfigError } from "../../agents/errors.js";
import { DeploymentError, marketAddressesFromDeployment, resolveMarketAddresses } from "../../agents/chain/deployment.js";

const TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const REGISTRY = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512";
const OTHER = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0";
const SETTLEMENT = "0xCf7Ed3AccA5a467e9e704C703E8D87F634fB0Fc9";
const DAY_AHEAD = "0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9";
const INTRADAY = "0x5FC8d32690cc91D4c39d9d3abcBD16989F875707";

describe("deployment addresses", () => {
  let root: string;
  const folder = (name: string, content?: string): string => {
    const dir = join(root, name);
    mkdirSync(dir);
    if (content !== undefined) writeFileSync(join(dir, "deployed_addresses.json"), content);
    return dir;
  };
  before(() => (root = mkdtempSync(join(tmpdir(), "deployment-"))));
  after(() => rmSync(root, { recursive: true, force: true }));

  it("reads Ignition's deployed_addresses.json by future id", () => {
    const dir = folder(
      "ok",
      JSON.stringify({
        "EnergyTokenModule#EnergyToken": TOKEN.toLowerCase(),
        "ParticipantRegistryModule#ParticipantRegistry": REGISTRY,
        "SettlementModule#Settlement": SETTLEMENT,
        "DayAheadMarketModule#DayAheadMarket": DAY_AHEAD,
        "IntradayMarketModule#IntradayMarket": INTRADAY,
      }),
    );
    expect(marketAddressesFromDeployment(dir)).to.deep.equal({ energyToken: TOKEN, participantRegistry: REGISTRY, settlement: SETTLEMENT, dayAheadMarket: DAY_AHEAD, intradayMarket: INTRADAY });
    expect(resolveMarketAddresses({ deploymentDir: dir, energyToken: OTHER })).to.deep.equal({
      energyToken: OTHER,
      participantRegistry: REGISTRY,
      settlement: SETTLEMENT,
      dayAheadMarket: DAY_AHEAD,
      intradayMarket: INTRADAY,
    });
  });

  it("explains a missing folder, bad JSON and a missing contract", () => {
    expect(() => marketAddressesFromDeployment(join(root, "none"))).to.throw(DeploymentError, /no deployed_addresses.json: deploy first/);
    expect(() => marketAddressesFromDeployment(folder("bad", "{"))).to.throw(DeploymentError, /not valid JSON/);
    const partial = folder("partial", JSON.stringify({ "EnergyTokenModule#EnergyToken": TOKEN }));
    expect(() => marketAddressesFromDeployment(partial)).to.throw(DeploymentError, /has no "ParticipantRegistryModule#ParticipantRegistry"/);
  });

  it("takes explicit addresses, naming the option when one is missing or wrong", () => {
    const all = { energyToken: TOKEN, participantRegistry: REGISTRY, settlement: SETTLEMENT, dayAheadMarket: DAY_AHEAD, intradayMarket: INTRADAY };
    expect(resolveMarketAddresses(all)).to.deep.equal(all);
    const names = { deploymentDir: "--deployment", energyToken: "--token", participantRegistry: "--registry", settlement: "--settlement", dayAheadMarket: "--day-ahead", intradayMarket: "--intraday" };
    expect(() => resolveMarketAddresses({ energyToken: TOKEN, names })).to.throw(ConfigError, "--deployment: not given, so --registry, --settlement, --day-ahead and --intraday must be given");
    expect(() => resolveMarketAddresses({ ...all, energyToken: TOKEN.replace("aa3", "AA3"), names })).to.throw(
      ConfigError,
      /--token: .* checksum does not match/,
    );
  });
});
