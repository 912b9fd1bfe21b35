import { buildModule } from "@nomicfoundation/hardhat-ignition/modules";
import EnergyTokenModule from "./EnergyToken.js";
import ParticipantRegistryModule from "./ParticipantRegistry.js";
import SettlementModule from "./Settlement.js";

/**
 * The day-ahead auction. Orders for day D close `gateLeadSeconds` before D starts (12 h:
 * 12:00 UTC on D-1). Order limits must lie within [priceFloor, priceCap], which should be the
 * settlement's feed-in and retail prices (base units per kWh). Settlement takes its schedules
 * from this market, and lets it pay the cost of scheduled energy into slots' pools.
 */
export default buildModule("DayAheadMarketModule", (m) => {
  const { energyToken } = m.useModule(EnergyTokenModule);
  const { participantRegistry } = m.useModule(ParticipantRegistryModule);
  const { settlement } = m.useModule(SettlementModule);
  const admin = m.getParameter("admin", m.getAccount(0));
  const slotSeconds = m.getParameter("slotSeconds", 900n);
  const gateLeadSeconds = m.getParameter("gateLeadSeconds", 43_200n);
  const priceFloor = m.getParameter("priceFloor", 80_000n);
  const priceCap = m.getParameter("priceCap", 320_000n);

  const dayAheadMarket = m.contract("DayAheadMarket", [
    energyToken,
    participantRegistry,
    settlement,
    admin,
    slotSeconds,
    gateLeadSeconds,
    priceFloor,
    priceCap,
  ]);
  m.call(settlement, "setScheduleSource", [dayAheadMarket]);

  return { dayAheadMarket };
});
