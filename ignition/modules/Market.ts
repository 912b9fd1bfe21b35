import { buildModule } from "@nomicfoundation/hardhat-ignition/modules";
import EnergyTokenModule from "./EnergyToken.js";
import ParticipantRegistryModule from "./ParticipantRegistry.js";
import SettlementModule from "./Settlement.js";
import DayAheadMarketModule from "./DayAheadMarket.js";
import IntradayMarketModule from "./IntradayMarket.js";

/**
 * The whole market: deploy this one. Each concern has its own module (and so its own
 * parameters and future ids such as "EnergyTokenModule#EnergyToken", which the agents read
 * from deployed_addresses.json); this module only puts them together.
 *
 * To add a part (metering, settlement, markets): write its module, `m.useModule` it here,
 * passing it the contracts it needs as module parameters or through its own `useModule`, and
 * spread its results into the returned object, so that every contract of the market is
 * returned from here.
 */
export default buildModule("MarketModule", (m) => {
  const { energyToken } = m.useModule(EnergyTokenModule);
  const { participantRegistry } = m.useModule(ParticipantRegistryModule);
  const { settlement } = m.useModule(SettlementModule);
  const { dayAheadMarket } = m.useModule(DayAheadMarketModule);
  const { intradayMarket } = m.useModule(IntradayMarketModule);

  return { energyToken, participantRegistry, settlement, dayAheadMarket, intradayMarket };
});
