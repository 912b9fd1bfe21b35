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
import { abs, imbalanceAfter, imbalanceBefore, imbalanceWithoutFlexibility } from "../simulator/dayFigures.js";
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
      onDayAhead: (results) => {
        const volume = results.reduce((a, r) => a + r.volumeWh, 0n);
        const traded = results.filter((r) => r.volumeWh > 0n);
        const prices = traded.map((r) => Number(formatUnits(r.price, 6)));
        process.stdout.write(
          `\nDay-ahead auction: ${results.length} slots cleared, ${traded.length} with trade, ${kwh(volume)} scheduled` +
            (prices.length ? `, prices ${Math.min(...prices).toFixed(4)}–${Math.max(...prices).toFixed(4)} per kWh` : "") +
            "\n",
        );
      },
    },
    async (run) => {
      const result = await run();
      const { reports, households, settlement, market, automaticNetWh } = result;

      const sum = (f: (r: SlotReport) => bigint): bigint => reports.reduce((a, r) => a + f(r), 0n);
      const demand = sum((r) => r.demandWh);
      const local = sum((r) => r.localWh);
      const metered = sum((r) => r.bills.reduce((a, b) => a + (b.netWh > 0n ? b.netWh : 0n), 0n));
      process.stdout.write(`\nDay summary (${reports.length} slots, ${((Date.now() - started) / 1000).toFixed(0)} s)\n`);
      process.stdout.write(
        formatTable(
          ["figure", "value"],
          [
            ["households' metered net import", kwh(metered)],
            ["scheduled day-ahead (traded locally)", kwh(sum((r) => r.dayAheadVolumeWh))],
            ["deviations from schedules", kwh(sum((r) => r.bills.reduce((a, b) => a + abs(b.deviationWh), 0n)))],
            ["real-time demand (upward deviations)", kwh(demand)],
            ["real-time supply (downward deviations)", kwh(sum((r) => r.supplyWh))],
            ["real-time traded locally", `${kwh(local)} (${demand === 0n ? 0 : Number((local * 1000n) / demand) / 10}% of real-time demand)`],
            ["imbalance before balancing (sum over slots of |metered - day-ahead|, activated flexibility undone)", kwh(imbalanceBefore(reports))],
            ["imbalance after balancing (sum over slots of |metered - day-ahead|: left to the slack unit)", kwh(imbalanceAfter(reports))],
            ["imbalance with no flexibility activated (the day simulated again, devices automatic)", kwh(imbalanceWithoutFlexibility(automaticNetWh))],
            ["flexibility activated", kwh(sum((r) => abs(r.activatedWh)))],
            ["supplied by the slack unit", kwh(sum((r) => r.slackSuppliedWh))],
            ["absorbed by the slack unit", kwh(sum((r) => r.slackAbsorbedWh))],
            ["slack unit's net takings", tokens(sum((r) => r.slackAmount))],
            ["real-time bills paid (sum)", tokens(sum((r) => r.bills.reduce((a, b) => a + (b.amount > 0n ? b.amount : 0n), 0n)))],
          ],
          new Set([1]),
        ) + "\n",
      );

      process.stdout.write("\nFinal balances\n");
      const rows: string[][] = [];
      for (const h of households) {
        const [wallet, state] = await Promise.all([market.energyToken.balanceOf(h.account), settlement.accountState(h.account)]);
        let earned = 0n; // scheduled sales, paid at the markets' prices
        let realTimeNet = 0n; // deviations: + paid, - received
        for (const r of reports) {
          for (const b of r.bills.filter((x) => x.account === h.account)) {
            earned += b.earned;
            realTimeNet += b.amount;
          }
        }
        rows.push([h.member.name, h.member.kind, h.account.slice(0, 10) + "…", tokens(earned), tokens(realTimeNet), tokens(wallet), tokens(state.deposit), state.debt > 0n ? tokens(state.debt) : "-"]);
      }
      process.stdout.write("(scheduled sales: earned at the markets' prices; deviations: net paid, negative when received; buyers paid their schedules at clearing)\n");
      process.stdout.write(formatTable(["household", "kind", "account", "sales", "deviations", "wallet", "deposit", "debt"], rows, new Set([3, 4, 5, 6, 7])) + "\n");
      process.stdout.write(`\nAgents' logs: ${values.log}\n`);
    },
  );
  logFile.end();
});

const COLUMNS: Array<[string, number]> = [
  ["slot (UTC)", 11],
  ["DA price", 8],
  ["DA kWh", 7],
  ["metered", 7],
  ["expected", 8],
  ["flex", 6],
  ["deviation", 9],
  ["RT price", 8],
  ["local", 6],
  ["slack+", 6],
  ["slack-", 6],
  ["bills", 7],
];
let headerPrinted = false;

/** One line per settled slot: day-ahead result, what was metered, how far it deviated, real time. */
function printSlot(r: SlotReport): void {
  if (!headerPrinted) {
    headerPrinted = true;
    process.stdout.write(`\n${COLUMNS.map(([h, w], i) => (i === 0 ? h.padEnd(w) : h.padStart(w))).join(" ")}\n`);
    process.stdout.write(
      "(energy in kWh, prices in tokens per kWh; metered = households' net import; expected = imbalance forecast an hour ahead;\n flex = flexibility activated, + up / - down; deviation = sum of |metered - scheduled|)\n",
    );
  }
  const start = new Date(r.slot * 900 * 1000).toISOString().slice(5, 16).replace("T", " ");
  const metered = r.bills.reduce((a, b) => a + (b.netWh > 0n ? b.netWh : 0n), 0n);
  const deviation = r.bills.reduce((a, b) => a + abs(b.deviationWh), 0n);
  const bills = r.bills.reduce((a, b) => a + abs(b.amount), 0n);
  const cells = [
    start,
    r.dayAheadVolumeWh > 0n ? price(r.dayAheadPrice) : "-",
    num(r.dayAheadVolumeWh),
    num(metered),
    num(r.expectedImbalanceWh),
    num(r.activatedWh),
    num(deviation),
    price(r.price),
    num(r.localWh),
    num(r.slackSuppliedWh),
    num(r.slackAbsorbedWh),
    Number(formatUnits(bills, 6)).toFixed(3),
  ];
  process.stdout.write(`${cells.map((c, i) => (i === 0 ? c.padEnd(COLUMNS[i]![1]) : c.padStart(COLUMNS[i]![1]))).join(" ")}${r.closed ? "" : "  (open)"}\n`);
}

function num(wh: bigint): string {
  return (Number(wh) / 1000).toFixed(2);
}

function price(units: bigint): string {
  return Number(formatUnits(units, 6)).toFixed(4);
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
