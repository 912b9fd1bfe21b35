/**
 * npm run bench [-- --json FILE] [--only NAME[,NAME...]]
 *
 * Runs every benchmark section (agents/cli/bench/sections.ts) on real local hardhat nodes and
 * prints the figures as a table; --json also writes them as one flat JSON object. Progress
 * goes to stderr, so stdout is only the table.
 */
import { writeFileSync } from "node:fs";
import { ConfigError } from "../errors.js";
import { createBenchContext } from "./bench/context.js";
import { SECTIONS } from "./bench/sections.js";
import type { BenchFigures } from "./bench/types.js";
import { formatTable, parseCli, runCli } from "./common.js";

const USAGE = `usage: npm run bench [-- --json FILE] [--only NAME[,NAME...]]

sections: ${SECTIONS.map((s) => s.name).join(", ")}`;

async function main(): Promise<void> {
  const { values } = parseCli(
    { options: { json: { type: "string" }, only: { type: "string" }, help: { type: "boolean", short: "h", default: false } } },
    USAGE,
  );
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const only = values.only?.split(",").map((s) => s.trim());
  for (const name of only ?? []) {
    if (!SECTIONS.some((s) => s.name === name)) throw new ConfigError("--only", `no section "${name}"\n\n${USAGE}`);
  }
  const sections = SECTIONS.filter((s) => only === undefined || only.includes(s.name));

  const log = (m: string): void => void process.stderr.write(`${m}\n`);
  const ctx = createBenchContext(log);
  const figures: BenchFigures = {};
  try {
    for (const section of sections) {
      const started = Date.now();
      log(`[${section.name}]`);
      const got = await section.run(ctx);
      for (const [key, value] of Object.entries(got)) {
        if (key in figures) throw new Error(`benchmark section ${section.name} reports "${key}", which another section reported already`);
        figures[key] = value;
      }
      log(`[${section.name}] done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    }
  } finally {
    await ctx.close();
  }

  const keys = Object.keys(figures);
  console.log(formatTable(["figure", "value"], keys.map((k) => [k, (figures[k] ?? 0).toLocaleString("en-US")]), new Set([1])));
  if (values.json !== undefined) {
    writeFileSync(values.json, `${JSON.stringify(figures, null, 2)}\n`);
    log(`wrote ${keys.length} figures to ${values.json}`);
  }
}

runCli(main);
