import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import hardhatToolboxMochaEthers from "@nomicfoundation/hardhat-toolbox-mocha-ethers";
import { configVariable, defineConfig } from "hardhat/config";

// The compiler comes from the npm package `solc` (pinned in package.json), so a build
// never downloads anything: these machines and many CI runners cannot reach the solc CDN.
const require = createRequire(import.meta.url);
const SOLC_VERSION = "0.8.30";
const solcPath = require.resolve("solc/soljson.js");
const typesDir = fileURLToPath(new URL("./agents/chain/types", import.meta.url));

export default defineConfig({
  plugins: [hardhatToolboxMochaEthers],
  solidity: {
    profiles: {
      default: {
        version: SOLC_VERSION,
        path: solcPath,
        settings: { optimizer: { enabled: true, runs: 10_000 }, evmVersion: "prague", viaIR: true },
      },
      production: {
        version: SOLC_VERSION,
        path: solcPath,
        settings: { optimizer: { enabled: true, runs: 10_000 }, evmVersion: "prague", viaIR: true },
      },
    },
  },
  networks: {
    hardhatMainnet: { type: "edr-simulated", chainType: "l1" },
    // MARKET_RPC_URL lets tools point "localhost" at a node on another port (agents/chain/localNode.ts
    // starts each node on a free port), so Ignition deploys there through its ordinary CLI.
    localhost: { type: "http", chainType: "l1", url: process.env.MARKET_RPC_URL ?? "http://127.0.0.1:8545" },
    sepolia: {
      type: "http",
      chainType: "l1",
      url: configVariable("SEPOLIA_RPC_URL"),
      accounts: [configVariable("SEPOLIA_PRIVATE_KEY")],
    },
  },
  // Generated contract types live with the agents and are committed, so that a meter agent on a
  // Raspberry Pi runs from a plain clone without Hardhat installed.
  typechain: { outDir: typesDir },
  test: { mocha: { timeout: 120_000 } },
});
