import { buildModule } from "@nomicfoundation/hardhat-ignition/modules";

/**
 * Who takes part in the market. `admin` gets DEFAULT_ADMIN_ROLE and REGULATOR_ROLE; like the
 * token's, it defaults to the deploying account.
 */
export default buildModule("ParticipantRegistryModule", (m) => {
  const admin = m.getParameter("admin", m.getAccount(0));

  const participantRegistry = m.contract("ParticipantRegistry", [admin]);

  return { participantRegistry };
});
