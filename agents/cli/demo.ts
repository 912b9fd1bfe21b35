/**
 * The main job: the market running for a simulated day on a local chain.
 *
 *   npm run demo [-- --slots 96] [--seed 1] [--day 2027-06-21] [--log .demo/agents.log]
 *
 * Starts a hardhat node, deploys with Ignition, registers and funds the neighbourhood, runs
 * one simulated Modbus meter and one meter agent per household plus the master, and prints
 * each settled slot, then a summary and the final balances. Everything stops at the end.
 */
import { createWriteStream, mkdirSync } from "node:fs";
import path from "node:path";
import { formatUnits } from "ethers";
import { jsonLineLogger } from "../log.js";
import type { SlotReport } from "../master/masterAgent.js";
import { withSimulatedMarket } from "../simulator/marketRun.js";
import { formatTable, parseCli, runCli } from "./common.js";

const USAGE = `usage: npm run demo [-- --slots N] [--seed N] [--day YYYY-MM-DD] [--log FILE]`;

runCli(async () => {
  const { values } = parseCli(
    { options: { slots: { type: "string", default: "96" }, seed: { type: "string", default: "1" }, day: { type: "string" }, log: { type: "string", default: path.join(".demo", "agents.log") } } },
    USAGE,
  );
  const slots = positiveInt(values.slots, "--slots");
  const seed = positiveInt(values.seed, "--seed");
  const day = values.day === undefined ? undefined : new Date(`${values.day}T00:00:00Z`);
  if (day !== undefined && Number.isNaN(day.getTime())) throw new Error(`--day: "${values.day}" is not a date like 2027-06-21`);
  mkdirSync(path.dirname(values.log), { recursive: true });
  const logFile = createWriteStream(values.log);
  const started = Date.now();

  await withSimulatedMarket(
    {
      slots,
      seed,
      day,
      logger: jsonLineLogger((line) => logFile.write(line)),
      onProgress: (m) => process.stderr.write(`… ${m}\n`),
      onSlot: printSlot,
    },
    async (run) => {
      process.stdout.write(`\n${"slot (UTC)".padEnd(17)} ${"price/kWh".padStart(9)} ${"demand".padStart(9)} ${"supply".padStart(9)} ${"local".padStart(9)} ${"slack in".padStart(9)} ${"slack out".padStart(9)} ${"payments".padStart(10)}\n`);
      const result = await run();
      const { reports, households, settlement, market } = result;

      const sum = (f: (r: SlotReport) => bigint): bigint => reports.reduce((a, r) => a + f(r), 0n);
      const demand = sum((r) => r.demandWh);
      const local = sum((r) => r.localWh);
      process.stdout.write(`\nDay summary (${reports.length} slots, ${((Date.now() - started) / 1000).toFixed(0)} s)\n`);
      process.stdout.write(
        formatTable(
          ["figure", "value"],
          [
            ["neighbourhood demand", kwh(demand)],
            ["neighbourhood supply", kwh(sum((r) => r.supplyWh))],
            ["traded locally", `${kwh(local)} (${demand === 0n ? 0 : Number((local * 1000n) / demand) / 10}% of demand)`],
            ["supplied by the slack unit", kwh(sum((r) => r.slackSuppliedWh))],
            ["absorbed by the slack unit", kwh(sum((r) => r.slackAbsorbedWh))],
            ["slack unit's net takings", tokens(sum((r) => r.slackAmount))],
            ["bills paid (sum)", tokens(sum((r) => r.bills.reduce((a, b) => a + (b.amount > 0n ? b.amount : 0n), 0n)))],
          ],
          new Set([1]),
        ) + "\n",
      );

      process.stdout.write("\nFinal balances\n");
      const rows: string[][] = [];
      for (const h of households) {
        const [wallet, state] = await Promise.all([market.energyToken.balanceOf(h.account), settlement.accountState(h.account)]);
        const bills = reports.flatMap((r) => r.bills).filter((b) => b.account === h.account);
        const paid = bills.reduce((a, b) => a + (b.amount > 0n ? b.amount : 0n), 0n);
        const received = bills.reduce((a, b) => a + (b.amount < 0n ? -b.amount : 0n), 0n);
        rows.push([h.member.name, h.member.kind, h.account.slice(0, 10) + "…", tokens(paid), tokens(received), tokens(wallet), tokens(state.deposit), state.debt > 0n ? tokens(state.debt) : "-"]);
      }
      process.stdout.write(formatTable(["household", "kind", "account", "paid", "received", "wallet", "deposit", "debt"], rows, new Set([3, 4, 5, 6, 7])) + "\n");
      process.stdout.write(`\nAgents' logs: ${values.log}\n`);
    },
  );
  logFile.end();
});

function printSlot(r: SlotReport): void {
  const start = new Date(r.slot * 900 * 1000).toISOString().slice(0, 16).replace("T", " ");
  const payments = r.bills.reduce((a, b) => a + (b.amount > 0n ? b.amount : -b.amount), 0n);
  process.stdout.write(
    `${start.padEnd(17)} ${formatUnits(r.price, 6).padStart(9)} ${kwh(r.demandWh).padStart(9)} ${kwh(r.supplyWh).padStart(9)} ${kwh(r.localWh).padStart(9)} ${kwh(r.slackSuppliedWh).padStart(9)} ${kwh(r.slackAbsorbedWh).padStart(9)} ${tokens(payments).padStart(10)}${r.closed ? "" : "  (open)"}\n`,
  );
}

function kwh(wh: bigint): string {
  return `${(Number(wh) / 1000).toFixed(3)} kWh`;
}

function tokens(units: bigint): string {
  return Number(formatUnits(units, 6)).toFixed(4);
}

function positiveInt(value: string, option: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${option}: expected a positive whole number, got "${value}"`);
  return n;
}
