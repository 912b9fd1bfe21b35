import { buildModule } from "@nomicfoundation/hardhat-ignition/modules";
import DayAheadMarketModule from "./DayAheadMarket.js";
import EnergyTokenModule from "./EnergyToken.js";
import ParticipantRegistryModule from "./ParticipantRegistry.js";
import SettlementModule from "./Settlement.js";

/**
 * The intra-day balancing market. The window of a slot opens `openLeadSeconds` before the start
 * of its hour (1 h) and closes `gateLeadSeconds` before the slot (15 min). Offer prices must lie
 * within [priceFloor, priceCap] (the feed-in and retail prices). Its activations join the
 * day-ahead market's schedules (BALANCING_ROLE there), which settlement reads with every reading.
 */
export default buildModule("IntradayMarketModule", (m) => {
  const { energyToken } = m.useModule(EnergyTokenModule);
  const { participantRegistry } = m.useModule(ParticipantRegistryModule);
  const { settlement } = m.useModule(SettlementModule);
  const { dayAheadMarket } = m.useModule(DayAheadMarketModule);
  const admin = m.getParameter("admin", m.getAccount(0));
  const slotSeconds = m.getParameter("slotSeconds", 900n);
  const openLeadSeconds = m.getParameter("openLeadSeconds", 3_600n);
  const gateLeadSeconds = m.getParameter("gateLeadSeconds", 900n);
  const priceFloor = m.getParameter("priceFloor", 80_000n);
  const priceCap = m.getParameter("priceCap", 320_000n);

  const intradayMarket = m.contract("IntradayMarket", [
    energyToken,
    participantRegistry,
    dayAheadMarket,
    settlement,
    admin,
    slotSeconds,
    openLeadSeconds,
    gateLeadSeconds,
    priceFloor,
    priceCap,
  ]);
  const balancingRole = m.staticCall(dayAheadMarket, "BALANCING_ROLE", []);
  m.call(dayAheadMarket, "grantRole", [balancingRole, intradayMarket]);
  m.call(settlement, "setMarkets", [dayAheadMarket, intradayMarket]);

  return { intradayMarket };
});
