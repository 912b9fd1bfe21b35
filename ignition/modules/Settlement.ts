import { buildModule } from "@nomicfoundation/hardhat-ignition/modules";
import EnergyTokenModule from "./EnergyToken.js";
import ParticipantRegistryModule from "./ParticipantRegistry.js";

/**
 * Metering and settlement: signed meter readings, billing deposits in escrow and the
 * 15-minute settlement. Prices are token base units (6 decimals) per kWh: the defaults are
 * 0.08 tokens/kWh feed-in and 0.32 tokens/kWh retail. `admin` gets DEFAULT_ADMIN_ROLE,
 * REGULATOR_ROLE and MASTER_ROLE; grant MASTER_ROLE to a separate master key afterwards if
 * the master agent should not hold the admin key.
 */
export default buildModule("SettlementModule", (m) => {
  const { energyToken } = m.useModule(EnergyTokenModule);
  const { participantRegistry } = m.useModule(ParticipantRegistryModule);
  const admin = m.getParameter("admin", m.getAccount(0));
  const slotSeconds = m.getParameter("slotSeconds", 900n);
  const readingWindow = m.getParameter("readingWindow", 300n);
  const feedInPrice = m.getParameter("feedInPrice", 80_000n);
  const retailPrice = m.getParameter("retailPrice", 320_000n);

  const settlement = m.contract("Settlement", [
    energyToken,
    participantRegistry,
    admin,
    slotSeconds,
    readingWindow,
    feedInPrice,
    retailPrice,
  ]);

  return { settlement };
});
