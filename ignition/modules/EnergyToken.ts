import { buildModule } from "@nomicfoundation/hardhat-ignition/modules";

/**
 * The market's ERC-20 currency. `admin` gets DEFAULT_ADMIN_ROLE and MINTER_ROLE; it defaults to
 * the deploying account so that a local or test deployment needs no parameters, while a real
 * deployment can hand the roles to the regulator's account straight away.
 */
export default buildModule("EnergyTokenModule", (m) => {
  const name = m.getParameter<string>("name", "Energy Token");
  const symbol = m.getParameter<string>("symbol", "kWhT");
  const admin = m.getParameter("admin", m.getAccount(0));

  const energyToken = m.contract("EnergyToken", [name, symbol, admin]);

  return { energyToken };
});
